"""A real Airflow (scheduler, API server with our plugin, dag-processor, triggerer).

One module-scoped `airflow standalone` (SQLite metadata DB, LocalExecutor) with real
simple-auth-manager users serves every test: the run that unpausing starts publishes the
newest date live, which triggers a downstream DAG scheduled on the recommendations Asset;
a backfill of three past dates through the scheduler (history only: no Asset events);
the dashboard's routes refusing anonymous and unauthorised callers;
and the dashboard page opened in headless Chromium after logging in through
Airflow's login form, which must show the champion and charts built from those runs.
The processes are started and stopped here.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs.data import write_inbox
from recjobs.db import make_engine
from recjobs.settings import load_settings
from tests.conftest import (
    ROOT,
    SMALL,
    _free_port,
    airflow_cli,
    airflow_process_env,
    airflow_standalone,
    parsed_dag,
    wait_for,
)

# A real Airflow scheduler: minutes, so outside the fast loop (-m 'not slow').
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ARTIFACTS = ROOT / "test-artifacts"
BACKFILL = ["2026-01-28", "2026-01-29", "2026-01-30"]
LIVE_DATE = "2026-01-31"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Simple auth manager users: "nobody" has no role, so the auth manager authorises nothing for it.
USERS = "admin:admin,viewer:viewer,nobody:"
PASSWORDS = {"admin": "admin-pw-7Qx", "viewer": "viewer-pw-3Kd", "nobody": "nobody-pw-9Ma"}
DASHBOARD_ROUTES = ["/recjobs/", "/recjobs/?user=u7", "/recjobs/api/champion"]




def _http(url: str, token: str | None = None, cookie: str | None = None) -> tuple[int, str]:
    """GET ``url`` with a bearer token or the UI's ``_token`` cookie: (status, body), errors included."""
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _token(port: int, user: str) -> str:
    """A JWT from the simple auth manager, as `POST /auth/token` issues it to API clients."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/auth/token", method="POST",
                                 data=json.dumps({"username": user, "password": PASSWORDS[user]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["access_token"]


@pytest.fixture(scope="module")
def airflow_server(tmp_path_factory):  # noqa: ANN001, ANN201
    if not (BIN / "airflow").exists():
        pytest.skip(f"airflow is not installed in {BIN}")
    base = tmp_path_factory.mktemp("standalone")
    port = _free_port()
    home = base / "recjobs"
    passwords_file = base / "passwords.json"
    passwords_file.write_text(json.dumps(PASSWORDS))
    env = {
        **airflow_process_env(base / "airflow"),
        # Real users with known passwords: the dashboard must ask for a login like the rest of Airflow.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # The project's DAGs beside a downstream DAG scheduled on the recommendations Asset.
        "AIRFLOW__CORE__DAGS_FOLDER": str(_dags_folder(base / "dags")),
        "DOWNSTREAM_OUT": str(base / "downstream.jsonl"),
        # LocalExecutor with two task slots: the mapped ranking shards share them.
        "AIRFLOW__CORE__PARALLELISM": "2",
        "RECJOBS_HOME": str(home),
        # Two families are enough for a gate with a choice; the suite trains the others elsewhere.
        "RECJOBS_FAMILIES": '["popularity", "als"]',
        "RECJOBS_PUBLISH__TOP_N": "10",
        "RECJOBS_PUBLISH__SHARDS": "2",
        # The backfill's later gates wait for earlier ones (up_for_reschedule): poll more often than
        # the 30 s default, so the test does not sit out most of a poll after each earlier gate.
        "RECJOBS_GATE__WAIT_POLL_SECONDS": "10",
    }
    write_inbox(home / "inbox", SMALL)
    settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("RECJOBS_")})
    db_file = home / "recjobs.db"
    with airflow_standalone(env, port, base / "standalone.log", timeout=240):
        # The dashboard before any schema exists: first no database file, then an empty one.
        admin = _token(port, "admin")
        before = {"no_file": _http(f"http://127.0.0.1:{port}/recjobs/", admin),
                  "no_file_api": _http(f"http://127.0.0.1:{port}/recjobs/api/champion", admin),
                  "file_created": db_file.exists()}
        sqlite3.connect(db_file).close()
        before["empty_db"] = _http(f"http://127.0.0.1:{port}/recjobs/", admin)
        with sqlite3.connect(db_file) as conn:
            before["tables"] = conn.execute("SELECT name FROM sqlite_master").fetchall()

        airflow_db = base / "airflow" / "airflow.db"

        def parsed() -> bool:  # stored, still paused (the default for a new DAG), its next slot computed
            dag = parsed_dag(airflow_db, "recs_nightly")
            return dag is not None and dag[0] and dag[1] is not None

        assert wait_for(parsed, timeout=180, interval=2), ("recs_nightly was never parsed (or is not paused)",
                                                           parsed_dag(airflow_db, "recs_nightly"))
        # The newest date is published first, by the run that unpausing starts at once (catchup off:
        # the latest whole day). Its slot is taken by a run computing LIVE_DATE, so that the
        # scheduler does not start one for the real yesterday (it skips a slot that has a run).
        slot = parsed_dag(airflow_db, "recs_nightly")[1]
        out = airflow_cli(env, "dags", "trigger", "recs_nightly", "--logical-date", str(slot),
                       "--conf", json.dumps({"run_date": LIVE_DATE}))
        assert out.returncode == 0, out.stderr[-3000:]
        assert airflow_cli(env, "dags", "unpause", "recs_nightly").returncode == 0
        # ...and its live publish triggers the downstream DAG.
        assert wait_for(lambda: _states(airflow_db, "recs_downstream") in (["success"], ["failed"]),
                        timeout=600, interval=2), (_states(airflow_db, "recs_nightly"),
                                                   (base / "standalone.log").read_text()[-3000:])
        yield {"env": env, "port": port, "settings": settings, "base": base, "before_schema": before}


def _states(airflow_db: Path, dag_id: str) -> list[str]:
    with sqlite3.connect(airflow_db) as conn:
        return [s for (s,) in conn.execute("SELECT state FROM dag_run WHERE dag_id = ? ORDER BY id", (dag_id,))]


# What a team's DAG does with a fresh publish (refresh a cache, export the lists): here it
# records each triggering event's extra.
DOWNSTREAM_DAG = '''
import json
import os

import pendulum
from airflow.sdk import dag, task
from recjobs_airflow import RECOMMENDATIONS


@dag(dag_id="recs_downstream", schedule=[RECOMMENDATIONS], start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     catchup=False, is_paused_upon_creation=False)
def recs_downstream():
    @task
    def record(triggering_asset_events=None):
        with open(os.environ["DOWNSTREAM_OUT"], "a") as out:
            for event in triggering_asset_events[RECOMMENDATIONS]:
                out.write(json.dumps(event.extra) + "\\n")

    record()


recs_downstream()
'''


def _dags_folder(folder: Path) -> Path:
    """The project's DAG files (linked, so they are the real ones) and the downstream DAG."""
    folder.mkdir()
    for source in (ROOT / "dags").glob("*.py"):
        (folder / source.name).symlink_to(source)
    (folder / "recs_downstream.py").write_text(DOWNSTREAM_DAG)
    return folder


