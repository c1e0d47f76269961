"""Publishing lists: load new versions and swap them live in one transaction.

A list is ranked into staging Parquet files first (:func:`rank_to_staging`), with no
database transaction open. Publishing them (:func:`publish_lists`) is then one
transaction: it creates a new versioned table per list (``recommendations_v<N>``),
bulk loads it (COPY on PostgreSQL, executemany on SQLite), indexes and analyzes it,
copies the recommendations into ``recommendations_history``, and finally repoints
each stable view (``recommendations``) at its new table, writes the ``publications``
rows and runs the caller's hook (the fallback lists, the ledger row). Readers see the
whole previous set or the whole new one, of every list together; a publish killed at
any point before its commit leaves nothing behind (no table, no ``publications`` or
history row).

On PostgreSQL, repointing a view needs an ACCESS EXCLUSIVE lock, and while a swap
waits for it every new reader of the view queues behind it. So each swap attempt
waits at most ``lock_timeout_ms`` and is retried from a savepoint with backoff until a
deadline (:class:`SwapPolicy`); readers are delayed by one attempt at most. The load
before it holds no lock any reader waits for.

Versions are ordered by when they went live (``publications.live_seq``), not by id
or run date: rollback returns to the version that was live before, and pruning
keeps the live version and the ones rollback would return to. A publish whose run
date is older than the live one (a backfill) is loaded and kept as history but
never made live; its table is the first to be pruned.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recjobs import columns as C
from recjobs.db.engine import write_tx
from recjobs.db.history import COLUMNS as HISTORY_COLUMNS
from recjobs.db.history import BuiltDate, attach_date, build_date
from recjobs.db.schema import (
    LIST_COLUMNS,
    LIST_KEY,
    list_indexes,
    list_table,
    publications,
    view_sql,
)
from recjobs.faults import fault_point
from recjobs.progress import Heartbeat
from recjobs.publish.copy import Frame, bulk_load
from recjobs.publish.locks import (
    SwapPolicy,
    live_row,
    lock_swaps,
    next_live_seq,
    number_legacy_versions,
    swap_attempts,
)
from recjobs.publish.retention import prune, prune_history
from recjobs.publish.staging import read_staging
from recjobs.runs import future_horizon

log = logging.getLogger(__name__)
KINDS = tuple(LIST_COLUMNS)


@dataclass(frozen=True)
class PublishResult:
    kind: str
    publication_id: int
    table_name: str
    rows: int
    live: bool
    seconds: float


# Called inside the swap transaction, after every list's swap (or history-only decision).
SwapHook = Callable[[Connection, list[PublishResult]], None]


@dataclass
class _Loaded:
    kind: str
    pub_id: int
    table: sa.Table
    rows: int


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

    See :func:`publish_lists`.
    """
    frames = read_staging(path, arrow=True)  # opened now, so a missing file fails before any transaction
    return publish_list(engine, kind, run_date, model_version, frames, keep_versions, history,
                        history_days=history_days, swap=swap, horizon=horizon)


def publish_list(
    engine: Engine,
    kind: str,
    run_date: str,
    model_version: str,
    frames: Iterable[Frame],
    keep_versions: int = 3,
    history: bool = True,
    history_days: int | None = None,
    swap: SwapPolicy | None = None,
    horizon: dt.date | None = None,
) -> PublishResult:
    """Load ``frames`` as a new version of list ``kind``, live unless it is older; see :func:`publish_lists`."""
    return publish_lists(engine, run_date, model_version, {kind: frames}, keep_versions, history,
                         history_days=history_days, swap=swap, horizon=horizon)[0]


