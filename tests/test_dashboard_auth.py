"""The dashboard without a server: it reads only, and names a broken database without its password.

The served routes (login, 401/403, the page in a browser) are tested against a real
Airflow in tests/test_airflow_server.py; here the page's library and the plugin's
database handling run against real SQLite and PostgreSQL databases and Airflow's real
connection lookup (in a subprocess, with its own AIRFLOW_HOME). The last tests start
a real `airflow standalone` over two published nights and check the charts, the
embedding map and the lookup in headless Chromium, and the new routes' auth.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from recjobs.dashboard import METRICS, NO_SCHEMA, missing_schema, render, sqlite_file_missing
from recjobs.data import write_inbox
from recjobs.db import make_engine
from recjobs.pipeline import engine_for, record_no_candidates, run_pipeline
from recjobs.settings import load_settings
from tests.conftest import AIRFLOW, ROOT, SMALL, _free_port, airflow_process_env, airflow_standalone

SECRET = "s3cret-Pw-41"


def _assert_initdb_page_and_nothing_created(engine: sa.Engine) -> None:
    page = render(engine)
    assert NO_SCHEMA in page and "model_runs" in page and "recommendations" in page
    inspector = sa.inspect(engine)
    assert inspector.get_table_names() == [] and inspector.get_view_names() == []


def test_page_on_an_empty_sqlite_database_asks_for_initdb_and_creates_nothing(tmp_path):
    path = tmp_path / "recs.db"
    assert sqlite_file_missing(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    _assert_initdb_page_and_nothing_created(engine)
    assert not sqlite_file_missing(f"sqlite:///{path}")
    assert not sqlite_file_missing("sqlite://") and not sqlite_file_missing("postgresql://h/db")


def test_page_on_an_empty_postgres_database_asks_for_initdb_and_creates_nothing(postgres_url):
    engine = make_engine(postgres_url)
    try:
        assert missing_schema(engine) == ["model_runs", "ingest_log", "publications", "popular_items", "items",
                                          "recommendations"]
        _assert_initdb_page_and_nothing_created(engine)
    finally:
        engine.dispose()


def test_page_after_initdb_has_no_initdb_hint(settings):
    from recjobs.pipeline import engine_for

    engine = engine_for(settings)  # what `recjobs initdb` does
    assert missing_schema(engine) == []
    page = render(engine)
    assert NO_SCHEMA not in page and "No model published yet." in page


# Runs in a fresh interpreter: the plugin module as the API server imports it, Airflow's own
# connection lookup (environment variables, metadata DB, any configured secrets backend).
PROBE = r"""
import json, os, sys
sys.path.insert(0, os.environ["PLUGINS"])
import recjobs_dashboard as plugin

out = {}
for name, uri in json.loads(os.environ["CASES"]).items():
    if uri is None:
        os.environ.pop("AIRFLOW_CONN_RECJOBS_DB", None)
    else:
        os.environ["AIRFLOW_CONN_RECJOBS_DB"] = uri
    try:
        out[name] = {"page": plugin.DashboardDatabase().page(None), "source": plugin.database_url()[1]}
    except plugin.DashboardDatabaseError as exc:
        out[name] = {"error": str(exc)}
