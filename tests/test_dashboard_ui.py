"""What a new user stumbled on in the dashboard (issue 19): the gate table names, per row, what
its difference compares; the embedding map's colours differ.

Gate rows are written as a night writes them: candidates through ``recjobs.db.ledger``, and
the decision by the real gate (``recjobs.pipeline.promote``) on a real SQLite file."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re

import pandas as pd

from recjobs.dashboard import (
    DASH,
    GENRE_PALETTE,
    METRICS,
    PALETTE,
    embedding_map_spec,
    failed_nights,
    gate_decisions,
    lookup_item,
    lookup_user,
    metric_chart_specs,
    metrics_by_date,
    published_versions,
    render,
)
from recjobs.db import items, ledger, popular_items
from recjobs.pipeline import promote, record_no_candidates
from recjobs.publish import publish_list, rollback
from recjobs.settings import FAMILIES, load_settings


def _night(settings, engine, day: str, scores: dict[str, float]) -> None:  # noqa: ANN001
    for family, ndcg in scores.items():
        ledger.record_evaluated(engine, dt.date.fromisoformat(day), family, {
            "model_version": f"{family}-{day.replace('-', '')}-c", "k": 10, "ndcg_at_k": ndcg,
            "precision_at_k": ndcg / 2, "recall_at_k": ndcg, "map_at_k": ndcg / 3})
    promote(settings, engine, day)


def _rows(engine) -> dict[str, tuple[str, str, str | None, float | None]]:  # noqa: ANN001
    frame = gate_decisions(engine)
    return {r.run_date: (r.family, r.status, r.compared if isinstance(r.compared, str) else None,
                         None if r.gate_diff != r.gate_diff else round(r.gate_diff, 4))
            for r in frame.itertuples(index=False)}


def test_each_gate_row_names_what_its_difference_compares(tmp_path, engine):
    settings = load_settings({"home": str(tmp_path / "home"), "families": ["als", "ease", "itemknn"],
                              "gate": {"test": "none", "first_run": "best_mean"}}, environ={})
    _night(settings, engine, "2026-02-01", {"als": 0.10, "ease": 0.12})         # first run: no champion
    _night(settings, engine, "2026-02-02", {"als": 0.09, "ease": 0.12})         # ease defended
    _night(settings, engine, "2026-02-03", {"als": 0.15, "ease": 0.12})         # als beats ease
    _night(settings, engine, "2026-02-04", {"ease": 0.11, "itemknn": 0.10})     # champion als absent
    _night(settings, engine, "2026-02-05", {"ease": 0.11})                      # only the champion
    assert _rows(engine) == {
        "2026-02-01": ("ease", "promoted", "ease vs runner-up als", 0.02),
        # Before: "ease -0.03 vs champion" on ease's own row. The gap is als's, against ease.
        "2026-02-02": ("ease", "champion_kept", "als vs champion ease", -0.03),
        "2026-02-03": ("als", "promoted", "als vs champion ease", 0.03),
        "2026-02-04": ("ease", "promoted", "ease vs runner-up itemknn", 0.01),
        "2026-02-05": ("ease", "champion_kept", None, None),
    }
    page = render(engine)
    table = page[page.index('<table id="gate"'):].split("</table>")[0]
    head = table.split("</thead>")[0]
    assert "<th>compared</th><th>difference</th>" in head and "vs champion" not in head
    rows = {r.split("</td>")[0].removeprefix("<td>"): r for r in table.split("<tr>")[2:]}
    assert "<td>als vs champion ease</td><td>-0.0300</td>" in rows["2026-02-02"]
    assert "<td>ease vs runner-up als</td><td>+0.0200</td>" in rows["2026-02-01"]
    assert f"<td>{DASH}</td><td>{DASH}</td>" in rows["2026-02-05"]


def test_a_first_run_won_by_the_surest_candidate_is_compared_with_the_best_mean(tmp_path, engine):
    settings = load_settings({"home": str(tmp_path / "home"), "families": ["als", "ease"]}, environ={})
    # Written as the gate writes a lower-bound pick: the reference (best mean, no diff of its own)
    # is ease; the winner als is compared with it.
    day = dt.date(2026, 2, 1)
    for family, ndcg in {"als": 0.10, "ease": 0.11}.items():
        ledger.record_evaluated(engine, day, family, {"model_version": f"{family}-v", "k": 10, "ndcg_at_k": ndcg})
    rows = {r.family: r for r in ledger.candidates(engine, day, settings.families)}
    ledger.record_gate(engine, day, {
        rows["als"].id: {"status": ledger.PROMOTED, "gate_diff": -0.01},
        rows["ease"].id: {"status": ledger.REJECTED, "gate_diff": None}},
        {"family": "als", "model_version": "als-v", "status": ledger.PROMOTED, "reason": "lower bound",
         "gate_diff": -0.01})
    assert _rows(engine)["2026-02-01"][2] == "als vs best mean ease"


def _lab(colour: str) -> tuple[float, float, float]:
    """CIELAB (D65) of a ``#rrggbb`` sRGB colour."""
    rgb = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92 for c in rgb]
    xyz = [sum(m * c for m, c in zip(row, lin, strict=True)) / w for row, w in zip(
        [(0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505)],
        (0.95047, 1.0, 1.08883), strict=True)]
    f = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in xyz]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def ciede2000(one: str, two: str) -> float:
    """The CIEDE2000 colour difference (Sharma, Wu and Dalal 2005): about 2 is just noticeable."""
    (l1, a1, b1), (l2, a2, b2) = _lab(one), _lab(two)
    c_bar = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(c_bar ** 7 / (c_bar ** 7 + 25 ** 7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = math.hypot(a1, b1), math.hypot(a2, b2)
    h1, h2 = math.degrees(math.atan2(b1, a1)) % 360, math.degrees(math.atan2(b2, a2)) % 360
    dh = 0.0 if c1 * c2 == 0 else (h2 - h1 + 180) % 360 - 180
    d_h = 2 * math.sqrt(c1 * c2) * math.sin(math.radians(dh / 2))
    l_bar, c_bar = (l1 + l2) / 2, (c1 + c2) / 2
    if c1 * c2 == 0:
        h_bar = h1 + h2
    elif abs(h1 - h2) <= 180:
        h_bar = (h1 + h2) / 2
    else:
        h_bar = (h1 + h2 + 360) / 2 if h1 + h2 < 360 else (h1 + h2 - 360) / 2
    t = (1 - 0.17 * math.cos(math.radians(h_bar - 30)) + 0.24 * math.cos(math.radians(2 * h_bar))
         + 0.32 * math.cos(math.radians(3 * h_bar + 6)) - 0.20 * math.cos(math.radians(4 * h_bar - 63)))
    rotation = -math.sin(math.radians(60 * math.exp(-(((h_bar - 275) / 25) ** 2)))) * 2 * math.sqrt(
        c_bar ** 7 / (c_bar ** 7 + 25 ** 7))
    sl = 1 + 0.015 * (l_bar - 50) ** 2 / math.sqrt(20 + (l_bar - 50) ** 2)
    sc, sh = 1 + 0.045 * c_bar, 1 + 0.015 * c_bar * t
    dl, dc, dhh = (l2 - l1) / sl, (c2 - c1) / sc, d_h / sh
    return math.sqrt(dl ** 2 + dc ** 2 + dhh ** 2 + rotation * dc * dhh)


CATEGORY20 = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd",
              "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d",
              "#17becf", "#9edae5"]
NEAR = 15.0  # CIEDE2000 below this: two small map points in these colours are easily taken for one


def _closest(palette: list[str]) -> float:
    return min(ciede2000(a, b) for a, b in itertools.combinations(palette, 2))


def test_the_embedding_maps_palette_has_no_look_alike_pairs():
    assert round(ciede2000("#000000", "#ffffff")) == 100  # the scale: black to white is 100
    assert _closest(CATEGORY20) < NEAR  # the palette users complained about has look-alike pairs
    assert len(GENRE_PALETTE) == len(set(GENRE_PALETTE)) == 20
    assert _closest(GENRE_PALETTE) >= 19
    assert _closest(GENRE_PALETTE[:8]) >= 27  # a map of few genres gets the most distinct colours
    assert all(_lab(c)[0] < 90 for c in GENRE_PALETTE)  # none fades into the white page (Okabe-Ito's yellow: 89)
    spec = embedding_map_spec("api/embedding")
    assert spec["encoding"]["color"]["scale"] == {"range": GENRE_PALETTE}


def test_every_family_has_its_own_chart_colour():
    assert set(PALETTE) == set(FAMILIES) and len(set(PALETTE.values())) == len(PALETTE)
    assert _closest(list(PALETTE.values())) >= NEAR


def test_chart_boxes_say_they_are_loading_until_drawn(engine):
    page = render(engine)
    boxes = re.findall(r'<div class="vchart" id="(chart-[a-z_]+)"[^>]*>(.*?)</div>', page)
    assert len(boxes) == len(METRICS) and all(inner == '<span class="loading">Loading chart…</span>'
                                              for _, inner in boxes)
    # The script takes the text away once the chart is drawn (checked in Chromium by test_dashboard_auth).
    assert "target.querySelector('.loading')?.remove()" in page


def test_failed_nights_are_marked_on_the_metric_charts_with_their_reason(settings, engine):
    feb = {d: dt.date(2026, 2, d) for d in (1, 2, 3)}
    settings = load_settings({"home": str(settings.home), "families": ["als"]}, environ={})
    _night(settings, engine, "2026-02-01", {"als": 0.10})
    _night(settings, engine, "2026-02-03", {"als": 0.11})
    record_no_candidates(engine, feb[2], "no candidates for 2026-02-02: no family was trained")
    record_no_candidates(engine, feb[3], "a failed rerun")  # the date's decision stands: not a failed night
    failed = failed_nights(engine)
    assert failed[["run_date", "status"]].values.tolist() == [["2026-02-02", "no_candidates"]]
    spec = metric_chart_specs(metrics_by_date(engine), failed)["ndcg_at_k"]
    rules, line = spec["layer"]
    assert rules["mark"]["type"] == "rule" and line["mark"]["type"] == "line"
    marked = spec["datasets"][rules["data"]["name"]]
    assert marked == [{"date": "2026-02-02", "night": "no_candidates",
                       "reason": "no candidates for 2026-02-02: no family was trained"}]
    assert [t.get("title", t["field"]) for t in rules["encoding"]["tooltip"]] == ["date", "failed night", "reason"]
    assert "a night without a decision" in spec["title"]["subtitle"]
    # Without failed nights the chart is as before: one line layer.
    assert spec_without_failures_is_plain(metric_chart_specs(metrics_by_date(engine))["ndcg_at_k"])
    assert "no family was trained" in render(engine)


def spec_without_failures_is_plain(spec: dict) -> bool:
    return "layer" not in spec and spec["mark"]["type"] == "line"


def test_a_looked_up_list_names_its_model_version_and_data_date(engine):
    version = "als-20260201-full-1a2b3c4d"
    publish_list(engine, "recommendations", "2026-02-01", version, [pd.DataFrame({
        "user_id": ["u1", "u1"], "item_id": ["i1", "i2"], "rank": [1, 2], "score": [0.9, 0.5],
        "model_version": version})])
    with engine.begin() as conn:
        conn.execute(popular_items.insert(), [{"rank": 1, "item_id": "i9", "score": 40.0, "run_date": "2026-02-01"}])
    found = lookup_user(engine, "u1")
    assert (found.source, found.model_version, found.run_date) == ("personal", version, "2026-02-01")
    page = render(engine, user_id="u1")
    assert f'<p class="muted" id="user-recs-source">from {version}, data up to 2026-02-01</p>' in page
    unknown = lookup_user(engine, "nobody")
    assert (unknown.source, unknown.run_date) == ("popular", "2026-02-01")
    assert list(unknown.recommendations.columns)[-1] == "users who interacted"
    assert "counted on the data up to 2026-02-01" in render(engine, user_id="nobody")


def test_published_versions_say_which_is_live_and_where_rollback_goes(engine):
    def lists(version: str) -> list[pd.DataFrame]:
        return [pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "rank": [1], "score": [1.0],
                              "model_version": version})]

    for day, version in (("2026-02-01", "als-a"), ("2026-02-02", "ease-b"), ("2026-02-03", "ease-c")):
        assert publish_list(engine, "recommendations", day, version, lists(version), keep_versions=4).live
    # A backfill of an older date is kept as history only.
    assert not publish_list(engine, "recommendations", "2026-01-15", "als-old", lists("als-old"), keep_versions=4).live
    frame = published_versions(engine)
    assert frame[["run_date", "model_version", "state"]].values.tolist() == [
        ["2026-01-15", "als-old", "history only"],
        ["2026-02-03", "ease-c", "live"],
        ["2026-02-02", "ease-b", "rollback target"],
        ["2026-02-01", "als-a", "was live"],
    ]
    rollback(engine)
    states = dict(published_versions(engine)[["model_version", "state"]].values.tolist())
    assert states == {"als-old": "history only", "ease-b": "live", "als-a": "rollback target"}  # ease-c retired
    table = render(engine).split('<table id="versions"')[1].split("</table>")[0]
    assert "<td>ease-b</td><td>live</td>" in table and "<td>als-a</td><td>rollback target</td>" in table