# -- publish -------------------------------------------------------------------------
def publish_lists(
    engine: Engine,
    run_date: str,
    model_version: str,
    lists: Mapping[str, Iterable[Frame]],
    keep_versions: int = 3,
    history: bool = True,
    history_days: int | None = None,
    swap: SwapPolicy | None = None,
    horizon: dt.date | None = None,
    in_swap: SwapHook | None = None,
    history_only: bool = False,
    totals: Mapping[str, int] | None = None,
) -> list[PublishResult]:
    """Load each of ``lists`` (kind -> frames) as a new version and swap each live unless it is older, at once.

    ``frames`` yield a list's columns (without ``generated_at``, which is added), as
    pandas or Arrow. They are consumed inside the publish transaction, so they should be
    cheap to produce (read from staging files, see :func:`load_staging`), not scored on
    the fly. ``history`` copies the recommendations into ``recommendations_history``;
    ``history_days`` then prunes it to that many days behind its newest real date (None
    keeps all). Run dates after ``horizon`` (default tomorrow, UTC;
    :func:`recjobs.runs.future_horizon`) are outliers: a live outlier never keeps a real
    date from going live, and never anchors retention. ``in_swap`` runs inside the swap
    transaction with the results, e.g. to write tables that must change with the live
    lists. ``history_only`` keeps every list as history only whatever its date (the output
    guard held it: recjobs.guard). ``totals`` (kind -> rows, where known, e.g. from the
    staged files' footers) gives the load's progress lines a share done and an ETA. Raises
    :class:`SwapTimeoutError` if a view's lock is never granted; nothing of this publish
    then remains.
    """
    policy = swap or SwapPolicy()
    horizon = horizon or future_horizon(None)
    start = dt.datetime.now(dt.UTC)
    generated_at = start.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    kinds = [k for k in KINDS if k in lists]  # a fixed order: two publishes cannot deadlock

    def swap_in(conn: Connection) -> list[PublishResult]:
        for kind in kinds:
            lock_swaps(conn, kind)
        results = [_swap_one(conn, one, run_date, horizon, start, history_only) for one in loaded]
        if built is not None:
            attach_date(conn, built)
        fault_point("publish.mid_swap")  # tests: killed (or held) with the views repointed, before commit
        if in_swap is not None:
            in_swap(conn, results)
        return results

    with write_tx(engine) as conn:
        loaded = [_load(conn, kind, run_date, model_version, lists[kind], generated_at, start,
                        (totals or {}).get(kind)) for kind in kinds]
        recs = next((one for one in loaded if one.kind == "recommendations"), None)
        built = _copy_history(conn, recs, run_date) if history and recs is not None else None
        fault_point("publish.before_swap")  # tests: every list loaded, nothing swapped
        results = swap_attempts(conn, policy, "make " + ", ".join(one.table.name for one in loaded) + " live",
                                swap_in)
    for r in results:
        if not r.live:
            log.info("%s for %s kept as history only: %s", r.kind, run_date,
                     "held by the output guard" if history_only else "a newer date is live")
    if history and recs is not None and history_days is not None:
        prune_history(engine, history_days, keep_versions, horizon, policy)
    for kind in kinds:
        prune(engine, kind, keep_versions, policy)
    return results


def _stamped(frames: Iterable[Frame], generated_at: str, optional: list[str]) -> Iterator[Frame]:
    # Frames get the load's generated_at, and NULL for a nullable column they lack (a list
    # staged by an earlier release has no predicted_rating).
    for frame in frames:
        if isinstance(frame, pa.Table):
            frame = frame.append_column(C.GENERATED_AT, pa.array([generated_at] * frame.num_rows, pa.string()))
            for name in optional:
                if name not in frame.column_names:
                    frame = frame.append_column(name, pa.nulls(frame.num_rows, pa.float64()))
            yield frame
        else:
            yield frame.assign(**{C.GENERATED_AT: generated_at},
                               **{name: np.nan for name in optional if name not in frame})


def _key_bytes(frames: Iterable[Frame], key: str, longest: list[int]) -> Iterator[Frame]:
    """``frames`` unchanged; ``longest[0]`` ends as the longest ``key`` value in UTF-8 bytes (Arrow computes it)."""
    for frame in frames:
        column = frame[key] if isinstance(frame, pa.Table) else pa.array(frame[key], pa.string())
        if len(column):
            size = pc.max(pc.binary_length(column.cast(pa.string()))).as_py()
            longest[0] = max(longest[0], size or 0)
        yield frame


