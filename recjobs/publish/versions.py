"""Publishing a list: load a new version, then swap it live (no partial reads, no blocked readers).

A list is ranked into a staging Parquet file first (:func:`rank_to_staging`), with
no database transaction open, then loaded (:func:`load_staging`): one transaction
creates a new versioned table (``recommendations_v<N>``), bulk loads it (COPY on
PostgreSQL, executemany on SQLite), indexes and analyzes it. A second, short
transaction repoints the stable view (``recommendations``) at it. Readers therefore
see the whole previous set or the whole new one.

On PostgreSQL, repointing a view needs an ACCESS EXCLUSIVE lock, and while a swap
waits for it every new reader of the view queues behind it. So each swap attempt
waits at most ``lock_timeout_ms`` and is retried with backoff until a deadline
(:class:`SwapPolicy`); readers are delayed by one attempt at most.

Versions are ordered by when they went live (``publications.live_seq``), not by id
or run date: rollback returns to the version that was live before, and pruning
keeps the live version and the ones rollback would return to. A publish whose run
date is older than the live one (a backfill) is loaded and kept as history but
never made live; its table is the first to be pruned.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recjobs import columns as C
from recjobs.db.engine import write_tx
from recjobs.db.schema import (
    LIST_COLUMNS,
    list_index,
    list_table,
    publications,
    recommendations_history,
    view_sql,
)
from recjobs.errors import PublishError
from recjobs.progress import Heartbeat
from recjobs.publish.copy import bulk_load
from recjobs.publish.locks import (
    SwapPolicy,
    live_row,
    lock_swaps,
    locked_tx,
    next_live_seq,
    number_legacy_versions,
)
from recjobs.publish.retention import prune, prune_history
from recjobs.publish.staging import read_staging
from recjobs.runs import future_horizon

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    kind: str
    publication_id: int
    table_name: str
    rows: int
    live: bool
    seconds: float


def load_staging(
    engine: Engine,
    kind: str,
    path: Path | Sequence[Path],
    run_date: str,
    model_version: str,
    keep_versions: int = 3,
    history: bool = True,
    history_days: int | None = None,
    swap: SwapPolicy | None = None,
    horizon: dt.date | None = None,
) -> PublishResult:
    """Publish the list staged at ``path`` (or its shards, in order) by :func:`rank_to_staging`.

    See :func:`publish_list`.
    """
    frames = read_staging(path)  # opened now, so a missing file fails before any transaction
    return publish_list(engine, kind, run_date, model_version, frames, keep_versions, history,
                        history_days=history_days, swap=swap, horizon=horizon)


# -- publish -------------------------------------------------------------------------
def publish_list(
    engine: Engine,
    kind: str,
    run_date: str,
    model_version: str,
    frames: Iterable[pd.DataFrame],
    keep_versions: int = 3,
    history: bool = True,
    history_days: int | None = None,
    swap: SwapPolicy | None = None,
    horizon: dt.date | None = None,
) -> PublishResult:
    """Load ``frames`` as a new version of list ``kind`` and make it live if it is not older.

    ``frames`` yield the list's columns (without ``generated_at``, which is added). They
    are consumed inside the load transaction, so they should be cheap to produce (read
    from a staging file, see :func:`load_staging`), not scored on the fly.
    ``history_days`` prunes ``recommendations_history`` to that many days behind its
    newest real date (None keeps all). Run dates after ``horizon`` (default tomorrow, UTC;
    :func:`recjobs.runs.future_horizon`) are outliers: a live outlier never keeps a real
    date from going live, and never anchors retention. Raises :class:`SwapTimeoutError` if the view's lock
    is never granted; the loaded version then stays, not live, until pruned.
    """
    policy = swap or SwapPolicy()
    horizon = horizon or future_horizon(None)
    start = dt.datetime.now(dt.UTC)
    generated_at = start.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    columns = [c.name for c in LIST_COLUMNS[kind]]

    def stamped() -> Iterable[pd.DataFrame]:
        for frame in frames:
            yield frame.assign(**{C.GENERATED_AT: generated_at})

    with write_tx(engine) as conn:
        pub_id = conn.execute(
            publications.insert()
            .values(
                kind=kind,
                run_date=run_date,
                table_name=f"{kind}_pending",
                model_version=model_version,
                row_count=0,
                is_live=False,
                dropped=False,
                published_at=start,
            )
            .returning(publications.c.id)
        ).scalar_one()
        table = list_table(kind, f"{kind}_v{pub_id}")
        conn.execute(publications.update().where(publications.c.id == pub_id).values(table_name=table.name))
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table.name}")
        table.create(conn)
        n_rows = bulk_load(conn, table.name, columns, stamped())
        # Single statements that take minutes at 69M rows: name them while they run.
        with Heartbeat(log, f"publish {table.name}") as beat:
            # The index after the load: building it once is cheaper than maintaining it per row.
            beat.phase(f"indexing {n_rows:,} rows")
            list_index(kind, table).create(conn)
            beat.phase("analyzing")
            conn.exec_driver_sql(f"ANALYZE {table.name}")
            conn.execute(publications.update().where(publications.c.id == pub_id).values(row_count=n_rows))
            if history and kind == "recommendations":
                beat.phase(f"copying {n_rows:,} rows into recommendations_history")
                conn.execute(recommendations_history.delete().where(recommendations_history.c.run_date == run_date))
                cols = ", ".join([C.USER, C.ITEM, C.RANK, C.SCORE, C.MODEL_VERSION])
                conn.execute(
                    sa.text(f"INSERT INTO recommendations_history ({C.RUN_DATE}, {cols}) "
                            f"SELECT CAST(:run_date AS VARCHAR(10)), {cols} FROM {table.name}"),
                    {"run_date": run_date},
                )
    log.info("loaded %d rows into %s", n_rows, table.name)

    def swap_in(conn: Connection) -> sa.Row | None:
        lock_swaps(conn, kind)
        if conn.execute(sa.select(publications.c.dropped).where(publications.c.id == pub_id)).scalar_one():
            raise PublishError(f"{table.name} was pruned by a concurrent publish before its swap; rerun")
        number_legacy_versions(conn, kind, exclude_id=pub_id)
        live = live_row(conn, kind)
        # A backfill (an older date than the live one) is kept as history only, unless the
        # live date is an outlier: one mistyped year must not hold every later night back.
        if live is not None and live.run_date > run_date and live.run_date <= horizon.isoformat():
            conn.execute(publications.update().where(publications.c.id == pub_id).values(history_only=True))
            return live
        for stmt in view_sql(conn, kind, table.name):
            conn.exec_driver_sql(stmt)
        conn.execute(publications.update().where(publications.c.kind == kind).values(is_live=False))
        conn.execute(publications.update().where(publications.c.id == pub_id).values(
            is_live=True, history_only=False, live_seq=next_live_seq(conn, kind), live_at=dt.datetime.now(dt.UTC)))
        return None

    newer = locked_tx(engine, policy, f"make {table.name} live as {kind}", swap_in)
    if newer is not None:
        log.info("%s for %s kept as history only: live set is from %s", kind, run_date, newer.run_date)
    if history and kind == "recommendations" and history_days is not None:
        prune_history(engine, history_days, keep_versions, horizon)
    prune(engine, kind, keep_versions, policy)
    seconds = (dt.datetime.now(dt.UTC) - start).total_seconds()
    return PublishResult(kind, pub_id, table.name, n_rows, newer is None, seconds)


__all__ = ["PublishResult", "load_staging", "publish_list"]
