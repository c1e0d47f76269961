"""Kill anywhere, lose nothing: ingest and publish killed (SIGKILL) at every named fault point, then rerun.

Each case starts from the same state: night D0 published and a new ratings file in the
inbox (ingest points), or night D1 ingested, gated and trained up to its publish (publish
points). It runs `recjobs ingest` or `recjobs publish --date D1` as a real process that
kills itself at one fault point (recjobs/faults.py), checks that nothing apps read
changed, reruns the step, and compares the lake, ``ingest_log``, ``publications``,
``recommendations_history``, the live lists and the ledger with those of an
uninterrupted run, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs import columns as C
from recjobs.data import Lake, generate
from recjobs.db import make_engine
from recjobs.ingest import ingest_inbox
from recjobs.pipeline import (
    engine_for,
    evaluate_candidate,
    prepare,
    promote,
    publish,
    run_pipeline,
    train_candidate,
    train_final,
)
from recjobs.runs import cutoff_of
from recjobs.settings import Settings, load_settings
from tests.conftest import ROOT, SMALL

D0, D1 = "2026-01-20", "2026-01-31"
FAR = cutoff_of(pd.Timestamp("2030-01-01").date())
INGEST_POINTS = ["ingest.mid_validation", "lake.merge.before_write", "ingest.mid_merge", "ingest.before_log"]
PUBLISH_POINTS = ["publish.mid_shard", "publish.mid_load", "publish.before_swap", "publish.mid_swap"]
# ALS publishes both lists (recommendations and similar_items) and trains in a second.
OPTIONS = {"families": ["als"], "publish": {"top_n": 5}, "ingest": {"batch_rows": 100}}
ENV = {"RECJOBS_FAMILIES": '["als"]', "RECJOBS_PUBLISH__TOP_N": "5", "RECJOBS_INGEST__BATCH_ROWS": "100"}
# What each table is compared on: never ids, times or paths (each case has its own home).
QUERIES = {
    "ingest_log": "SELECT content_hash, kind, rows_read, rows_valid, rows_quarantined, duplicates_dropped, "
                  "partitions, status FROM ingest_log ORDER BY content_hash",
    "publications": "SELECT kind, run_date, model_version, row_count, is_live, dropped, live_seq, history_only "
                    "FROM publications ORDER BY id",
    "history": "SELECT * FROM recommendations_history ORDER BY run_date, user_id, rank",
    "recommendations": "SELECT user_id, item_id, rank, score, model_version FROM recommendations "
                       "ORDER BY user_id, rank",
    "similar_items": "SELECT item_id, similar_item_id, rank, score, model_version FROM similar_items "
                     "ORDER BY item_id, rank",
    "popular_items": "SELECT * FROM popular_items ORDER BY rank",
    "model_runs": "SELECT run_date, stage, family, status, model_version FROM model_runs "
                  "ORDER BY run_date, stage, family, status",
}
LIVE = ("publications", "history", "recommendations", "similar_items", "popular_items")


@dataclass
class Start:
    """A starting state (a home, and its database's template on PostgreSQL) and what a step from it leaves."""

    home: Path
    database: str | None
    before: dict[str, pd.DataFrame]
    expected: dict[str, pd.DataFrame]


@dataclass
class Night:
    backend: str
    server: str | None
    ingest: Start
    publish: Start


def _settings(home: Path, url: str | None) -> Settings:
    return load_settings({"home": str(home), "database_url": url, **OPTIONS}, environ={})


def _db_url(server: str, name: str) -> str:
    return sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)


def _admin(server: str, *statements: str) -> None:
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for stmt in statements:
                conn.exec_driver_sql(stmt)
    finally:
        admin.dispose()


def _clone(server: str | None, start: Start, home: Path) -> str | None:
    """A copy of ``start`` at ``home`` (and a database copied from its template); the copy's database URL."""
    shutil.copytree(start.home, home)
    if server is None:
        return None
    name = f"k_{uuid.uuid4().hex[:12]}"
    # CREATE DATABASE ... TEMPLATE needs the template to have no session.
    _admin(server, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{start.database}' "
                   "AND pid <> pg_backend_pid()", f"CREATE DATABASE {name} TEMPLATE {start.database}")
    return _db_url(server, name)


def _database(url: str | None) -> str | None:
    return None if url is None else sa.engine.make_url(url).database


def _publish_ready(settings: Settings) -> None:
    """Night D1 up to its publish: ingested, split, gated and the champion trained."""
    engine = engine_for(settings)
    ingest_inbox(settings, engine)
    prepare(settings, D1)
    train_candidate(settings, engine, D1, "als")
    evaluate_candidate(settings, engine, D1, "als")
    promote(settings, engine, D1)
    train_final(settings, engine, D1)
    engine.dispose()


def _state(settings: Settings) -> dict[str, pd.DataFrame]:
    engine = make_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            state = {name: pd.read_sql(sa.text(sql), conn) for name, sql in QUERIES.items()}
    finally:
        engine.dispose()
    lake = Lake.of(settings).read_ratings(FAR)
    state["lake"] = lake.sort_values([C.USER, C.ITEM, C.TIMESTAMP]).reset_index(drop=True)
    return state


