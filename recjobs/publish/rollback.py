"""Rollback: the live list goes back to the version that was live before it.

Every rollback, whoever starts it (the CLI, a DAG, a test), is recorded in
``model_runs`` (stage ``rollback``) in the same transaction as the swap.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recjobs.db import ledger
from recjobs.db.schema import LIST_COLUMNS, publications, view_sql
from recjobs.errors import PublishError
from recjobs.publish.locks import (
    SwapPolicy,
    live_row,
    lock_swaps,
    locked_tx,
    number_legacy_versions,
)
from recjobs.publish.retention import prune
from recjobs.runs import family_of

KINDS = tuple(LIST_COLUMNS)


def _rollback_target(conn: Connection, kind: str) -> tuple[sa.Row, sa.Row]:
    """(live version, the version that was live before it); :class:`PublishError` if there is none."""
    number_legacy_versions(conn, kind)
    live = live_row(conn, kind)
    if live is None:
        raise PublishError(f"nothing published for {kind}: no version to roll back from")
    previous = conn.execute(
        sa.select(publications)
        .where(publications.c.kind == kind, publications.c.dropped.is_(False),
               publications.c.live_seq < live.live_seq)
        .order_by(publications.c.live_seq.desc())
    ).first()
    if previous is None:
        raise PublishError(f"{kind}: no earlier kept version than {live.table_name} to roll back to")
    return live, previous


def _repoint_back(conn: Connection, kind: str, live: sa.Row, previous: sa.Row) -> None:
    for stmt in view_sql(conn, kind, previous.table_name):
        conn.exec_driver_sql(stmt)
    conn.execute(publications.update().where(publications.c.kind == kind).values(is_live=False))
    conn.execute(publications.update().where(publications.c.id == previous.id).values(
        is_live=True, live_at=dt.datetime.now(dt.UTC)))
    # Retire the version rolled back from, so the next rollback goes further back rather
    # than forth. Its table is dropped after this commit (a drop here would make the swap
    # wait for every reader of the old table).
    conn.execute(publications.update().where(publications.c.id == live.id).values(dropped=True))
    ledger.record_rollback(conn, previous.run_date, family_of(previous.model_version), previous.model_version,
                           f"{kind}: rolled back from {live.table_name} to {previous.table_name}")


def rollback(engine: Engine, kind: str = "recommendations", swap: SwapPolicy | None = None) -> tuple[str, str]:
    """Repoint ``kind`` at the version that was live before the live one; returns (old table, new table)."""
    policy = swap or SwapPolicy()

    def back(conn: Connection) -> tuple[str, str]:
        lock_swaps(conn, kind)
        live, previous = _rollback_target(conn, kind)
        _repoint_back(conn, kind, live, previous)
        return live.table_name, previous.table_name

    old, new = locked_tx(engine, policy, f"roll back {kind}", back)
    prune(engine, kind, keep_versions=None, swap=policy)  # drops the retired table only
    return old, new


def rollback_lists(engine: Engine, swap: SwapPolicy | None = None,
                   expect_version: str | None = None) -> dict[str, tuple[str, str] | str]:
    """Roll back the last publish: recommendations, and similar_items and item_segments only
    if that publish made them live.

    The views move in one transaction. Returns, per list, (old table, new table) or why
    it did not move. Raises :class:`PublishError` if recommendations cannot be rolled back,
    or if ``expect_version`` (what the operator saw as the rollback target) is not the
    recommendations' rollback target any more; nothing moves then.
    """
    policy = swap or SwapPolicy()

    def back(conn: Connection) -> dict[str, tuple[str, str] | str]:
        for kind in KINDS:  # always the same order, so two rollbacks cannot deadlock
            lock_swaps(conn, kind)
        recs_live, recs_previous = _rollback_target(conn, "recommendations")
        if expect_version is not None and recs_previous.model_version != expect_version:
            # Checked under the swap locks: a publish or rollback since the operator looked is seen.
            raise PublishError(
                f"version {expect_version!r} is not the rollback target: a rollback now makes "
                f"{recs_previous.model_version} ({recs_previous.run_date}) live again, from the live "
                f"{recs_live.model_version}; leave version empty to roll back to it")
        moves: dict[str, tuple[str, str] | str] = {}
        for kind in KINDS:
            if kind == "recommendations":
                continue
            other = live_row(conn, kind)
            # A champion without item vectors (popularity) publishes no similar_items, and
            # segments are off by default: the live ones then come from an earlier publish,
            # which is not being rolled back.
            if other is None or (other.run_date, other.model_version) != (
                    recs_live.run_date, recs_live.model_version):
                moves[kind] = "not moved: the last publish did not publish it"
                continue
            try:
                live, previous = _rollback_target(conn, kind)
            except PublishError as exc:
                moves[kind] = f"not moved: {exc}"
            else:
                _repoint_back(conn, kind, live, previous)
                moves[kind] = (live.table_name, previous.table_name)
        _repoint_back(conn, "recommendations", recs_live, recs_previous)
        return {"recommendations": (recs_live.table_name, recs_previous.table_name), **moves}

    moves = locked_tx(engine, policy, "roll back the last publish", back)
    for kind in KINDS:
        prune(engine, kind, keep_versions=None, swap=policy)  # drops retired tables only
    return moves


__all__ = ["rollback", "rollback_lists"]
