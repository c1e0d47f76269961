"""The dashboard's data on a real database: what an operator reads off it.

The page's lookup, charts and embedding map run over two nights of the real pipeline
(popularity and ALS on generated data with genres and titles)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs.dashboard import (
    DASH,
    METRICS,
    NO_GENRE,
    build_map,
    champion,
    champion_map,
    close_ids,
    ingest_by_date,
    item_genres,
    live_artifact,
    lookup_user,
    metric_chart_spec,
    metric_chart_specs,
    metrics_by_date,
    project_2d,
    render,
    vega_embed_bundle,
)
from recjobs.data import write_inbox
from recjobs.db import ingest_log, model_runs, publications
from recjobs.models import get_family
from recjobs.models.base import Recommender
from recjobs.pipeline import engine_for, load_matrix, run_pipeline
from recjobs.settings import load_settings
from tests.conftest import SMALL


def _gate(conn, day: str, family: str, status: str) -> None:  # noqa: ANN001
    conn.execute(model_runs.insert().values(run_date=day, family=family, model_version=f"{family}-{day}",
                                            stage="gate", status=status, created_at=dt.datetime.now(dt.UTC)))


def test_a_night_without_candidates_does_not_reset_champion_since(engine):
    with engine.begin() as conn:
        _gate(conn, "2026-01-01", "als", "promoted")
        _gate(conn, "2026-01-02", "-", "no_candidates")  # a failed night: the champion stays
        _gate(conn, "2026-01-03", "als", "champion_kept")
        conn.execute(publications.insert().values(
            kind="recommendations", run_date="2026-01-03", table_name="recommendations_v9",
            model_version="als-20260103-full-x", row_count=1, is_live=True, dropped=False,
            published_at=dt.datetime.now(dt.UTC)))
    champ = champion(engine)
    assert champ is not None and champ.family == "als" and champ.since == "2026-01-01"


def test_ingest_counts_show_rejected_files_apart_from_ingested_ones(engine):
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for digest, status, valid, bad in (("a", "ingested", 100, 0), ("b", "rejected", 0, 60)):
            conn.execute(ingest_log.insert().values(
                content_hash=digest, source_path=f"{digest}.csv", kind="ratings", rows_read=100,
                rows_valid=valid, rows_quarantined=bad, duplicates_dropped=0, ingested_at=now, status=status))
    frame = ingest_by_date(engine).set_index("status")
    assert frame.loc["ingested", "rows_valid"] == 100 and frame.loc["rejected", "files"] == 1
    assert frame.loc["rejected", "rows_quarantined"] == 60
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ingest_log)).scalar_one() == 2


# -- the page over a real published run: lookup, charts, embedding map, gate significance -----------
@pytest.fixture(scope="module")
def published(tmp_path_factory):  # noqa: ANN001, ANN201
    """Two nights of the real pipeline (popularity and ALS) on generated data with genres and titles."""
    home = tmp_path_factory.mktemp("dash") / "home"
    settings = load_settings({"home": str(home), "families": ["popularity", "als"], "publish": {"top_n": 10}},
                             environ={})
    write_inbox(settings.inbox, SMALL)
    for day in ("2026-01-20", "2026-01-31"):
        run_pipeline(settings, day)
    engine = engine_for(settings)
    yield settings, engine
    engine.dispose()


def test_an_unknown_user_is_named_with_close_ids_and_the_fallback_list_is_labelled(published):
    settings, engine = published
    page = render(engine, user_id="u7x", base="/recjobs/", settings=settings)
    assert "Unknown user &#x27;u7x&#x27;" in page
    suggestions = page[page.index('id="user-suggestions"'):].split("</span>?")[0]
    assert '<a href="/recjobs/?user=u7"><span class="id">u7</span></a>' in suggestions
    recs = page[page.index('<table id="user-recs"'):].split("</thead>")[0]
    assert "<th>users who interacted</th>" in recs and "model score" not in recs
    assert "Popular items (fallback list)" in page
    assert 'id="user-history"' not in page  # nothing to show for an unknown id
    # The answer comes before the charts: visible right after submitting the form.
    assert page.index('id="lookup-result"') < page.index('id="chart-ndcg_at_k"')

    known = lookup_user(engine, "u7", settings)
    assert known.known and known.source == "personal" and not known.message
    assert list(known.recommendations.columns) == ["rank", "item_id", "title", "model score"]
    assert len(known.recommendations) == 10 and known.recommendations["title"].str.startswith("Item ").all()
    data = load_matrix(settings, dt.date(2026, 1, 31), "full")
    row = list(data.user_ids).index("u7")
    assert known.history_total == data.matrix.indptr[row + 1] - data.matrix.indptr[row] == len(known.history)
    assert known.history["title"].str.startswith("Item ").all()
    page = render(engine, user_id="u7", base="/recjobs/", settings=settings)
    assert 'id="user-history"' in page and "<th>model score</th>" in page and "Unknown user" not in page


def test_close_ids_prefer_numeric_neighbours_then_spelling():
    ids = [str(i) for i in range(1, 944)]
    assert close_ids("950", ids)[:2] == ["943", "942"]
    assert close_ids("alice", ["alicia", "bob", "alice2"])[:2] == ["alice2", "alicia"]
    assert close_ids("zzzz", ["a", "b"]) == []


@pytest.mark.parametrize("query", ["--5", "²", "12345678901234567890123", "-", "-0", "٣", "1" * 400, "+5", "5 "])
def test_close_ids_take_any_text_and_compare_numbers_exactly(query):
    # Defect 14: these raised (a 500 from the dashboard) when the known ids are numeric.
    ids = [str(i) for i in range(1, 944)] + ["007", "u1"]
    out = close_ids(query, ids)
    assert set(out) <= set(ids) and len(out) <= 5


def test_close_ids_rank_huge_numbers_without_overflow_or_rounding():
    ids = ["12345678901234567890120", "12345678901234567890125", "99999999999999999999999", "5"]
    assert close_ids("12345678901234567890123", ids)[:2] == ["12345678901234567890125", "12345678901234567890120"]
    assert close_ids("-3", ["-5", "5", "-2", "x"])[:2] == ["-2", "-5"]


def test_close_ids_keep_spaces_as_part_of_an_id():
    # Defect 19: the query is not trimmed; a spaced id is its own id and can be suggested.
    assert close_ids("pad", [" pad ", "other"])[0] == " pad "
    assert close_ids(" 7 ", ["7", "8"])[0] == "7"


def test_embedding_map_has_a_point_per_item_of_the_live_champion(published):
    settings, engine = published
    emap = champion_map(engine, settings)
    assert emap.message is None and emap.family == "als"
    live = live_artifact(engine, settings)
    model = Recommender.load(live.path)
    vectors = model.item_embedding()
    assert vectors is not None and np.abs(vectors).sum() > 0
    assert emap.n_items == len(model.item_ids) == SMALL.n_items == len(emap.points)
    assert list(emap.points["item_id"]) == [str(i) for i in model.item_ids]
    coords, _ = project_2d(vectors)
    np.testing.assert_allclose(emap.points[["x", "y"]].to_numpy(), coords, atol=1e-4)
    assert emap.points["genre"].str.fullmatch(r"g\d+").all()  # genre=g<k> from the item features
    assert emap.points["title"].str.startswith("Item ").all()
    doc = emap.as_json()
    assert doc["n_points"] == SMALL.n_items and set(doc["points"][0]) == {"item_id", "title", "genre", "x", "y"}
    # The page points the map at the data route instead of inlining the points.
    page = render(engine, base="/recjobs/", settings=settings)
    assert 'id="embedding-map"' in page and '"url": "/recjobs/api/embedding"' in page


def test_a_champion_without_item_vectors_says_so(published):
    settings, _ = published
    data = load_matrix(settings, dt.date(2026, 1, 31), "full")
    emap = build_map(get_family("popularity")().fit(data), {}, None, "popularity-x")
    assert emap.points.empty and "has no item vectors" in emap.message


def test_item_genre_is_the_most_weighted_then_first_by_name():
    features = pd.DataFrame({"item_id": ["a", "a", "b", "b", "c"],
                             "feature": ["genre=Drama", "genre=Comedy", "genre=War", "genre=Action", "year=1990"],
                             "weight": [1.0, 1.0, 2.0, 1.0, 1.0]})
    assert list(item_genres(features, np.array(["a", "b", "c", "d"], dtype=object))) == [
        "Comedy", "War", NO_GENRE, NO_GENRE]


def test_projection_is_deterministic_and_sign_fixed():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8))
    first, shares = project_2d(vectors)
    second, _ = project_2d(vectors.copy())
    np.testing.assert_array_equal(first, second)
    assert first.shape == (50, 2) and 0 < shares[1] <= shares[0] < 1


def test_metric_charts_step_by_night_with_dated_tooltips_and_bounded_domains(published):
    _, engine = published
    specs = metric_chart_specs(metrics_by_date(engine))
    assert set(specs) == {c for c, _, _ in METRICS}
    for column, _title, bounded in METRICS:
        enc = specs[column]["encoding"]
        # Nights as nights (even steps, not a time axis), each labelled with its UTC date.
        assert enc["x"]["type"] == "ordinal" and enc["x"]["field"] == "date" and enc["x"]["sort"] == "ascending"
        assert "utcFormat" in enc["x"]["axis"]["labelExpr"]
        assert enc["tooltip"][0] == {"field": "date", "type": "nominal", "title": "date"}
        if bounded:
            assert enc["y"]["scale"]["domain"][0] == 0 and enc["y"]["scale"]["domain"][1] <= 1
            assert enc["y"]["scale"]["nice"] is False  # Vega would otherwise round past 1
    values = next(iter(specs["coverage"]["datasets"].values()))
    assert {v["date"] for v in values} == {"2026-01-20", "2026-01-31"}
    assert max(v["coverage"] for v in values) <= 1
    # Small values get a tighter axis, still starting at 0.
    tiny = pd.DataFrame({"run_date": ["2026-01-01"], "family": ["als"], "ndcg_at_k": [0.031]})
    assert metric_chart_spec(tiny, "ndcg_at_k", "NDCG")["encoding"]["y"]["scale"]["domain"] == [0, 0.04]


def test_gate_table_shows_significance_and_a_dash_where_none_was_recorded(engine):
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(model_runs.insert().values(run_date="2026-01-01", family="als", model_version="als-1",
                                                stage="gate", status="promoted", ndcg_at_k=0.5, created_at=now,
                                                reason="old row"))
        conn.execute(model_runs.insert().values(run_date="2026-01-02", family="lightfm", model_version="lfm-2",
                                                stage="gate", status="promoted", ndcg_at_k=0.52, created_at=now,
                                                gate_diff=0.0213, gate_ci_low=0.0101, gate_ci_high=0.0325,
                                                gate_p_value=0.0004, reason="better"))
    page = render(engine)
    table = page[page.index('<table id="gate"'):].split("</table>")[0]
    rows = table.split("<tr>")[2:]
    assert "<td>+0.0213</td><td>[+0.0101, +0.0325]</td><td>0.0004</td>" in rows[0]
    assert f"<td>{DASH}</td><td>{DASH}</td><td>{DASH}</td>" in rows[1]


def test_the_vega_bundle_is_self_contained():
    bundle = vega_embed_bundle()
    assert "window.vegaEmbed" in bundle and len(bundle) > 100_000
    assert "cdn.jsdelivr" not in bundle and "https://cdn" not in bundle


def test_the_vega_bundle_is_built_once_and_read_back_by_later_processes(tmp_path):
    # A first dashboard open waited ~3 s for the bundle to be built; later processes read it.
    import subprocess
    import sys

    import vl_convert

    from tests.conftest import ROOT

    code = ("import sys, pathlib\nfrom recjobs.dashboard import warm_up, vega_embed_bundle\n"
            "warm_up(pathlib.Path(sys.argv[1]))\nprint(len(vega_embed_bundle()))\n")
    cache = tmp_path / "cache"

    def process() -> int:
        out = subprocess.run([sys.executable, "-c", code, str(cache)], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.strip())

    built = process()
    (path,) = cache.iterdir()
    assert path.name == f"vega-embed-{vl_convert.__version__}.js" and len(path.read_text()) == built
    path.write_text("window.vegaEmbed = 'from the cache';")
    assert process() == len("window.vegaEmbed = 'from the cache';")  # read back, not built again
