"""Guards (README 'Guards'): a night whose input or lists are outside their thresholds never goes live.

Real components throughout: a real lake and SQLite file, real small training (the
``popularity`` family), the CLI through ``recjobs.cli.main``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs.cli import main
from recjobs.dashboard.page import render
from recjobs.db import ledger
from recjobs.errors import GuardedError
from recjobs.guard import ListStats, NightStats, checks_of, input_checks, output_checks
from recjobs.guard.checks import nightly_stats, rating_edges, total_variation
from recjobs.pipeline import engine_for, promote, run_pipeline
from recjobs.settings import GuardSettings, load_settings

FIRST = dt.date(2026, 3, 1)
DAYS = 12
ROWS_A_NIGHT = 60
# Small nights: judge volumes from 10 rows a night, ratings from 20 (the defaults wait for more).
GUARD = {"min_judged_rows": 10, "min_rating_rows": 20}


def night(i: int) -> str:
    return (FIRST + dt.timedelta(days=i)).isoformat()


def write_nights(inbox: Path, last_night_rows: int) -> None:
    """``DAYS`` nights of ``ROWS_A_NIGHT`` ratings by 40 users of 30 items; the last night has ``last_night_rows``."""
    rng = np.random.default_rng(11)
    frames = []
    for i in range(DAYS):
        n = last_night_rows if i == DAYS - 1 else ROWS_A_NIGHT
        start = pd.Timestamp(night(i), tz="UTC")
        frames.append(pd.DataFrame({
            "user_id": [f"u{u}" for u in rng.integers(0, 40, n)],
            "item_id": [f"i{int(x)}" for x in np.minimum(rng.zipf(1.6, n), 30)],
            "rating": rng.integers(1, 6, n).astype(float),
            "timestamp": (start + pd.to_timedelta(np.sort(rng.uniform(0, 86_000, n)), unit="s")).astype("int64")
            // 10**9,
        }))
    inbox.mkdir(parents=True, exist_ok=True)
    pd.concat(frames).to_csv(inbox / "ratings.csv", index=False)


def _settings(tmp_path: Path, database_url: str | None = None, **guard: object):  # noqa: ANN202
    return load_settings({"home": str(tmp_path / "home"), "families": ["popularity"], "database_url": database_url,
                          "publish": {"top_n": 5}, "guard": {**GUARD, **guard}}, environ={})


def _live(engine: sa.Engine) -> tuple[str, str]:
    """(run date, model version) of the live recommendations, read through the view apps read."""
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT DISTINCT model_version FROM recommendations")).scalar_one()
        run_date = conn.execute(sa.text("SELECT run_date FROM publications WHERE kind = 'recommendations' "
                                        "AND is_live")).scalar_one()
    return run_date, version


def _failed(engine: sa.Engine, day: str, stage: str) -> dict[str, str]:
    return {r.check_name: r.decision for r in checks_of(engine, dt.date.fromisoformat(day))
            if r.stage == stage and not r.passed}


# -- the checks, as pure functions ------------------------------------------------------
def test_nightly_stats_count_rows_actives_newcomers_and_ratings():
    users = np.array([0, 1, 0, 2, 2])
    items = np.array([0, 0, 1, 1, 2])
    ratings = np.array([5.0, 4.0, 1.0, 5.0, 0.5])
    days = np.array([10, 10, 11, 11, 11])
    stats = nightly_stats(users, items, ratings, days, rating_edges(0.5, 5.0, 10))
    first, second = stats[10], stats[11]
    assert (first.rows, first.users, first.items, first.new_users, first.new_items) == (2, 2, 1, 2, 1)
    assert (second.rows, second.users, second.items, second.new_users, second.new_items) == (3, 2, 2, 1, 2)
    assert second.rating_counts.sum() == 3 and second.rating_counts[0] == 1 and second.rating_counts[-1] == 1
    assert second.mean_rating == pytest.approx(6.5 / 3)
    assert total_variation(np.array([1, 0]), np.array([0, 3])) == 1.0
    assert total_variation(np.array([2, 2]), np.array([5, 5])) == 0.0


def _whole_array_stats(users, items, ratings, days, edges) -> dict:  # noqa: ANN001
    """The nightly stats as the former whole-array code computed them: the chunked version's oracle."""
    unique_days, day_index = np.unique(days, return_inverse=True)
    n_days, bins = len(unique_days), len(edges) - 1

    def active_and_new(codes):  # noqa: ANN001, ANN202
        width = int(codes.max()) + 1
        first = np.full(width, n_days, dtype=np.int64)
        np.minimum.at(first, codes, day_index)
        return (np.bincount(np.unique(day_index * width + codes) // width, minlength=n_days),
                np.bincount(first[first < n_days], minlength=n_days))

    (au, nu), (ai, ni) = active_and_new(users), active_and_new(items)
    bin_of = np.clip(np.searchsorted(edges, ratings, side="right") - 1, 0, bins - 1)
    counts = np.bincount(day_index * bins + bin_of, minlength=n_days * bins).reshape(n_days, bins)
    sums = np.bincount(day_index, weights=ratings, minlength=n_days)
    rows = np.bincount(day_index, minlength=n_days)
    return {int(d): (int(rows[i]), int(au[i]), int(ai[i]), int(nu[i]), int(ni[i]), counts[i].tolist(), float(sums[i]))
            for i, d in enumerate(unique_days)}


def test_nightly_stats_in_chunks_equal_the_whole_array_figures(monkeypatch):
    from recjobs.guard import checks

    rng = np.random.default_rng(11)
    n = 3000
    users, items = rng.integers(0, 90, n).astype(np.int32), rng.integers(0, 40, n).astype(np.int32)
    ratings = (rng.random(n) * 4.5 + 0.5).astype(np.float32)  # sums that depend on their order
    millis = rng.integers(0, 30, n) * 86_400_000 + rng.integers(0, 86_400_000, n) + 20_000 * 86_400_000
    edges = rating_edges(0.5, 5.0, 10)
    want = _whole_array_stats(users, items, ratings.astype(np.float64), millis // 86_400_000, edges)
    monkeypatch.setattr(checks, "_CHUNK", 7)
    got = nightly_stats(users, items, ratings, millis, edges, unit=86_400_000)
    assert {d: (s.rows, s.users, s.items, s.new_users, s.new_items, s.rating_counts.tolist(), s.rating_sum)
            for d, s in got.items()} == want


def _night(day: int, rows: int, ratings: list[int] | None = None, new: int = 0) -> NightStats:
    counts = np.bincount(ratings or [2] * rows, minlength=5)
    return NightStats(day, rows, rows // 2, rows // 3, new, 0, counts, float(np.dot(counts, np.arange(5))))


def test_input_checks_hold_a_collapse_and_a_flood_but_judge_no_first_night():
    g = GuardSettings(min_judged_rows=10, min_rating_rows=10)
    trailing = [_night(d, 100) for d in range(7)]
    failed = {c.name for c in input_checks(_night(7, 10), trailing, 0.0, g) if not c.passed}
    assert failed == {"rows_ratio", "users_ratio", "items_ratio"}
    assert {c.name for c in input_checks(_night(7, 400), trailing, 0.0, g) if not c.passed} == {
        "rows_ratio", "users_ratio", "items_ratio"}
    assert all(c.passed for c in input_checks(_night(7, 90), trailing, 0.0, g))
    # A day that is not over (a manual run for today) is short by nature; a flood still fails.
    assert all(c.passed for c in input_checks(_night(7, 10), trailing, 0.0, g, day_over=False))
    assert not all(c.passed for c in input_checks(_night(7, 400), trailing, 0.0, g, day_over=False))
    # Two trailing nights are fewer than guard.min_trailing_nights: recorded with a note, passed.
    few = input_checks(_night(2, 1), trailing[:2], None, g)
    assert all(c.passed for c in few)
    assert "min_trailing_nights" in next(c for c in few if c.name == "rows_ratio").note
    # Every rating moved to the top: the distribution and the mean fail, the volume does not.
    moved = {c.name for c in input_checks(_night(7, 100, [4] * 100), trailing, 0.0, g) if not c.passed}
    assert moved == {"rating_distance", "mean_rating_shift"}
    # Quarantined rows and a night of newcomers.
    assert [c.name for c in input_checks(_night(7, 100, new=45), trailing, 0.02, g) if not c.passed] == [
        "new_users_share", "quarantine_share"]


def test_output_checks_catch_collapsed_lists_and_a_metric_drop():
    g = GuardSettings()
    good = ListStats(listed_items=40, catalogue=80, users=100, users_with_list=100, live_items=45, overlap=0.6)
    assert all(c.passed for c in output_checks(good, 0.30, [0.31, 0.29, 0.30], "ndcg", g))
    bad = ListStats(listed_items=5, catalogue=80, users=100, users_with_list=30, live_items=45, overlap=0.0)
    failed = {c.name for c in output_checks(bad, 0.10, [0.31, 0.29, 0.30], "ndcg", g) if not c.passed}
    assert failed == {"coverage_ratio", "fallback_share", "overlap", "metric_ratio"}
    first = ListStats(listed_items=5, catalogue=80, users=100, users_with_list=100, live_items=None, overlap=None)
    assert all(c.passed for c in output_checks(first, 0.1, [0.3], "ndcg", g))


# -- the pipeline --------------------------------------------------------------------------
def test_a_collapsed_night_is_held_and_yesterday_stays_live_until_an_operator_lets_it_through(tmp_path, capsys):
    settings = _settings(tmp_path)
    write_nights(settings.inbox, last_night_rows=4)
    engine = engine_for(settings)
    yesterday, tonight = night(DAYS - 2), night(DAYS - 1)
    run_pipeline(settings, yesterday)
    live = _live(engine)
    assert live[0] == yesterday

    with pytest.raises(GuardedError, match=r"input guard held .*rows_ratio = 0\.06"):
        run_pipeline(settings, tonight, ingest=False)
    assert _live(engine) == live  # yesterday's lists stay live
    failed = _failed(engine, tonight, "input")
    assert {"rows_ratio", "users_ratio"} <= set(failed) and set(failed.values()) == {"held"}
    gate = ledger.gate_row(engine, dt.date.fromisoformat(tonight))
    assert gate.status == ledger.GUARDED and "recjobs guard allow --date" in gate.reason
    # The DAG's promote runs after a failed split (all_done): it names the guard, and keeps its row.
    with pytest.raises(GuardedError):
        promote(settings, engine, tonight)
    assert ledger.gate_row(engine, dt.date.fromisoformat(tonight)).status == ledger.GUARDED
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM publications WHERE run_date = :d"),
                            {"d": tonight}).scalar_one() == 0
    # The dashboard's guard panel lists the held checks, with their values and thresholds.
    page = render(engine, settings=settings)
    panel = page[page.index('id="guards"'):].split("</table>")[0]
    assert tonight in panel and "rows_ratio" in panel and "held" in panel and "trailing median" in panel

    home = ["--set", f"home={settings.home}", "--set", f"guard.min_judged_rows={GUARD['min_judged_rows']}",
            "--set", "publish.top_n=5", "--set", 'families=["popularity"]']
    # The command line, each stage in its own process as in Airflow: one line, exit 4 (held, not
    # broken), nothing published.
    capsys.readouterr()
    assert main(["run", "--date", tonight, "--no-ingest", *home]) == 4
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("recjobs run: input guard held") and f"recjobs guard allow --date {tonight}" in err
    assert _live(engine) == live
    # `guard check` runs the input guard alone: held again, until an operator lets it through.
    assert main(["guard", "check", "--date", tonight, *home]) == 4
    assert "input guard held" in capsys.readouterr().err
    assert main(["guard", "allow", "--date", tonight, "--note", "a short night, checked", *home]) == 0
    assert main(["guard", "show", "--date", tonight, *home]) == 0
    shown = capsys.readouterr().out
    assert "operator_allow" in shown and "rows_ratio" in shown and "FAIL" in shown

    run_pipeline(settings, tonight, ingest=False)
    assert _live(engine)[0] == tonight
    assert _failed(engine, tonight, "input") == dict.fromkeys(failed, "allowed")
    assert ledger.gate_row(engine, dt.date.fromisoformat(tonight)).status in ledger.CHAMPION_STATUSES
    assert ledger.guarded_row(engine, dt.date.fromisoformat(tonight)) is None


# On PostgreSQL too: the output guard reads the live lists through the view apps read.
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_champion_whose_lists_collapse_is_kept_as_history_only(tmp_path, request, backend):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    settings = _settings(tmp_path, url)
    write_nights(settings.inbox, last_night_rows=ROWS_A_NIGHT)
    engine = engine_for(settings)
    yesterday, tonight = night(DAYS - 2), night(DAYS - 1)
    run_pipeline(settings, yesterday)
    live = _live(engine)
    # A catalogue coverage no five-item list of popular items reaches.
    strict = _settings(tmp_path, url, min_coverage=0.9)
    with pytest.raises(GuardedError, match=r"output guard held .*coverage = 0\.\d+ \(threshold >= 0\.9"):
        run_pipeline(strict, tonight, ingest=False)
    assert _live(engine) == live
    assert _failed(engine, tonight, "output") == {"coverage": "held"}
    overlap = next(r for r in checks_of(engine, dt.date.fromisoformat(tonight)) if r.check_name == "overlap")
    assert overlap.passed and 0 < overlap.value <= 1  # compared with the live lists of sampled users
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT history_only, is_live FROM publications WHERE run_date = :d "
                                    "AND kind = 'recommendations'"), {"d": tonight}).one()
        history = conn.execute(sa.text("SELECT COUNT(*) FROM recommendations_history WHERE run_date = :d"),
                               {"d": tonight}).scalar_one()
        row = conn.execute(sa.text("SELECT status, reason FROM model_runs WHERE stage = 'publish' AND "
                                   "run_date = :d"), {"d": tonight}).one()
    assert bool(kept.history_only) and not kept.is_live and history > 0
    assert row.status == ledger.HISTORY and "output guard held" in row.reason