def test_an_item_lookup_shows_more_like_this_with_titles_version_and_date(engine):
    assert "No similar items are published" in lookup_item(engine, "i1").message  # before any publish
    version = "als-20260201-full-1a2b3c4d"
    publish_list(engine, "similar_items", "2026-02-01", version, [pd.DataFrame({
        "item_id": ["i1", "i1", "i2"], "similar_item_id": ["i2", "i3", "i1"], "rank": [1, 2, 1],
        "score": [0.8, 0.4, 0.8], "model_version": version})])
    with engine.begin() as conn:
        conn.execute(items.insert(), [{"item_id": "i1", "title": "Toy Story"}, {"item_id": "i2", "title": "Heat"}])
    found = lookup_item(engine, "i1")
    assert (found.title, found.model_version, found.run_date, found.message) == (
        "Toy Story", version, "2026-02-01", "")
    assert found.similar.fillna("").values.tolist() == [[1, "i2", "Heat", 0.8], [2, "i3", "", 0.4]]
    assert list(found.similar.columns) == ["rank", "similar_item_id", "title", "similarity"]
    page = render(engine, item_id="i1")
    assert 'More like <span class="id">i1</span> (Toy Story)' in page
    assert f"from {version}, data up to 2026-02-01" in page and '<table id="item-similar">' in page
    # An unknown id: said so, with close known ids as links; a direction mark is shown as its escape.
    hostile = "i1\u202e"
    missing = lookup_item(engine, hostile)
    assert missing.similar.empty and "i1" in missing.suggestions
    page = render(engine, item_id=hostile)
    assert "\u202e" not in page and "No similar items for" in page and 'href="?item=i1"' in page


