"""Swaps under bounded locks: the machinery every change of a live list goes through.

On PostgreSQL, repointing a view needs an ACCESS EXCLUSIVE lock, and while a swap
waits for it every new reader of the view queues behind it. So each swap attempt
waits at most ``lock_timeout_ms`` and is retried with backoff until a deadline
(:class:`SwapPolicy`); readers are delayed by one attempt at most. Swaps of one list
are serialised (an advisory lock on PostgreSQL, SQLite's single write lock), so a
check and the swap it decides act as one step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recjobs.db.engine import is_sqlite, write_tx
from recjobs.db.schema import publications
from recjobs.errors import SwapTimeoutError

if TYPE_CHECKING:
    from recjobs.settings import PublishSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
# PostgreSQL's SQLSTATE for "lock not available", raised when lock_timeout expires.
LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class SwapPolicy:
    """How long one swap attempt may wait for a lock, and how long to keep retrying."""

    lock_timeout_ms: int = 500
    deadline_s: float = 300.0

    @classmethod
    def of(cls, settings: PublishSettings) -> SwapPolicy:
        """The policy of the ``publish`` settings section."""
        return cls(settings.swap_lock_timeout_ms, settings.swap_deadline_s)


def _is_lock_timeout(exc: sa.exc.DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE


def locked_tx(engine: Engine, policy: SwapPolicy, what: str, body: Callable[[Connection], T]) -> T:
    """Run ``body`` in a write transaction whose lock waits are bounded, retrying until the deadline.

    PostgreSQL: every lock wait in the transaction (the advisory swap lock, the view's
    ACCESS EXCLUSIVE lock) gives up after ``policy.lock_timeout_ms``, so readers that
    queue behind a waiting swap wait no longer than that. SQLite readers never wait for
    a writer (WAL), so one attempt under the busy timeout is all it needs.
    """
    if is_sqlite(engine):
        with write_tx(engine) as conn:
            return body(conn)

    def attempt() -> T:
        with write_tx(engine) as conn:
            # SET LOCAL: the timeout ends with this transaction, not with the pooled connection.
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(policy.lock_timeout_ms)}")
            return body(conn)

    return _retrying(policy, what, attempt)


def swap_attempts(conn: Connection, policy: SwapPolicy, what: str, body: Callable[[Connection], T]) -> T:
    """Run ``body`` inside the caller's write transaction, its lock waits bounded, retried until the deadline.

    The transaction's earlier work (a load of minutes) is kept across attempts: on
    PostgreSQL each attempt runs in a savepoint, and a lock wait past
    ``policy.lock_timeout_ms`` rolls back to it and tries again with backoff. SQLite
    readers never wait for a writer (WAL), and the write lock is held since BEGIN: one
    attempt is all it needs.
    """
    if is_sqlite(conn):
        return body(conn)
    # SET LOCAL: the timeout ends with this transaction, not with the pooled connection.
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(policy.lock_timeout_ms)}")

    def attempt() -> T:
        with conn.begin_nested():
            return body(conn)

    return _retrying(policy, what, attempt)


def _retrying(policy: SwapPolicy, what: str, attempt: Callable[[], T]) -> T:
    """Call ``attempt`` until it ends without a lock timeout, backing off, until the policy's deadline."""
    deadline = time.monotonic() + policy.deadline_s
    delay, tries = 0.1, 1
    while True:
        try:
            return attempt()
        except sa.exc.DBAPIError as exc:
            if not _is_lock_timeout(exc):
                raise
            wait = _retry_wait(policy, what, deadline, delay, tries, exc)
        time.sleep(wait)
        delay, tries = min(delay * 2, 5.0), tries + 1


def _retry_wait(policy: SwapPolicy, what: str, deadline: float, delay: float, attempt: int,
                exc: sa.exc.DBAPIError) -> float:
    """How long to wait before the next attempt; :class:`SwapTimeoutError` once the deadline has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise SwapTimeoutError(
            f"{what}: lock not granted within {policy.lock_timeout_ms} ms in {attempt} attempt(s) "
            f"over {policy.deadline_s:g}s; open reader transactions (or another publish) kept it "
            "busy (settings publish.swap_lock_timeout_ms, publish.swap_deadline_s)"
        ) from exc
    wait = min(delay, left)
    log.warning("%s: lock not granted within %d ms (attempt %d); retrying in %.1fs",
                what, policy.lock_timeout_ms, attempt, wait)
    return wait


def lock_swaps(conn: Connection, kind: str) -> None:
    """Serialise swaps of one list, so the newer-date check and the swap act as one step."""
    # SQLite: BEGIN IMMEDIATE already holds the database's single write lock.
    if not is_sqlite(conn):
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"recjobs:{kind}"})


def live_row(conn: Connection, kind: str) -> sa.Row | None:
    return conn.execute(
        sa.select(publications).where(publications.c.kind == kind, publications.c.is_live.is_(True))
    ).first()


def number_legacy_versions(conn: Connection, kind: str, exclude_id: int | None = None) -> None:
    """Give ``live_seq`` to versions published before it existed, so rollback keeps working.

    Earlier releases made every publish live whose date was not older than the live
    one's, so replaying that rule in id order recovers which versions went live, in order.
    """
    live = live_row(conn, kind)
    if live is None or live.live_seq is not None:
        return
    rows = conn.execute(
        sa.select(publications.c.id, publications.c.run_date)
        .where(publications.c.kind == kind, publications.c.dropped.is_(False),
               publications.c.is_live.is_(False), publications.c.id != (exclude_id or -1))
        .order_by(publications.c.id)
    ).all()
    seq, newest = 0, ""
    for row in rows:
        if row.run_date >= newest:
            seq, newest = seq + 1, row.run_date
            conn.execute(publications.update().where(publications.c.id == row.id).values(live_seq=seq))
    conn.execute(publications.update().where(publications.c.id == live.id).values(live_seq=seq + 1))


def next_live_seq(conn: Connection, kind: str) -> int:
    top = conn.execute(sa.select(sa.func.max(publications.c.live_seq)).where(publications.c.kind == kind)).scalar()
    return (top or 0) + 1


def live_version(engine: Engine, kind: str = "recommendations") -> sa.Row | None:
    """The live publication row of ``kind``, or None."""
    with engine.connect() as conn:
        return live_row(conn, kind)


__all__ = ["LOCK_NOT_AVAILABLE", "SwapPolicy", "live_row", "live_version", "lock_swaps", "locked_tx",
           "next_live_seq", "number_legacy_versions", "swap_attempts"]