print("RESULT " + json.dumps(out))
"""


def _probe(tmp_path: Path, cases: dict[str, str | None], **extra_env: str) -> dict[str, dict[str, str]]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECJOBS_"))},
           "AIRFLOW_HOME": str(tmp_path / "airflow"), "PLUGINS": str(ROOT / "plugins"),
           "CASES": json.dumps(cases), **extra_env}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert SECRET not in out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_plugin_database_errors_name_recjobs_db_without_the_password(tmp_path):
    missing_db = tmp_path / "none" / "recs.db"
    results = _probe(tmp_path, {
        # Defined, but no SQLAlchemy dialect: an error, not a silent fallback to the settings.
        "unusable": f"http://user:{SECRET}@example.invalid/x",
        # Defined, but nothing listens there.
        "unreachable": f"postgresql://user:{SECRET}@127.0.0.1:{_free_port()}/recs",
        # Not defined: the only case that falls back to RECJOBS_DATABASE_URL.
        "undefined": None,
    }, RECJOBS_DATABASE_URL=f"sqlite:///{missing_db}")
    for case in ("unusable", "unreachable"):
        error = results[case]["error"]
        assert "Airflow connection 'recjobs_db'" in error and "user:***@" in error, error
    assert "127.0.0.1" in results["unreachable"]["error"]
    assert NO_SCHEMA in results["undefined"]["page"] and "RECJOBS_DATABASE_URL" in results["undefined"]["source"]
    assert not missing_db.exists() and not missing_db.parent.exists()  # nothing created by reading


def test_plugin_surfaces_a_secrets_backend_failure_instead_of_falling_back(tmp_path):
    # A secrets backend that denies access: Airflow re-raises that (it is authoritative), and the
    # dashboard must report it rather than quietly read the embedded SQLite database.
    backend = tmp_path / "deny_backend.py"
    backend.write_text(
        "from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied\n"
        "from airflow.secrets import BaseSecretsBackend\n\n\n"
        "class Deny(BaseSecretsBackend):\n"
        "    def get_conn_value(self, conn_id, team_name=None):\n"
        f"        raise AirflowSecretsBackendAccessDenied('denied: ' + {SECRET!r})\n")
    results = _probe(tmp_path, {"denied": None}, PYTHONPATH=str(tmp_path),
                     AIRFLOW__SECRETS__BACKEND="deny_backend.Deny")
    error = results["denied"]["error"]
    assert "recjobs_db" in error and "AirflowSecretsBackendAccessDenied" in error, error


# -- the page in a browser, served by a real `airflow standalone` over two published nights -----------
USERS = "viewer:viewer,nobody:"
PASSWORDS = {"viewer": "viewer-pw-5Jq", "nobody": "nobody-pw-2Lc"}
NEW_ROUTES = ["/recjobs/static/vega-embed.js", "/recjobs/api/embedding", "/recjobs/api/charts"]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCHEDULED_RUN = "scheduled__2026-02-01T00:00:00+00:00"
GATE_COLUMNS = ["run_date", "family", "status", "ndcg_at_k", "compared", "difference", "CI of diff", "p-value",
                "reason", "Airflow run"]


def _screenshot_figures(page, path: Path) -> dict:  # noqa: ANN001
    """Width, height, the share of pixels that are not near-white, and distinct colours (of a sample)
    of the PNG at ``path``, as Chromium decodes it (no image library needed)."""
    import base64

    data = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return page.evaluate("""(src) => new Promise((done) => {
        const img = new Image();
        img.onload = () => {
            const canvas = document.createElement('canvas');
            canvas.width = img.width; canvas.height = img.height;
            const ctx = canvas.getContext('2d'); ctx.drawImage(img, 0, 0);
            const px = ctx.getImageData(0, 0, img.width, img.height).data;
            let ink = 0, n = 0; const colours = new Set();
            for (let i = 0; i < px.length; i += 4 * 7) {
                n++; if (px[i] < 235 || px[i + 1] < 235 || px[i + 2] < 235) ink++;
                colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
            }
            done({width: img.width, height: img.height, ink: ink / n, colours: colours.size});
        };
        img.src = src;
    })""", data)


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _token(port: int, user: str) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/auth/token", method="POST",
                                 data=json.dumps({"username": user, "password": PASSWORDS[user]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["access_token"]


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory):  # noqa: ANN001, ANN201
    """Airflow standalone with our plugin, over a database the real pipeline published twice."""
    if not AIRFLOW.exists():
        pytest.skip(f"airflow is not installed next to {sys.executable}")
    base = tmp_path_factory.mktemp("dashboard_ui")
    port = _free_port()
    home = base / "recjobs"
    (base / "passwords.json").write_text(json.dumps(PASSWORDS))
    env = {
        **airflow_process_env(base / "airflow"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(base / "passwords.json"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "RECJOBS_HOME": str(home),
    }
    settings = load_settings({"home": str(home), "families": ["popularity", "als"], "publish": {"top_n": 10}},
                             environ={})
    write_inbox(settings.inbox, SMALL)
    run_pipeline(settings, "2026-01-20")
    # The second night as Airflow's scheduled run of it would record it (the task's environment):
    # its gate row links to that run's promote log.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("AIRFLOW_CTX_DAG_ID", "recs_nightly"), ("AIRFLOW_CTX_DAG_RUN_ID", SCHEDULED_RUN),
                            ("AIRFLOW_CTX_TASK_ID", "promote")):
            patch.setenv(name, value)
        run_pipeline(settings, "2026-01-31")
    # A failed night between them, as a night without candidates records it: marked on the charts.
    record_no_candidates(engine_for(settings), "2026-01-25", "no candidates for 2026-01-25: no family was trained")
    with airflow_standalone(env, port, base / "standalone.log", timeout=300):
        yield {"port": port, "url": f"http://127.0.0.1:{port}", "settings": settings}


@pytest.mark.slow
def test_new_dashboard_routes_require_login_and_the_view_permission(dashboard_server):
    url, port = dashboard_server["url"], dashboard_server["port"]
    viewer, nobody = _token(port, "viewer"), _token(port, "nobody")
    for route in NEW_ROUTES:
        assert _get(url + route)[0] == 401, route
        assert _get(url + route, nobody)[0] == 403, route
        assert _get(url + route, viewer)[0] == 200, route
    status, body = _get(url + "/recjobs/api/embedding", viewer)
    doc = json.loads(body)
    assert doc["family"] == "als" and doc["n_points"] == SMALL.n_items and doc["message"] is None
    # The nav entry: a short label, and a route that differs from the app's prefix.
    plugins = json.loads(_get(url + "/api/v2/plugins", viewer)[1])["plugins"]
    view = next(v for p in plugins if p["name"] == "recjobs_dashboard" for v in p["external_views"])
    assert view["name"] == "Recs" and view["url_route"] == "recs" and view["href"] == "/recjobs/"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (scripts/setup_system.sh installs it)")
def test_dashboard_charts_and_embedding_map_render_real_data_in_chromium(dashboard_server):
    from playwright.sync_api import sync_playwright

    url = dashboard_server["url"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        outside = []  # every request must stay on the Airflow server: no CDN
        page.on("request", lambda req: outside.append(req.url) if not req.url.startswith(url) else None)
        page.goto(f"{url}/auth/login?next={quote('/recjobs/?user=u7x')}")
        page.fill("input[name='username']", "viewer")
        page.fill("input[name='password']", PASSWORDS["viewer"])
        page.click("button[type='submit']")
        page.wait_for_url("**/recjobs/?user=u7x", wait_until="domcontentloaded", timeout=90_000)
        # An unknown id: said so, with close ids, and the answer on the first screen.
        notice = page.locator("#user-notice")
        assert "Unknown user 'u7x'" in notice.inner_text() and "u7" in page.locator("#user-suggestions").inner_text()
        box = page.locator("#lookup-result").bounding_box()
        assert box is not None and box["y"] < 900
        assert page.locator("#user-recs thead").inner_text().split("\t")[-1].strip() == "users who interacted"

        # The embedding map: one drawn point per item of the live ALS model, titles on hover.
        page.locator("#embedding-map.rendered").wait_for(timeout=60_000)
        points = page.locator("#embedding-map g.mark-symbol.role-mark path")
        assert points.count() == SMALL.n_items
        spread = page.evaluate("fetch('/recjobs/api/embedding').then(r => r.json()).then(d => "
                               "[d.points.length, new Set(d.points.map(p => p.x)).size, "
                               "new Set(d.points.map(p => p.genre)).size])")
        assert spread[0] == SMALL.n_items and spread[1] > SMALL.n_items // 2 and spread[2] > 1
        points.nth(5).hover(force=True)
        tooltip = page.locator("#vg-tooltip-element")
        tooltip.wait_for(state="visible", timeout=10_000)
        assert "Item " in tooltip.inner_text() and "genre" in tooltip.inner_text()
        page.locator("#embedding-map").screenshot(path=str(ARTIFACTS / "dashboard_embedding_map.png"))

        # Metric charts: two families on two dates, a dated tooltip, bounded axes.
        for column in ("ndcg_at_k", "coverage", "novelty"):
            page.locator(f"#chart-{column}.rendered").wait_for(timeout=30_000)
        ndcg = page.locator("#chart-ndcg_at_k g.mark-symbol.role-mark path")
        assert ndcg.count() == 4
        # The failed night: one dashed red rule on each metric chart.
        assert page.locator("#chart-ndcg_at_k g.mark-rule.role-mark line").count() == 1
        ndcg.first.hover(force=True)
        page.wait_for_function("document.querySelector('#vg-tooltip-element')?.innerText.includes('2026-01-')")
        texts = page.locator("#chart-coverage .role-axis-label text").all_text_contents()
        values = [float(t) for t in texts if t.replace(".", "", 1).isdigit()]  # the y axis; x shows dates
        assert values and max(values) <= 1.0 and any(t.startswith("Jan") for t in texts), texts
        assert page.locator(".vchart.failed").count() == 0
        # Each box said "Loading …" until its chart was drawn, and says it no more.
        page.wait_for_function("document.querySelectorAll('.vchart .loading').length === 0", timeout=60_000)
        # The metric charts, the overlap chart and the map.
        assert page.locator(".vchart.rendered").count() == len(METRICS) + 2
        page.mouse.move(0, 0)
        page.screenshot(path=str(ARTIFACTS / "dashboard_unknown_user.png"), full_page=True)

        # A known user: their history beside their recommendations, both with titles.
        page.goto(f"{url}/recjobs/?user=u7", wait_until="domcontentloaded", timeout=90_000)
        assert page.locator("#user-history tbody tr").count() > 0
        assert page.locator("#user-recs tbody tr").count() == 10
        assert "Item " in page.locator("#user-history tbody tr").first.inner_text()
        assert page.locator("#user-notice").count() == 0
        page.locator("#embedding-map.rendered").wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # The link to the DAG resolves to the Airflow UI's page of recs_nightly.
        assert page.evaluate("document.getElementById('dag-link').href") == f"{url}/dags/recs_nightly"
        figures = _screenshot_figures(page, ARTIFACTS / "dashboard.png")
        # The whole page at the viewport's width, long (charts, map, tables), and not blank.
        assert figures["width"] == 1280 and figures["height"] > 1500, figures
        assert 0.03 < figures["ink"] < 0.6 and figures["colours"] > 50, figures

        # The gate table: its columns, what each row compares, and the scheduled run's promote log.
        assert [t.strip() for t in page.locator("#gate thead th").all_inner_texts()] == GATE_COLUMNS
        rows = [r.split("\t") for r in page.locator("#gate tbody tr").all_inner_texts()]
        # Newest first: the champion defended, the failed night (nothing compared), the first run.
        assert [(r[0], r[2], r[4]) for r in rows] == [
            ("2026-01-31", "champion_kept", "popularity vs champion als"), ("2026-01-25", "no_candidates", "–"),
            ("2026-01-20", "promoted", "als vs runner-up popularity")], rows
        links = page.locator("#gate a.run-log")
        assert links.count() == 1 and links.inner_text() == "promote log"
        assert links.evaluate("a => a.href") == (f"{url}/dags/recs_nightly/runs/"
                                                 f"{quote(SCHEDULED_RUN, safe='')}/tasks/promote")
        # The overlap of the second night's lists with the first's: one point, two rows.
        page.locator("#chart-overlap.rendered").wait_for(timeout=30_000)
        assert page.locator("#chart-overlap g.mark-symbol.role-mark path").count() == 1
        rows = page.locator("#overlap tbody tr").all_inner_texts()
        assert [r.split("\t")[0] for r in rows] == ["2026-01-31", "2026-01-20"], rows
        assert rows[1].split("\t")[1] == "–" and 0 <= float(rows[0].split("\t")[1]) <= 1
        # The published versions: the live night, the rollback target linked to the rollback DAG.
        versions = {tuple(r.split("\t")[:4]) for r in page.locator("#versions tbody tr").all_inner_texts()}
        assert {(k, d, s) for k, d, _v, s in versions if k == "recommendations"} == {
            ("recommendations", "2026-01-31", "live"), ("recommendations", "2026-01-20", "rollback target")}
        rollback = page.locator("#versions a.rollback-link")
        assert rollback.count() == 1 and rollback.evaluate("a => a.href") == f"{url}/dags/recs_rollback"

        # An item: "more like this" from the live similar_items, with titles, version and date.
        page.goto(f"{url}/recjobs/?item=i7", wait_until="domcontentloaded", timeout=90_000)
        assert "More like i7 (Item 7" in page.locator("#item-result h3").inner_text()
        assert page.locator("#item-similar tbody tr").count() == 20  # publish.similar_n
        assert "data up to 2026-01-31" in page.locator("#item-source").inner_text()

        # In the Airflow UI: the short nav label, and the address naming "recjobs" once.
        ui = context.new_page()
        ui.set_viewport_size({"width": 1400, "height": 1000})
        ui.goto(f"{url}/plugin/recs", wait_until="networkidle")
        embedded = ui.frame_locator("iframe").locator("#champion")
        embedded.wait_for(state="visible", timeout=60_000)
        ui.wait_for_url("**/plugin/recs/recjobs/", timeout=30_000)
        assert "/recjobs/recjobs" not in ui.url and "/plugin/recs/recjobs/" in ui.url
        label = ui.get_by_role("link", name="Recs")
        assert label.count() >= 1 and "…" not in label.first.inner_text()
        ui.frame_locator("iframe").locator("#embedding-map.rendered").wait_for(timeout=60_000)
        ui.screenshot(path=str(ARTIFACTS / "dashboard_in_airflow_ui.png"))
        browser.close()
    assert not outside, outside
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    # The API server warmed the dashboard up when it started: the vega bundle is cached for the next start.
    import vl_convert

    assert (dashboard_server["settings"].home / "cache" / f"vega-embed-{vl_convert.__version__}.js").is_file()


def test_error_scrubbing_hides_a_percent_encoded_password():
    import importlib.util

    spec = importlib.util.spec_from_file_location("recjobs_dashboard_plugin", ROOT / "plugins" / "recjobs_dashboard.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    url = "postgresql://u:p%40ss%2Fw@db.example/recs"
    text = plugin._scrub(f"could not connect to {url} (password p@ss/w rejected)", url)
    assert "p%40ss" not in text and "p@ss/w" not in text and text.count("***") == 2
