"""Operating the nightly DAG: a failed night never stalls the next, gates order themselves.

Library-level tests of the gate on a real SQLite file and Parquet lake, then one test
against a real scheduler (`airflow standalone`, LocalExecutor) in its own AIRFLOW_HOME
and RECJOBS_HOME: a night whose inbox file is rejected ends with a 'no_candidates' gate,
and the night queued behind it runs and publishes.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs import columns as C
from recjobs.data import Lake, generate, write_inbox
from recjobs.db import make_engine
from recjobs.ingest import ingest_inbox, pending_inbox_files
from recjobs.pipeline import (
    NoCandidatesError,
    PipelineError,
    earlier_dates_in_flight,
    engine_for,
    evaluate_candidate,
    prepare,
    promote,
    record_failure,
    run_pipeline,
    train_candidate,
    train_final,
)
from recjobs.settings import load_settings
from tests.conftest import (
    SMALL,
    _free_port,
    airflow_cli,
    airflow_process_env,
    airflow_standalone,
    parsed_dag,
    wait_for,
)

BIN = Path(sys.executable).parent


def gates(engine: sa.Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql("SELECT run_date, family, status, reason FROM model_runs WHERE stage = 'gate' "
                           "ORDER BY run_date", conn).set_index("run_date")


def candidate(settings, engine, day: str) -> None:  # noqa: ANN001
    prepare(settings, day)
    for family in settings.families:
        train_candidate(settings, engine, day, family)
        evaluate_candidate(settings, engine, day, family)


@pytest.fixture
def popularity(tmp_path, small_inbox):  # noqa: ANN001, ANN201
    settings = load_settings({"home": str(tmp_path / "home"), "families": ["popularity"]}, environ={})
    engine = engine_for(settings)
    ingest_inbox(settings, engine)
    yield settings, engine
    engine.dispose()


def test_a_night_without_candidates_is_recorded_and_never_taken_for_a_champion(popularity):
    settings, engine = popularity
    candidate(settings, engine, "2026-01-29")
    assert promote(settings, engine, "2026-01-29").promoted

    # 2026-01-30: the only family fails (no split was made), so there is nothing to gate.
    try:
        train_candidate(settings, engine, "2026-01-30", "popularity")
    except PipelineError as exc:
        record_failure(engine, "2026-01-30", "popularity", exc)
    with pytest.raises(NoCandidatesError, match="popularity: failed"):
        promote(settings, engine, "2026-01-30")
    row = gates(engine).loc["2026-01-30"]
    assert row["status"] == "no_candidates" and "no split for 2026-01-30" in row["reason"]
    with pytest.raises(PipelineError, match="no champion for 2026-01-30: the gate recorded no_candidates"):
        train_final(settings, engine, "2026-01-30")

    # The next gate compares with 2026-01-29's champion, not with the empty night.
    candidate(settings, engine, "2026-01-31")
    decision = promote(settings, engine, "2026-01-31")
    assert not decision.promoted and decision.reason.startswith("champion popularity kept")


def test_run_pipeline_records_a_night_whose_split_fails(popularity):
    settings, engine = popularity
    # Before the first interaction (2025-12-03): no data, so no split and no candidates.
    with pytest.raises(PipelineError, match="no interactions before"):
        run_pipeline(settings, "2025-11-30", ingest=False)
    row = gates(engine).loc["2025-11-30"]
    assert row["status"] == "no_candidates" and "no interactions before" in row["reason"]
    # ...and the first real night is still a first run.
    assert "first run" in run_pipeline(settings, "2026-01-31", ingest=False).decision.reason


def test_a_gate_sees_and_reports_an_earlier_date_still_in_flight(popularity):
    settings, engine = popularity
    candidate(settings, engine, "2026-01-30")  # evaluated, not gated yet: in flight
    candidate(settings, engine, "2026-01-31")
    assert earlier_dates_in_flight(settings, engine, "2026-01-31") == [dt.date(2026, 1, 30)]
    # Not itself, not later dates, not outside the window, not once abandoned.
    assert earlier_dates_in_flight(settings, engine, "2026-01-30") == []
    narrow = settings.model_copy(update={"gate": settings.gate.model_copy(update={"wait_window_days": 0})})
    assert earlier_dates_in_flight(narrow, engine, "2026-01-31") == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=settings.gate.wait_timeout_minutes + 1)
    assert earlier_dates_in_flight(settings, engine, "2026-01-31", now=later) == []

    decision = promote(settings, engine, "2026-01-31", note="stopped waiting after 1:00:00")
    assert "gated while earlier date(s) 2026-01-30 had candidates but no gate yet" in decision.reason
    assert "stopped waiting after 1:00:00" in decision.reason
    # Once the earlier date is gated (even with no candidates) nothing is in flight.
    promote(settings, engine, "2026-01-30")
    assert earlier_dates_in_flight(settings, engine, "2026-01-31") == []
    record_failure(engine, "2026-01-28", "popularity", RuntimeError("boom"))
    assert earlier_dates_in_flight(settings, engine, "2026-01-31") == [dt.date(2026, 1, 28)]
    with pytest.raises(NoCandidatesError):
        promote(settings, engine, "2026-01-28")
    assert earlier_dates_in_flight(settings, engine, "2026-01-31") == []


def test_the_inbox_watch_sees_only_new_settled_content(settings, small_inbox):
    engine = engine_for(settings)
    now = time.time()
    for path in small_inbox:
        os.utime(path, (now - 60, now - 60))
    assert pending_inbox_files(settings, engine, now=now) == sorted(small_inbox)
    # A file still being copied in (changed in the last 30 s) waits until it stops changing.
    partial = settings.inbox / "zz_arriving.csv"
    partial.write_text("user_id,item_id,rating,timestamp\nu1,i1,4,1767225600\n")
    assert partial not in pending_inbox_files(settings, engine)
    assert partial in pending_inbox_files(settings, engine, now=time.time() + 31)

    # The inbox DAG and the nightly run ingesting at once: both take the lake's lock, and
    # content one ingested is skipped by the other, so every row is merged exactly once.
    with ThreadPoolExecutor(2) as pool:
        reports = [r for batch in pool.map(lambda _: ingest_inbox(settings, engine_for(settings)), range(2))
                   for r in batch]
    ratings = [r for r in reports if not r.skipped and Path(r.source_path).name in ("synthetic_ratings.csv",
                                                                                      partial.name)]
    assert sorted(Path(r.source_path).name for r in ratings) == ["synthetic_ratings.csv", partial.name]
    lake_rows = sum(len(pd.read_parquet(p)) for p in Lake.of(settings).ratings.rglob("*.parquet"))
    assert lake_rows == sum(r.rows_valid - r.duplicates_dropped for r in ratings)
    # Ingested (or rejected) content is no longer pending; files stay in the inbox.
    assert pending_inbox_files(settings, engine, now=time.time() + 31) == []
    # The same content under another name is not new either; changed content is.
    (settings.inbox / "copy.csv").write_bytes(small_inbox[0].read_bytes())
    changed = settings.inbox / "zz_arriving.csv"
    changed.write_text("user_id,item_id,rating,timestamp\nu1,i2,5,1767225600\n")
    assert pending_inbox_files(settings, engine, now=time.time() + 31) == [changed]
    engine.dispose()


# -- a real scheduler ----------------------------------------------------------------
NIGHTS = ["2026-01-30", "2026-01-31"]


def _dag_runs(airflow_home: Path) -> list[tuple[str, str, str | None, str | None]]:
    with sqlite3.connect(airflow_home / "airflow.db") as conn:
        return conn.execute("SELECT substr(logical_date, 1, 10), state, start_date, end_date FROM dag_run "
                            "WHERE dag_id = 'recs_nightly' ORDER BY logical_date").fetchall()


@pytest.fixture
def scheduler(tmp_path):  # noqa: ANN001, ANN201
    """`airflow standalone` with recs_nightly parsed and still paused, and an inbox."""
    if not (BIN / "airflow").exists():
        pytest.skip(f"airflow is not installed in {BIN}")
    port = _free_port()
    home = tmp_path / "recjobs"
    env = {
        **airflow_process_env(tmp_path / "airflow", plugins=tmp_path / "no_plugins"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the runs this test triggers
        "AIRFLOW__CORE__PARALLELISM": "4",
        "RECJOBS_HOME": str(home),
        "RECJOBS_FAMILIES": '["popularity", "als"]',
        "RECJOBS_PUBLISH__TOP_N": "10",
    }
    log_path = tmp_path / "standalone.log"
    with airflow_standalone(env, port, log_path):
        # Paused (the default for a new DAG) until the test has queued its runs.
        airflow_db = tmp_path / "airflow" / "airflow.db"
        parsed = wait_for(lambda: (parsed_dag(airflow_db, "recs_nightly") or (False,))[0], timeout=180, interval=2)
        assert parsed, ("recs_nightly was never parsed (or is not paused)", parsed_dag(airflow_db, "recs_nightly"))
        yield {"env": env, "home": home, "airflow_home": tmp_path / "airflow", "log": log_path}


@pytest.mark.slow
def test_a_night_whose_inbox_file_is_rejected_ends_and_the_next_night_publishes(scheduler):
    env, home = scheduler["env"], scheduler["home"]
    write_inbox(home / "inbox", SMALL)
    # Half the rows have a rating out of range: ingest rejects the whole file (limit 1%).
    bad = generate(SMALL)["ratings"].head(40).copy()
    bad.loc[bad.index[::2], C.RATING] = 99.0
    bad[C.TIMESTAMP] = bad[C.TIMESTAMP].map(lambda t: int(t.timestamp()))
    bad.to_csv(home / "inbox" / "zz_bad_ratings.csv", index=False)

    # Both nights queued at once while paused: with max_active_runs=1 the second waits for the first.
    for night in NIGHTS:
        out = airflow_cli(env, "dags", "trigger", "recs_nightly", "--logical-date", f"{night}T00:00:00+00:00",
                          "--conf", f'{{"run_date": "{night}"}}')
        assert out.returncode == 0, out.stderr[-3000:]
    assert airflow_cli(env, "dags", "unpause", "recs_nightly").returncode == 0

    airflow_home = scheduler["airflow_home"]
    done = wait_for(lambda: [r[1] in ("failed", "success") for r in _dag_runs(airflow_home)] == [True, True],
                    timeout=1200, interval=2)
    # Before the fix the second night stayed "running" forever: promote depended on the
    # failed promote of the first night, and Airflow's deadlock detection ignores that.
    assert done, (_dag_runs(airflow_home), scheduler["log"].read_text()[-3000:])
    (d1, s1, _, end1), (d2, s2, start2, _) = _dag_runs(airflow_home)
    assert (d1, s1, d2, s2) == (NIGHTS[0], "failed", NIGHTS[1], "success")
    assert end1 <= start2  # the scenario under test: night 2 only started once night 1 had ended

    engine = make_engine(load_settings({"home": str(home)}, environ={}).db_url)
    with engine.connect() as conn:
        gate = pd.read_sql("SELECT run_date, family, status, reason FROM model_runs WHERE stage = 'gate'",
                           conn).set_index("run_date")
        live = conn.execute(sa.text("SELECT run_date FROM publications WHERE kind = 'recommendations' "
                                    "AND is_live = :t"), {"t": True}).scalar_one()
        n = conn.execute(sa.text("SELECT COUNT(*) FROM recommendations")).scalar_one()
    engine.dispose()
    assert gate.loc[NIGHTS[0], "status"] == "no_candidates"
    assert "no family was trained" in gate.loc[NIGHTS[0], "reason"]
    # The empty night is not a champion: night 2's gate is a first run.
    assert gate.loc[NIGHTS[1], "status"] == "promoted" and "first run" in gate.loc[NIGHTS[1], "reason"]
    assert live == NIGHTS[1] and n == SMALL.n_users * 10