def _runs(airflow_home: Path) -> dict[str, str]:
    with sqlite3.connect(airflow_home / "airflow.db") as conn:
        rows = conn.execute("SELECT logical_date, state FROM dag_run WHERE dag_id = 'recs_nightly' "
                            "AND run_type = 'backfill'").fetchall()
    return {str(d)[:10]: s for d, s in rows}


def test_backfill_through_the_scheduler_keeps_dated_history_and_live_newest(airflow_server):
    env = airflow_server["env"]
    out = airflow_cli(env, "backfill", "create", "--dag-id", "recs_nightly",
                      # The default reprocess behaviour (none): no task depends_on_past, so Airflow
                      # no longer demands one; gates order themselves through model_runs.
                      "--from-date", BACKFILL[0], "--to-date", BACKFILL[-1])
    assert out.returncode == 0, out.stderr[-3000:]
    home = Path(env["AIRFLOW_HOME"])
    finished = wait_for(lambda: len(_runs(home)) == 3 and all(s in ("success", "failed") for s in _runs(home).values()),
                        timeout=900, interval=2)
    assert finished, _runs(home)
    assert _runs(home) == dict.fromkeys(BACKFILL, "success")

    engine = make_engine(airflow_server["settings"].db_url)
    with engine.connect() as conn:
        history = dict(conn.execute(sa.text(
            "SELECT run_date, COUNT(*) FROM recommendations_history GROUP BY run_date")).all())
        gates = pd.read_sql("SELECT run_date, family, status, reason FROM model_runs WHERE stage = 'gate'", conn)
        cands = pd.read_sql("SELECT run_date, family FROM model_runs WHERE stage = 'candidate'", conn)
        live = conn.execute(sa.text("SELECT DISTINCT model_version FROM recommendations")).scalars().all()
        live_date = conn.execute(sa.text(
            "SELECT run_date FROM publications WHERE kind = 'recommendations' AND is_live = :t"), {"t": True}).scalar_one()
    assert history == dict.fromkeys([*BACKFILL, LIVE_DATE], SMALL.n_users * 10)
    assert sorted(gates["run_date"]) == sorted([*BACKFILL, LIVE_DATE])
    # Gates ran in date order although the backfill runs its dates at once (up to 10 active runs):
    # each later gate waited (up_for_reschedule) for the earlier dates' gates, so each backfilled
    # date after the first compared with its predecessor's champion.
    reasons = gates.set_index("run_date")["reason"]
    assert "first run" in reasons[BACKFILL[0]]
    assert all("first run" not in reasons[d] for d in BACKFILL[1:]), reasons.to_dict()
    assert cands.groupby("run_date").size().to_dict() == dict.fromkeys([*BACKFILL, LIVE_DATE], 2)
    # The backfilled (older) dates never replaced the newest live set.
    assert live_date == LIVE_DATE and len(live) == 1 and "20260131" in live[0]
    # Publishing fanned out over the mapped shards (one task instance per shard and date).
    with sqlite3.connect(home / "airflow.db") as conn:
        mapped = conn.execute("SELECT run_id, map_index, state FROM task_instance "
                              "WHERE dag_id = 'recs_nightly' AND task_id = 'rank_shard' "
                              "AND run_id LIKE 'backfill%'").fetchall()
    assert sorted(m for _, m, _ in mapped) == [0, 0, 0, 1, 1, 1] and {s for _, _, s in mapped} == {"success"}
    # Each date used only data before its own end: the splits differ by date.
    snaps = [Path(airflow_server["settings"].runs_dir / d / "snapshot.json").read_text() for d in BACKFILL]
    assert len(set(snaps)) == 3


