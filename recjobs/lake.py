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
from pathlib import Path

import filelock
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recjobs import columns as C
from recjobs.faults import fault_point

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


def merge_partition(root: Path, day: str, new_rows: pd.DataFrame) -> tuple[int, int]:
    """Merge ``new_rows`` into partition ``dt=day``; returns (rows added, rows already there).

    Rows are de-duplicated on (user, item, timestamp), the newest file winning, and
    sorted, so merging the same rows again leaves the partition byte-for-byte as it was.
    Callers hold :func:`lake_lock`: this is a read-modify-write of the partition file.
    """
    path = root / f"{C.DATE}={day}" / PART_FILE
    keys = [C.USER, C.ITEM, C.TIMESTAMP]
    old_table = pq.read_table(path) if path.exists() else None
    if old_table is not None:
        old = old_table.to_pandas()
        merged = pd.concat([old, new_rows[list(C.INTERACTION_COLUMNS)]], ignore_index=True)
    else:
        old = None
        merged = new_rows[list(C.INTERACTION_COLUMNS)]
    before = len(merged)
    merged = merged.drop_duplicates(keys, keep="last")
    merged = merged.sort_values(keys, kind="stable").reset_index(drop=True)
    table = to_ratings_table(merged)
    if old_table is not None and old_table.equals(table):
        return 0, len(new_rows)
    fault_point("lake.merge.before_write")
    atomic_write_parquet(table, path)
    n_old = 0 if old is None else len(old)
    return len(merged) - n_old, before - len(merged)


def read_ratings(root: Path, cutoff: dt.datetime, start: dt.datetime | None = None) -> pd.DataFrame:
    """All interactions with ``start <= timestamp < cutoff`` (UTC), ids as strings."""
    if not root.exists() or not any(root.glob(f"{C.DATE}=*/{PART_FILE}")):
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _EMPTY_DTYPES.items()})
    dataset = ds.dataset(root, format="parquet", partitioning=_PARTITIONING)
    last_day = (cutoff - dt.timedelta(microseconds=1)).date().isoformat()
    ts = pa.scalar(cutoff, type=pa.timestamp("ms", tz="UTC"))
    expr = (ds.field(C.DATE) <= last_day) & (ds.field(C.TIMESTAMP) < ts)
    if start is not None:
        expr &= (ds.field(C.DATE) >= start.date().isoformat()) & (
            ds.field(C.TIMESTAMP) >= pa.scalar(start, type=pa.timestamp("ms", tz="UTC"))
        )
    table = dataset.to_table(columns=list(C.INTERACTION_COLUMNS), filter=expr)
    frame = table.to_pandas()
    for col in (C.USER, C.ITEM):
        frame[col] = frame[col].astype(object)
    return frame


_EMPTY_DTYPES = {
    C.USER: object,
    C.ITEM: object,
    C.RATING: "float32",
    C.TIMESTAMP: "datetime64[ms, UTC]",
}