def test_candidates_of_an_earlier_date_and_a_link_to_the_dag(tmp_path, engine):
    settings = load_settings({"home": str(tmp_path / "home"), "families": ["als", "ease"]}, environ={})
    _night(settings, engine, "2026-02-01", {"als": 0.10, "ease": 0.12})
    _night(settings, engine, "2026-02-03", {"als": 0.15, "ease": 0.12})

    def shown(page: str) -> list[str]:
        table = page.split('<table id="latest"')[1].split("</table>")[0]
        return sorted({row.split("</td>")[0].removeprefix("<td>") for row in table.split("<tr>")[2:]})

    page = render(engine, base="/recjobs/")
    assert "<h2 id='candidates'>Candidates of 2026-02-03</h2>" in page and shown(page) == ["2026-02-03"]
    assert "<option value='2026-02-01'>2026-02-01</option>" in page
    assert "href='/recjobs/../dags/recs_nightly' target='_top'" in page
    page = render(engine, candidates_date="2026-02-01")
    assert shown(page) == ["2026-02-01"] and "<option value='2026-02-01' selected>" in page
    page = render(engine, candidates_date="<b>x")  # not a date with candidates: said, safely
    assert "No candidates for &lt;b&gt;x: showing the latest date, 2026-02-03." in page and "<b>x" not in page
    assert shown(page) == ["2026-02-03"]