def test_a_live_publish_triggers_the_downstream_dag_and_history_only_publishes_do_not(airflow_server):
    airflow_db = airflow_server["base"] / "airflow" / "airflow.db"
    # The fixture's run published LIVE_DATE live: one recommendations event, one downstream run,
    # which received the event's extra. (After the backfill, when run in file order: its three
    # publishes were history only and emitted nothing.)
    assert _states(airflow_db, "recs_downstream") == ["success"]
    lines = (airflow_server["base"] / "downstream.jsonl").read_text().splitlines()
    received = [json.loads(line) for line in lines]
    settings = airflow_server["settings"]
    assert [(e["run_date"], e["rows"], e["database"]) for e in received] == [
        (LIVE_DATE, SMALL.n_users * 10, settings.db_url_masked)]
    with sqlite3.connect(airflow_db) as conn:
        events = conn.execute("SELECT a.name, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                              "WHERE a.name IN ('recjobs.recommendations', 'recjobs.similar_items')").fetchall()
        lake = conn.execute("SELECT COUNT(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                            "WHERE a.name = 'recjobs.ratings_lake'").fetchone()[0]
    assert sorted(name for name, _ in events) == ["recjobs.recommendations", "recjobs.similar_items"]
    assert {json.loads(extra)["run_date"] for _, extra in events} == {LIVE_DATE}
    assert lake == 1  # the first ingest added rows; later ones found nothing new and emitted nothing


def test_dashboard_shows_initdb_hint_and_creates_nothing_before_the_schema_exists(airflow_server):
    before = airflow_server["before_schema"]
    status, body = before["no_file"]
    assert status == 200 and "no recjobs schema yet: run recjobs initdb" in body, body[:500]
    assert before["no_file_api"][0] == 503 and "recjobs initdb" in before["no_file_api"][1]
    assert before["file_created"] is False  # the request did not create the SQLite file...
    status, body = before["empty_db"]
    assert status == 200 and "no recjobs schema yet: run recjobs initdb" in body and "model_runs" in body
    assert before["tables"] == []  # ...nor any table in an existing, empty one


def test_dashboard_routes_require_airflow_login_and_permission(airflow_server):
    port = airflow_server["port"]
    url = f"http://127.0.0.1:{port}"
    # Anonymous: refused like Airflow's own API, and no API docs to browse.
    assert _http(f"{url}/api/v2/dags")[0] == 401
    for route in DASHBOARD_ROUTES:
        assert _http(url + route)[0] == 401, route
    for route in ["/recjobs/docs", "/recjobs/redoc", "/recjobs/openapi.json"]:
        assert _http(url + route)[0] == 404, route
    assert _http(url + "/recjobs/", token="not-a-jwt")[0] in (401, 403)
    # A viewer's JWT, as a bearer token (API clients) or as the UI's cookie (browsers).
    viewer = _token(port, "viewer")
    for route in DASHBOARD_ROUTES:
        assert _http(url + route, token=viewer)[0] == 200, route
        assert _http(url + route, cookie=viewer)[0] == 200, route
    status, body = _http(url + "/recjobs/?user=u7", cookie=viewer)
    assert 'id="champion"' in body and 'id="user-recs"' in body
    status, body = _http(url + "/recjobs/api/champion", token=viewer)
    assert json.loads(body)["run_date"] == LIVE_DATE
    # Authenticated, but the auth manager does not authorise the custom view for a role-less user.
    nobody = _token(port, "nobody")
    for route in DASHBOARD_ROUTES:
        status, body = _http(url + route, token=nobody)
        assert status == 403 and "recjobs dashboard" in body, (route, status, body)
        assert _http(url + route, cookie=nobody)[0] == 403, route


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (scripts/setup_system.sh installs it)")
def test_dashboard_page_in_headless_chromium(airflow_server):
    from playwright.sync_api import sync_playwright

    port = airflow_server["port"]
    url = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    # The plugin registers a nav entry in the Airflow UI...
    status, plugins = _http(f"{url}/api/v2/plugins", token=_token(port, "viewer"))
    assert status == 200, plugins
    assert "recjobs_dashboard" in plugins and '"href":"/recjobs/"' in plugins.replace(" ", "")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        context = browser.new_context(viewport={"width": 1280, "height": 1100})
        page = context.new_page()
        assert page.goto(f"{url}/recjobs/?user=u7").status == 401  # not logged in yet
        # Log in as a user does: Airflow's login form, which stores the JWT in the `_token` cookie.
        page.goto(f"{url}/auth/login?next={quote('/recjobs/?user=u7')}")
        page.fill("input[name='username']", "viewer")
        page.fill("input[name='password']", PASSWORDS["viewer"])
        page.click("button[type='submit']")
        page.wait_for_url("**/recjobs/?user=u7")
        page.wait_for_load_state("load")
        champion = page.locator("#champion").inner_text()
        assert "Champion" in champion and "champion since" in champion
        assert "20260131" in champion  # the live model is the newest date's
        page.locator("#chart-ndcg_at_k.rendered").wait_for(timeout=60_000)
        # Two families on four dates, each a point, joined by one line per family (Vega-Lite marks).
        assert page.locator("#chart-ndcg_at_k g.mark-symbol.role-mark path").count() == 8
        assert page.locator("#chart-ndcg_at_k g.mark-line.role-mark path").count() == 2
        assert page.locator("#gate tbody tr").count() >= 4
        assert page.locator("#ingest tbody tr").count() >= 1
        recs = page.locator("#user-recs tbody tr")
        assert recs.count() == 10 and "Item " in recs.first.inner_text()  # titles from the items table
        page.screenshot(path=str(ARTIFACTS / "dashboard_scheduler_run.png"), full_page=True)
        # ...and the page as it appears inside the Airflow UI, opened from its nav in the logged-in browser.
        ui = context.new_page()
        ui.set_viewport_size({"width": 1400, "height": 1000})
        ui.goto(f"{url}/plugin/recs", wait_until="networkidle")
        embedded = ui.frame_locator("iframe").locator("#champion")
        embedded.wait_for(state="visible", timeout=60_000)
        assert "20260131" in embedded.inner_text()
        time.sleep(2)
        ui.screenshot(path=str(ARTIFACTS / "dashboard_in_airflow_ui.png"))
        browser.close()
    assert (ARTIFACTS / "dashboard_scheduler_run.png").stat().st_size > 10_000
