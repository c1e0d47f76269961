"""Publishing never blocks readers: bounded lock waits on PostgreSQL, no write lock while ranking on SQLite."""

from __future__ import annotations

import logging
import sqlite3
import threading

import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs.db import ensure_schema, make_engine
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
        loaded = conn.execute(sa.text(
            "SELECT table_name, row_count, is_live FROM publications WHERE model_version = 'v2'")).one()
    # The new version stays loaded (not live), and the next publish goes through.
    assert loaded.row_count == USERS * TOP and not loaded.is_live
    assert loaded.table_name in sa.inspect(pg).get_table_names()
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