# -- hostile input ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["guard", "allow", "--date", "2026-02-30"], "bad date '2026-02-30'"),
    (["guard", "allow", "--date", ""], "bad date ''"),
    (["guard", "allow", "--date", "2999-01-01"], "later than"),
    (["guard", "allow", "--date", "2026-03-01", "--stage", "both"], "invalid choice: 'both'"),
    (["guard", "wave", "--date", "2026-03-01"], "invalid choice: 'wave'"),
    (["guard", "allow"], "--date"),
    (["guard", "allow", "--date", "2026-03-01", "--note", "a\x00b"], "--note"),
    (["guard", "allow", "--date", "2026-03-01", "--note", "x" * 2001], "--note"),
    (["guard", "allow", "--date", "2026-03-01", "--set", "guard.min_volume_ratio=-0.1"], "guard.min_volume_ratio"),
    (["guard", "allow", "--date", "2026-03-01", "--set", "guard.max_rating_distance=NaN"],
     "guard.max_rating_distance"),
    (["guard", "allow", "--date", "2026-03-01", "--set", "guard.min_volume_ratio=4"], "max_volume_ratio"),
    (["guard", "allow", "--date", "2026-03-01", "--set", "guard.trailing_nights=0"], "guard.trailing_nights"),
    (["guard", "allow", "--date", "2026-03-01", "--set", "guard.max_metric_drop=1.5"], "guard.max_metric_drop"),
    (["guard", "allow", "--date", "2026-03-01", "--set", "guard.enable=false"], "guard.enable"),
])
def test_hostile_guard_commands_and_settings_are_one_line_and_write_nothing(tmp_path, capsys, argv, needle):
    home = tmp_path / "home"
    assert main([*argv, "--set", f"home={home}"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (home / "recjobs.db").exists()


def test_a_run_reads_the_lake_once_for_both_the_input_guard_and_the_split(tmp_path, monkeypatch):
    from recjobs.data.lake import Lake

    settings = _settings(tmp_path)
    write_nights(settings.inbox, last_night_rows=40)
    reads = []
    real = Lake.read_events

    def counted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - the real read, counted
        reads.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Lake, "read_events", counted)
    report = run_pipeline(settings, night(DAYS - 2))
    assert report.published and len(reads) == 1
