"""Publishing never blocks readers: bounded lock waits on PostgreSQL, no write lock while ranking on SQLite."""

from __future__ import annotations

import logging
import sqlite3
import threading

import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs.db import ensure_schema, history, make_engine, metadata
from recjobs.pipeline import (
    engine_for,
    evaluate_candidate,
    prepare,
    promote,
    publish,
    train_candidate,
    train_final,
)
from recjobs.publish import SwapPolicy, SwapTimeoutError, live_version, publish_list
from recjobs.settings import load_settings
from tests.conftest import wait_for
from tests.test_publish import TOP, USERS, frames, snapshot

TABLES = set(metadata.tables)


@pytest.fixture
def pg(postgres_url):  # noqa: ANN001, ANN201
    engine = make_engine(postgres_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


def _open_reader(engine: sa.Engine) -> sa.Connection:
    """A reader in an open transaction that has read the live view: it holds ACCESS SHARE until it ends."""
    conn = engine.connect()
    conn.begin()
    assert conn.execute(sa.text("SELECT COUNT(*) FROM recommendations")).scalar_one() == USERS * TOP
    return conn


def _swap_waiting(engine: sa.Engine, caplog: pytest.LogCaptureFixture) -> bool:
    """The swap is waiting for the view's lock now, or has reported a retry."""
    if any("retrying" in r.getMessage() for r in caplog.records):
        return True
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'CREATE OR REPLACE VIEW recommendations%'")).scalar_one() > 0


def test_waiting_swap_does_not_queue_new_readers_and_lands_when_the_reader_ends(pg, caplog):
    caplog.set_level(logging.WARNING, logger="recjobs.publish")
    publish_list(pg, "recommendations", "2026-01-01", "v1", frames("v1"))
    readers = make_engine(pg.url.render_as_string(hide_password=False))
    first = _open_reader(readers)
    result: list = []
    errors: list[BaseException] = []

    def run_publish() -> None:
        try:
            result.append(publish_list(pg, "recommendations", "2026-01-02", "v2", frames("v2", 3),
                                       swap=SwapPolicy(lock_timeout_ms=200, deadline_s=120)))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    publisher = threading.Thread(target=run_publish)
    publisher.start()
    try:
        assert wait_for(lambda: _swap_waiting(readers, caplog) or errors, timeout=60), (
            "the swap never waited for the open reader")
        assert not errors, errors
        # A second reader arriving while the swap waits must get its rows, not queue behind the swap.
        counts: list[int] = []

        def read() -> None:
            with readers.connect() as conn:
                counts.append(conn.execute(sa.text("SELECT COUNT(*) FROM recommendations")).scalar_one())

        second = threading.Thread(target=read)
        second.start()
        second.join(30)
        assert not second.is_alive(), "a new reader was blocked behind the waiting view swap"
        assert counts == [USERS * TOP]
        assert publisher.is_alive()  # it cannot have swapped: the first reader still holds the view
        assert snapshot(pg) == (USERS * TOP, {"v1"})
    finally:
        first.commit()
        first.close()
        publisher.join(120)
        readers.dispose()
    assert not errors, errors
    assert result and result[0].live
    assert snapshot(pg) == (USERS * TOP, {"v2"})


def test_swap_that_never_gets_the_lock_fails_clearly_and_leaves_live_set(pg):
    publish_list(pg, "recommendations", "2026-01-01", "v1", frames("v1"))
    first = _open_reader(pg)
    try:
        with pytest.raises(SwapTimeoutError, match="publish.swap_deadline_s"):
            publish_list(pg, "recommendations", "2026-01-02", "v2", frames("v2", 3),
                         swap=SwapPolicy(lock_timeout_ms=100, deadline_s=1))
    finally:
        first.commit()
        first.close()
    assert snapshot(pg) == (USERS * TOP, {"v1"})
    assert live_version(pg).model_version == "v1"
    with pg.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM publications WHERE model_version = 'v2'")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT COUNT(*) FROM recommendations_history WHERE run_date = '2026-01-02'")
                            ).scalar_one() == 0
    # Nothing of the publish that gave up remains (its load rolled back), and the next one goes through.
    with pg.connect() as conn:  # the history's one partition is 2026-01-01's
        parts = history.partitions(conn)
    assert list(parts.values()) == ["2026-01-01"]
    assert set(sa.inspect(pg).get_table_names()) == {*TABLES, "recommendations_v0", "similar_items_v0", "item_segments_v0",
                                                     "recommendations_v1", *parts}
    assert publish_list(pg, "recommendations", "2026-01-02", "v2", frames("v2", 3)).live
    assert snapshot(pg) == (USERS * TOP, {"v2"})