def test_each_nights_overlap_with_the_lists_before_is_charted_and_listed(engine):
    from recjobs.dashboard import list_overlap, overlap_chart_spec
    from recjobs.guard.checks import ListStats, output_checks
    from recjobs.guard.record import HELD, PASSED, record_checks

    guard = load_settings({}, environ={}).guard
    nights = (("2026-02-01", None, PASSED), ("2026-02-02", 0.62, PASSED), ("2026-02-03", 0.01, HELD))
    for day, overlap, decision in nights:  # the output guard's checks, as its stage records them
        lists = ListStats(listed_items=40, catalogue=50, users=10, users_with_list=10,
                          live_items=None if overlap is None else 40, overlap=overlap)
        record_checks(engine, dt.date.fromisoformat(day), "output", output_checks(lists, None, [], "ndcg", guard),
                      decision)
    frame = list_overlap(engine)
    assert frame[["run_date", "decision"]].values.tolist() == [[d, dec] for d, _, dec in nights]
    assert frame["overlap"].tolist()[1:] == [0.62, 0.01] and pd.isna(frame["overlap"].iloc[0])
    spec = overlap_chart_spec(frame)
    points = [row for data in spec["datasets"].values() for row in data]
    assert sorted((p["date"], p["overlap"], p["decision"]) for p in points) == [
        ("2026-02-02", 0.62, "passed"), ("2026-02-03", 0.01, "held")]
    page = render(engine)
    assert '<div class="vchart" id="chart-overlap">' in page and 'data-target="chart-overlap"' in page
    table = page.split('<table id="overlap"')[1].split("</table>")[0]
    rows = [r.split("</td>")[0].removeprefix("<td>") for r in table.split("<tr>")[2:]]
    assert rows == ["2026-02-03", "2026-02-02", "2026-02-01"]  # newest first
    assert "<td>0.0100</td>" in table and f"<td>{DASH}</td>" in table and "<td>held</td>" in table