def _load(conn: Connection, kind: str, run_date: str, model_version: str, frames: Iterable[Frame],
          generated_at: str, start: dt.datetime, total: int | None = None) -> _Loaded:
    """A new version table of ``kind`` holding ``frames``, indexed, with its (not yet live) publications row."""
    pub_id = conn.execute(
        publications.insert()
        .values(kind=kind, run_date=run_date, table_name=f"{kind}_pending", model_version=model_version,
                row_count=0, is_live=False, dropped=False, published_at=start)
        .returning(publications.c.id)
    ).scalar_one()
    table = list_table(kind, f"{kind}_v{pub_id}")
    conn.execute(publications.update().where(publications.c.id == pub_id).values(table_name=table.name))
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table.name}")  # a table an older release left behind
    table.create(conn)
    columns = [c.name for c in LIST_COLUMNS[kind]]
    optional = [c.name for c in LIST_COLUMNS[kind] if c.nullable]
    longest = [0]  # the index depends on the longest key (see list_indexes)
    n_rows = bulk_load(conn, table.name, columns, _key_bytes(_stamped(frames, generated_at, optional), LIST_KEY[kind],
                                                             longest), total)
    # Single statements that take minutes at 69M rows: name them while they run.
    with Heartbeat(log, f"publish {table.name}") as beat:
        # The index after the load: building it once is cheaper than maintaining it per row.
        beat.phase(f"indexing {n_rows:,} rows")
        for index in list_indexes(kind, table, conn, longest[0]):
            index.create(conn)
        beat.phase("analyzing")
        conn.exec_driver_sql(f"ANALYZE {table.name}")
    conn.execute(publications.update().where(publications.c.id == pub_id).values(row_count=n_rows))
    log.info("loaded %d rows into %s", n_rows, table.name)
    return _Loaded(kind, pub_id, table, n_rows)


def _copy_history(conn: Connection, recs: _Loaded, run_date: str) -> BuiltDate:
    """The new version's rows as the date's history (live or history only), attached at the swap."""
    with Heartbeat(log, f"history of {run_date}") as beat:
        beat.phase(f"copying {recs.rows:,} rows into recommendations_history")
        cols = ", ".join(HISTORY_COLUMNS[1:])
        return build_date(conn, run_date, f"SELECT {cols} FROM {recs.table.name}", phase=beat.phase)


def _swap_one(conn: Connection, one: _Loaded, run_date: str, horizon: dt.date, start: dt.datetime,
              history_only: bool = False) -> PublishResult:
    """Repoint ``one.kind``'s view at the new table, or mark it history only; under the kind's swap lock."""
    number_legacy_versions(conn, one.kind, exclude_id=one.pub_id)
    live = live_row(conn, one.kind)
    # A backfill (an older date than the live one) is kept as history only, unless the
    # live date is an outlier: one mistyped year must not hold every later night back.
    if history_only or (live is not None and live.run_date > run_date and live.run_date <= horizon.isoformat()):
        conn.execute(publications.update().where(publications.c.id == one.pub_id).values(history_only=True))
        is_live = False
    else:
        for stmt in view_sql(conn, one.kind, one.table.name):
            conn.exec_driver_sql(stmt)
        conn.execute(publications.update().where(publications.c.kind == one.kind).values(is_live=False))
        conn.execute(publications.update().where(publications.c.id == one.pub_id).values(
            is_live=True, history_only=False, live_seq=next_live_seq(conn, one.kind),
            live_at=dt.datetime.now(dt.UTC)))
        is_live = True
    seconds = (dt.datetime.now(dt.UTC) - start).total_seconds()
    return PublishResult(one.kind, one.pub_id, one.table.name, one.rows, is_live, seconds)


__all__ = ["PublishResult", "SwapHook", "load_staging", "publish_list", "publish_lists"]