def _write_ratings(path: Path, ratings: pd.DataFrame) -> None:
    frame = ratings.copy()
    frame[C.TIMESTAMP] = (frame[C.TIMESTAMP] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def night(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Night]:
    """The two starting states of a backend, and what an uninterrupted ingest or publish leaves from each."""
    backend = request.param
    server = request.getfixturevalue("postgres_server") if backend == "postgresql" else None
    base = tmp_path_factory.mktemp(f"kill-{backend}")
    databases: list[str] = []
    url = None
    if server is not None:
        databases.append(f"k_{uuid.uuid4().hex[:12]}")
        _admin(server, f"CREATE DATABASE {databases[0]}")
        url = _db_url(server, databases[0])
    data = generate(SMALL)
    ratings = data["ratings"]
    new = ratings[C.TIMESTAMP] >= cutoff_of(pd.Timestamp(D0).date())
    home = base / "ingest"
    inbox = home / "inbox"
    inbox.mkdir(parents=True)
    _write_ratings(inbox / "a_ratings.csv", ratings[~new])
    data["item_features"].to_csv(inbox / "a_item_features.csv", index=False)
    data["items"].to_csv(inbox / "a_items.csv", index=False)
    settings = _settings(home, url)
    run_pipeline(settings, D0)
    # Night D1's delivery: new rows, and a few already delivered (duplicates are dropped).
    _write_ratings(inbox / "b_ratings.csv", pd.concat([ratings[new], ratings[~new].tail(20)]))
    ingest = Start(home, databases[0] if databases else None, _state(settings), {})

    def step(start: Start, name: str, run) -> dict[str, pd.DataFrame]:  # noqa: ANN001
        copy = _settings(base / name, _clone(server, start, base / name))
        databases.extend(filter(None, [_database(copy.database_url)]))
        run(copy)
        return _state(copy)

    ingest.expected = step(ingest, "ingested", lambda s: ingest_inbox(s, engine_for(s)))
    ready = base / "ready"
    publish_start = Start(ready, None, {}, {})
    ready_settings = _settings(ready, _clone(server, ingest, ready))
    publish_start.database = _database(ready_settings.database_url)
    databases.extend(filter(None, [publish_start.database]))
    _publish_ready(ready_settings)
    publish_start.before = _state(ready_settings)
    publish_start.expected = step(publish_start, "published", lambda s: publish(s, engine_for(s), D1))
    yield Night(backend, server, ingest, publish_start)
    if server is not None:
        _admin(server, *(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)" for name in databases))


def _killed_then_rerun(night: Night, start: Start, home: Path, args: list[str], point: str, rerun) -> None:  # noqa: ANN001
    url = _clone(night.server, start, home)
    settings = _settings(home, url)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECJOBS_")}, **ENV,
           "RECJOBS_HOME": str(home), "RECJOBS_FAULT_AT": point, **({"RECJOBS_DATABASE_URL": url} if url else {})}
    try:
        killed = subprocess.run([sys.executable, "-m", "recjobs.cli", *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        # Killed before any commit of a publish: what apps read is as it was.
        after_kill = _state(settings)
        for name in LIVE:
            pd.testing.assert_frame_equal(after_kill[name], start.before[name], obj=f"{name} after the kill")
        engine = engine_for(settings)
        rerun(settings, engine)
        engine.dispose()
        got = _state(settings)
        # ingest_log last: every other table is checked whatever its counts say.
        for name in sorted(start.expected, key=lambda n: n == "ingest_log"):
            pd.testing.assert_frame_equal(got[name], start.expected[name], obj=f"{name} after the rerun")
        assert not any((home / "lake" / ".spill").glob("*"))  # a killed ingest's spill is gone
    finally:
        if url is not None:
            _admin(night.server, f"DROP DATABASE IF EXISTS {_database(url)} WITH (FORCE)")


# Killed after merging partitions, the rerun takes those partitions' counts from the merge
# journal (recjobs.data.lake) instead of counting their rows as duplicates: ingest_log says
# what an uninterrupted ingest says.
@pytest.mark.slow
@pytest.mark.parametrize("point", INGEST_POINTS)
def test_an_ingest_killed_at_any_fault_point_then_rerun_equals_an_uninterrupted_one(night, point, tmp_path):
    _killed_then_rerun(night, night.ingest, tmp_path / "home", ["ingest"], point,
                       lambda settings, engine: ingest_inbox(settings, engine))


@pytest.mark.slow
@pytest.mark.parametrize("point", PUBLISH_POINTS)
def test_a_publish_killed_at_any_fault_point_then_rerun_equals_an_uninterrupted_one(night, point, tmp_path):
    _killed_then_rerun(night, night.publish, tmp_path / "home", ["publish", "--date", D1], point,
                       lambda settings, engine: publish(settings, engine, D1))