def test_before_any_check_the_overlap_says_so_and_draws_no_chart(engine):
    page = render(engine)
    assert '<p id="overlap" class="empty">no lists checked yet</p>' in page and "chart-overlap" not in page


def test_a_gate_row_links_to_its_airflow_task_log(tmp_path, engine, monkeypatch):
    settings = load_settings({"home": str(tmp_path / "home"), "families": ["als", "ease"]}, environ={})
    _night(settings, engine, "2026-02-01", {"als": 0.10, "ease": 0.12})  # by the CLI: no Airflow run
    run_id = "scheduled__2026-02-03T00:00:00+00:00"
    for name, value in (("AIRFLOW_CTX_DAG_ID", "recs_nightly"), ("AIRFLOW_CTX_DAG_RUN_ID", run_id),
                        ("AIRFLOW_CTX_TASK_ID", "promote")):
        monkeypatch.setenv(name, value)
    _night(settings, engine, "2026-02-02", {"als": 0.15, "ease": 0.12})
    frame = gate_decisions(engine)
    assert frame[["run_date", "airflow_run_id"]].fillna("").values.tolist() == [
        ["2026-02-02", run_id], ["2026-02-01", ""]]
    table = render(engine, base="/recjobs/").split('<table id="gate"')[1].split("</table>")[0]
    assert table.split("</th>")[-2].endswith("Airflow run")
    href = "/recjobs/../dags/recs_nightly/runs/scheduled__2026-02-03T00%3A00%3A00%2B00%3A00/tasks/promote"
    assert f'<a class="run-log" href="{href}" target="_top"' in table and ">promote log</a>" in table
    assert table.count("run-log") == 1 and table.split("<tr>")[-1].endswith(f"<td>{DASH}</td></tr></tbody>")


def test_the_rollback_target_links_to_the_rollback_dag(engine):
    def lists(version: str) -> list[pd.DataFrame]:
        return [pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "rank": [1], "score": [1.0],
                              "model_version": version})]

    for day, version in (("2026-02-01", "als-a"), ("2026-02-02", "ease-b")):
        publish_list(engine, "recommendations", day, version, lists(version), keep_versions=4)
    page = render(engine, base="/recjobs/")
    table = page.split('<table id="versions"')[1].split("</table>")[0]
    target = next(r for r in table.split("<tr>") if "rollback target" in r)
    assert '<a class="rollback-link" href="/recjobs/../dags/recs_rollback" target="_top"' in target
    assert "(version empty, or als-a)" in target and table.count("rollback-link") == 1
    assert "id='rollback-dag' href='/recjobs/../dags/recs_rollback'" in page
