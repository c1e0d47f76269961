"""The ratings lake: Hive-partitioned Parquet by event date, written atomically.

Writers (ingest of ratings and side files) serialise on one file lock,
``<lake>/.lock`` (:func:`lake_lock`): a partition merge reads, merges and rewrites
a file, so two unserialised writers would lose each other's rows. The lock is an
OS file lock: it holds between processes on one host (and on a shared filesystem
only where that filesystem implements locks), and the OS releases it when its
holder dies, even by SIGKILL. Readers need no lock: every file is replaced atomically.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import filelock
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recjobs import columns as C
from recjobs.faults import fault_point
from recjobs.interactions import Events

RATINGS_SCHEMA = pa.schema(
    [
        pa.field(C.USER, pa.string(), nullable=False),
        pa.field(C.ITEM, pa.string(), nullable=False),
        pa.field(C.RATING, pa.float32(), nullable=False),
        pa.field(C.TIMESTAMP, pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)
PART_FILE = "part-0.parquet"
_PARTITIONING = ds.partitioning(pa.schema([(C.DATE, pa.string())]), flavor="hive")


class LakeLockTimeout(RuntimeError):
    """Another process held the lake's lock for longer than the configured timeout."""


@contextmanager
def lake_lock(lake: Path, timeout: float) -> Iterator[None]:
    """Hold the lake's writer lock (``<lake>/.lock``) for the ``with`` block."""
    lake.mkdir(parents=True, exist_ok=True)
    path = lake / ".lock"
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        raise LakeLockTimeout(
            f"{path}: another ingest held the lake's lock for more than {timeout:g}s "
            "(ingest.lock_timeout_seconds); is a stuck `recjobs ingest` still running?"
        ) from None
    try:
        yield
    finally:
        lock.release()


def atomic_write_parquet(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def to_ratings_table(frame: pd.DataFrame) -> pa.Table:
    """Cast a frame with the canonical columns to the lake's exact schema."""
    return pa.Table.from_pandas(
        frame[list(C.INTERACTION_COLUMNS)], schema=RATINGS_SCHEMA, preserve_index=False
    )


SEQ = "_seq"
"""Column of :func:`merge_partition`'s input ordering rows of one file: the highest wins."""


@dataclass(frozen=True)
class MergeResult:
    """What one partition merge did."""

    added: int  # rows the partition gained
    duplicates: int  # input rows dropped: repeated in the input or already in the partition
    new_unique: int  # distinct (user, item, timestamp) keys among the input rows


def merge_partition(root: Path, day: str, new_rows: pa.Table | pd.DataFrame) -> MergeResult:
    """Merge ``new_rows`` into partition ``dt=day``.

    Rows are de-duplicated on (user, item, timestamp), the newest file winning (and,
    within ``new_rows``, the row with the highest :data:`SEQ`, or the last one without
    that column), and sorted, so merging the same rows again leaves the partition
    byte-for-byte as it was. Arrow throughout: no per-row Python objects.
    Callers hold :func:`lake_lock`: this is a read-modify-write of the partition file.
    """
    if isinstance(new_rows, pd.DataFrame):
        new_rows = to_ratings_table(new_rows)
    n_new = new_rows.num_rows
    seq = (new_rows.column(SEQ).combine_chunks().cast(pa.int64()) if SEQ in new_rows.column_names
           else pa.array(np.arange(n_new, dtype=np.int64)))
    new_rows = new_rows.select(list(C.INTERACTION_COLUMNS)).cast(RATINGS_SCHEMA)
    path = root / f"{C.DATE}={day}" / PART_FILE
    old_table = pq.read_table(path) if path.exists() else None
    n_old = 0 if old_table is None else old_table.num_rows
    if old_table is not None:
        # The partition's rows rank below every new row: the newest file wins.
        combined = pa.concat_tables([old_table.cast(RATINGS_SCHEMA), new_rows])
        seq = pa.concat_arrays([pa.array(np.full(n_old, -1, dtype=np.int64)), seq])
    else:
        combined = new_rows
    keys = [C.USER, C.ITEM, C.TIMESTAMP]
    order = pc.sort_indices(
        combined.append_column(SEQ, seq),
        sort_keys=[(k, "ascending") for k in (*keys, SEQ)],
    )
    combined = combined.take(order)
    seq_sorted = seq.take(order).to_numpy()
    # Within a run of equal keys the last row has the highest rank: keep it.
    keep = np.ones(combined.num_rows, dtype=bool)
    if combined.num_rows > 1:
        same = np.ones(combined.num_rows - 1, dtype=bool)
        for k in keys:
            col = combined.column(k).combine_chunks()
            same &= np.asarray(pc.equal(col.slice(0, len(col) - 1), col.slice(1)), dtype=bool)
        keep[:-1] = ~same
    merged = combined.filter(pa.array(keep)).combine_chunks()
    new_unique = int(np.count_nonzero(keep & (seq_sorted >= 0)))
    result = MergeResult(added=merged.num_rows - n_old, duplicates=n_old + n_new - merged.num_rows,
                         new_unique=new_unique)
    if old_table is not None and old_table.equals(merged):
        return result
    fault_point("lake.merge.before_write")
    atomic_write_parquet(merged, path)
    return result


def _window_table(root: Path, cutoff: dt.datetime, start: dt.datetime | None) -> pa.Table | None:
    """The lake's rows with ``start <= timestamp < cutoff`` as Arrow; None if the lake is empty."""
    if not root.exists() or not any(root.glob(f"{C.DATE}=*/{PART_FILE}")):
        return None
    dataset = ds.dataset(root, format="parquet", partitioning=_PARTITIONING)
    last_day = (cutoff - dt.timedelta(microseconds=1)).date().isoformat()
    ts = pa.scalar(cutoff, type=pa.timestamp("ms", tz="UTC"))
    expr = (ds.field(C.DATE) <= last_day) & (ds.field(C.TIMESTAMP) < ts)
    if start is not None:
        expr &= (ds.field(C.DATE) >= start.date().isoformat()) & (
            ds.field(C.TIMESTAMP) >= pa.scalar(start, type=pa.timestamp("ms", tz="UTC"))
        )
    return dataset.to_table(columns=list(C.INTERACTION_COLUMNS), filter=expr)


def read_ratings(root: Path, cutoff: dt.datetime, start: dt.datetime | None = None) -> pd.DataFrame:
    """All interactions with ``start <= timestamp < cutoff`` (UTC), ids as strings."""
    table = _window_table(root, cutoff, start)
    if table is None:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _EMPTY_DTYPES.items()})
    frame = table.to_pandas()
    for col in (C.USER, C.ITEM):
        frame[col] = frame[col].astype(object)
    return frame


def read_events(root: Path, cutoff: dt.datetime, start: dt.datetime | None = None) -> Events | None:
    """The same rows as :func:`read_ratings`, coded (no Python object per row); None if none."""
    table = _window_table(root, cutoff, start)
    if table is None or table.num_rows == 0:
        return None
    events = Events.from_arrow(table)
    del table
    # Arrow's allocator keeps freed pages for reuse; hand them back, since what follows
    # is numpy's, and the split stage's peak memory is what sizes its task.
    pa.default_memory_pool().release_unused()
    return events


_EMPTY_DTYPES = {
    C.USER: object,
    C.ITEM: object,
    C.RATING: "float32",
    C.TIMESTAMP: "datetime64[ms, UTC]",
}
