"""Retention: which published versions and history rows are kept, and dropping the rest.

Versions are ordered by when they went live (``publications.live_seq``), not by id
or run date: pruning keeps the live version and the ones rollback would return to,
then the newest others, up to ``publish.keep_versions``. ``recommendations_history``
keeps ``publish.history_days`` days behind its newest real date (an outlier date in the
future anchors nothing), and always the newest ``keep_versions`` dates.
"""

from __future__ import annotations

import datetime as dt
import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recjobs.db import history
from recjobs.db.schema import publications
from recjobs.errors import SwapTimeoutError
from recjobs.publish.locks import SwapPolicy, lock_swaps, locked_tx
from recjobs.runs import future_horizon

log = logging.getLogger(__name__)


def prune_history(engine: Engine, history_days: int, keep_dates: int = 1, horizon: dt.date | None = None,
                  swap: SwapPolicy | None = None) -> int:
    """Remove ``recommendations_history`` rows older than ``history_days`` before its newest real date.

    The newest real date is the newest one not after ``horizon`` (default: tomorrow,
    UTC; see :func:`recjobs.runs.future_horizon`), so one outlier date (a mistyped year)
    makes no real date look old. The newest ``keep_dates`` dates are never deleted,
    whatever the clock says. Returns the number of rows deleted. On PostgreSQL dropping a
    date's partition waits for the history's readers: at most one lock timeout of
    ``swap``, then the next prune does it.
    """
    horizon = horizon or future_horizon(None)
    policy = SwapPolicy(swap.lock_timeout_ms if swap else SwapPolicy.lock_timeout_ms, deadline_s=0.0)

    def drop(conn: Connection) -> tuple[int, str, dt.date | None]:
        dates = history.dates(conn)
        real = [d for d in dates if _as_date(d) is not None and _as_date(d) <= horizon]
        if not real:  # every date is an outlier (or the clock is wrong): measure from the newest
            real = dates
        anchor = _as_date(real[0]) if real else None
        if anchor is None:
            return 0, "", None
        cutoff = (anchor - dt.timedelta(days=history_days)).isoformat()
        # Never below the newest keep_dates dates: an outlier can displace at most its own count.
        if keep_dates > 0 and len(dates) >= keep_dates:
            cutoff = min(cutoff, dates[keep_dates - 1])
        return history.drop_before(conn, cutoff), cutoff, anchor

    try:
        deleted, cutoff, anchor = locked_tx(engine, policy, "prune recommendations_history", drop)
    except SwapTimeoutError:
        log.info("recommendations_history is in use by a reader; the next publish prunes it")
        return 0
    if deleted:
        # A warning: data is gone for good, and a setting decided it (the demo's old dates go on the first publish).
        log.warning("retention deleted %d recommendations_history rows of dates before %s: publish.history_days=%d "
                    "(RECJOBS_PUBLISH__HISTORY_DAYS; null keeps all) behind the newest date %s",
                    deleted, cutoff, history_days, anchor)
    return deleted


def _as_date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:  # a run date is text: one that is not a date anchors nothing
        return None


def _doomed(rows: list[sa.Row], keep_versions: int) -> list[sa.Row]:
    """The versions to drop: all but the first ``keep_versions`` in order of worth.

    Worth: the live version, then the versions rollback would return to (latest live
    first), then the rest (history-only backfills, and versions an older release left
    loaded but never swapped), newest first. A version is only ever seen here once its
    publish has committed, live or history only (see :mod:`recjobs.publish.versions`).
    """
    active = [r for r in rows if not r.dropped]
    live = [r for r in active if r.is_live]
    live_seq = live[0].live_seq if live and live[0].live_seq is not None else None
    chain = sorted(
        (r for r in active if not r.is_live and r.live_seq is not None and (live_seq is None or r.live_seq < live_seq)),
        key=lambda r: r.live_seq, reverse=True,
    )
    ranked = {r.id for r in [*live, *chain]}
    rest = sorted((r for r in active if r.id not in ranked), key=lambda r: r.id, reverse=True)
    keep = {r.id for r in [*live, *chain, *rest][:keep_versions]} | {r.id for r in live}
    return [r for r in active if r.id not in keep]


def prune(engine: Engine, kind: str, keep_versions: int | None, swap: SwapPolicy | None = None) -> list[str]:
    """Drop the versions of ``kind`` beyond the ``keep_versions`` worth keeping (never the live one).

    Tables of retired versions (rolled back from) still present are dropped too;
    ``keep_versions=None`` drops only those. Each drop waits at most one lock timeout:
    a table still in use by a reader is left for the next prune.
    """
    policy = SwapPolicy(swap.lock_timeout_ms if swap else SwapPolicy.lock_timeout_ms, deadline_s=0.0)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(publications).where(publications.c.kind == kind).order_by(publications.c.id.desc())
        ).all()
        conn.rollback()
    existing = set(sa.inspect(engine).get_table_names())
    leftovers = [r for r in rows if r.dropped and r.table_name in existing]
    doomed = [] if keep_versions is None else _doomed(rows, keep_versions)
    dropped = []
    for row in [*doomed, *leftovers]:
        if _drop_version(engine, kind, row.id, row.table_name, policy):
            dropped.append(row.table_name)
    old = [r for r in doomed if r.table_name in dropped]
    if old:
        # A warning: rollback can no longer return to these versions.
        log.warning("retention dropped %d earlier %s version(s) (%s): publish.keep_versions=%d "
                    "(RECJOBS_PUBLISH__KEEP_VERSIONS) are kept", len(old), kind,
                    ", ".join(f"{r.model_version} of {r.run_date}" for r in old), keep_versions)
    return dropped


def _drop_version(engine: Engine, kind: str, pub_id: int, table_name: str, policy: SwapPolicy) -> bool:
    """Drop one version's table in its own short transaction; False if it is live or busy now."""

    def drop(conn: Connection) -> bool:
        lock_swaps(conn, kind)
        # Re-checked under the swap lock: a rollback may have made it live since prune looked.
        if conn.execute(sa.select(publications.c.is_live).where(publications.c.id == pub_id)).scalar_one():
            return False
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table_name}")
        conn.execute(publications.update().where(publications.c.id == pub_id).values(dropped=True))
        return True

    try:
        return locked_tx(engine, policy, f"drop {table_name}", drop)
    except SwapTimeoutError:
        log.info("%s is in use by a reader; the next prune drops it", table_name)
        return False


__all__ = ["prune", "prune_history"]