class _WriteProbe(logging.Handler):
    """On each ranking progress line, try to take SQLite's write lock from another connection."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.outcomes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.getMessage().startswith("ranked "):
            return
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO items (item_id, title) VALUES ('probe', 'probe')")
            conn.execute("ROLLBACK")
            self.outcomes.append("written")
        except sqlite3.OperationalError as exc:
            self.outcomes.append(str(exc))
        finally:
            conn.close()


def test_sqlite_ranking_holds_no_write_lock_and_is_staged_to_parquet(tmp_path, small_inbox):
    from recjobs.ingest import ingest_inbox

    settings = load_settings({"home": str(tmp_path / "home"), "families": ["popularity"],
                              "publish": {"top_n": 5, "chunk_users": 16}}, environ={})
    engine = engine_for(settings)
    day = "2026-01-31"
    list(ingest_inbox(settings, engine))
    prepare(settings, day)
    train_candidate(settings, engine, day, "popularity")
    evaluate_candidate(settings, engine, day, "popularity")
    promote(settings, engine, day)
    train_final(settings, engine, day)

    probe = _WriteProbe(str(settings.home / "recjobs.db"))
    logger = logging.getLogger("recjobs.pipeline")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(probe)
    try:
        results = publish(settings, engine, day)
    finally:
        logger.removeHandler(probe)
        logger.setLevel(old_level)
    assert probe.outcomes and set(probe.outcomes) == {"written"}, probe.outcomes
    staged = pd.read_parquet(settings.runs_dir / day / "publish" / "recommendations" / "part-0000-of-0001.parquet")
    assert len(staged) == results[0].rows == 120 * 5
    with engine.connect() as conn:
        live = pd.read_sql("SELECT user_id, item_id, rank FROM recommendations ORDER BY user_id, rank", conn)
    pd.testing.assert_frame_equal(live, staged[["user_id", "item_id", "rank"]].sort_values(["user_id", "rank"])
                                  .reset_index(drop=True), check_dtype=False)
    engine.dispose()


KILLED_IN_SWAP = """
import sys
sys.path.insert(0, {root!r})
from recjobs.db import make_engine
from recjobs.publish import SwapPolicy, publish_list
from tests.test_publish import frames

publish_list(make_engine({url!r}), "recommendations", "2026-01-02", "v2", frames("v2", 3),
             swap=SwapPolicy(lock_timeout_ms=100, deadline_s=120), history_days=30)
"""


def _bookkeeping(engine: sa.Engine) -> tuple[list, list, set[str]]:
    with engine.connect() as conn:
        pubs = conn.execute(sa.text("SELECT * FROM publications ORDER BY id")).all()
        history = conn.execute(sa.text(
            "SELECT run_date, model_version, COUNT(*) FROM recommendations_history GROUP BY 1, 2 ORDER BY 1")).all()
    return pubs, history, set(sa.inspect(engine).get_table_names())


def test_publish_killed_in_the_swap_retries_leaves_publications_and_history_as_they_were(pg):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    publish_list(pg, "recommendations", "2026-01-01", "v1", frames("v1"))
    before = _bookkeeping(pg)
    reader = _open_reader(pg)  # the swap's first attempts cannot get the view's lock
    url = pg.url.render_as_string(hide_password=False)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_IN_SWAP.format(root=str(ROOT), url=url)],
                            env={**os.environ, "RECJOBS_FAULT_AT": "publish.mid_swap"},
                            stderr=subprocess.PIPE, text=True)
    try:
        # Released once the publish is retrying: its next attempt gets the lock and is killed inside it.
        line = proc.stderr.readline()
        while line and "retrying" not in line:
            line = proc.stderr.readline()
        assert "retrying" in line, "the swap never retried"
    finally:
        reader.commit()
        reader.close()
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert snapshot(pg) == (USERS * TOP, {"v1"})
    assert _bookkeeping(pg) == before  # no publications row, history row or table of v2
    # A rerun publishes normally.
    assert publish_list(pg, "recommendations", "2026-01-02", "v2", frames("v2", 3)).live
    assert snapshot(pg) == (USERS * TOP, {"v2"})
    with pg.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM recommendations_history WHERE run_date = '2026-01-02'")
                            ).scalar_one() == USERS * TOP


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_fallback_lists_go_live_with_the_recommendations_of_the_same_date(backend, tmp_path, small_inbox, request):
    # Two dates publish at once; the older one is held inside its swap. Whatever the order,
    # popular_items must be the list of the date whose recommendations are live.
    import os
    import subprocess
    import sys

    from recjobs.ingest import ingest_inbox
    from recjobs.pipeline import load_published, rank_shard

    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    home = small_inbox[0].parents[1]
    settings = load_settings({"home": str(home), "database_url": url, "families": ["popularity"],
                              "publish": {"top_n": 5}}, environ={})
    engine = engine_for(settings)
    ingest_inbox(settings, engine)
    older, newer = "2026-01-30", "2026-01-31"
    for day in (older, newer):
        prepare(settings, day)
        train_candidate(settings, engine, day, "popularity")
        evaluate_candidate(settings, engine, day, "popularity")
        promote(settings, engine, day)
        train_final(settings, engine, day)
        rank_shard(settings, day)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECJOBS_")}, "RECJOBS_HOME": str(home),
           "RECJOBS_FAMILIES": '["popularity"]', "RECJOBS_PUBLISH__TOP_N": "5",
           "RECJOBS_FAULT_AT": "publish.mid_swap=pause:4", **({"RECJOBS_DATABASE_URL": url} if url else {})}
    held = subprocess.Popen([sys.executable, "-m", "recjobs.cli", "publish", "--load", "--date", older], env=env,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in held.stderr:
        lines.append(line)
        if "pausing" in line:
            break
    assert any("publish.mid_swap" in line for line in lines), "".join(lines)
    load_published(settings, engine, newer)  # while the older date is held mid-swap
    _, err = held.communicate(timeout=120)
    assert held.returncode == 0, err[-3000:]
    with engine.connect() as conn:
        live = conn.execute(sa.text("SELECT run_date FROM publications WHERE kind = 'recommendations' "
                                    "AND is_live = :t"), {"t": True}).scalar_one()
        popular = conn.execute(sa.text("SELECT DISTINCT run_date FROM popular_items")).scalars().all()
        published = conn.execute(sa.text("SELECT run_date, status FROM model_runs WHERE stage = 'publish' "
                                         "ORDER BY run_date")).all()
    assert live == newer and popular == [newer]
    assert [tuple(r) for r in published] == [(older, "live"), (newer, "live")]
    engine.dispose()
