"""The ratings lake and its side tables: the one module that writes under ``<home>/lake``.

Layout (``Lake``)::

    lake/ratings/dt=YYYY-MM-DD/part-0.parquet   ratings, Hive-partitioned by event date (UTC)
    lake/features/<kind>.parquet                 side tables: item_features, user_features, items
    lake/quarantine/<content hash>.parquet       the bad rows of one delivered file
    lake/.spill/<random>/                        one ingest's validated rows before the merge
    lake/.inbox_hashes.json                      the inbox watcher's hash cache
    lake/.lock                                   the writers' lock

Shared files (partitions and side tables) are written only through :meth:`Lake.writer`,
which holds ``lake/.lock`` for the whole read-modify-write: a partition merge reads,
merges and rewrites a file, so two unserialised writers would lose each other's rows.
The lock is an OS file lock: it holds between processes on one host (and on a shared
filesystem only where that filesystem implements locks), and the OS releases it when
its holder dies, even by SIGKILL. Private files (a spill folder, a content's
quarantine file) are named uniquely and need no lock. Readers never need the lock:
every file is replaced atomically (:mod:`recjobs.files`).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import filelock
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recjobs import columns as C
from recjobs.data.interactions import Events
from recjobs.errors import LakeLockTimeout
from recjobs.faults import fault_point
from recjobs.files import write_parquet

if TYPE_CHECKING:
    from recjobs.settings import Settings

RATINGS_SCHEMA = pa.schema(
    [
        pa.field(C.USER, pa.string(), nullable=False),
        pa.field(C.ITEM, pa.string(), nullable=False),
        pa.field(C.RATING, pa.float32(), nullable=False),
        pa.field(C.TIMESTAMP, pa.timestamp("ms", tz="UTC"), nullable=False),
        # Typed events only (view, purchase, ...; null: a rating). Dictionary-encoded: a
        # partition stores each type's name once and a small integer per row. A partition
        # without any typed row is written without the column, exactly as before it existed.
        pa.field(C.EVENT_TYPE, pa.dictionary(pa.int16(), pa.string()), nullable=True),
    ]
)
LAKE_COLUMNS = (*C.INTERACTION_COLUMNS, C.EVENT_TYPE)
PART_FILE = "part-0.parquet"
_PARTITIONING = ds.partitioning(pa.schema([(C.DATE, pa.string())]), flavor="hive")
# Side tables, by kind: the id column each is keyed on.
SIDE_KINDS = {"item_features": C.ITEM, "user_features": C.USER, "items": C.ITEM}
DAY_MS = 86_400_000


def to_ratings_table(frame: pd.DataFrame) -> pa.Table:
    """Cast a frame with the canonical columns (``event_type`` optional) to the lake's exact schema."""
    if C.EVENT_TYPE not in frame.columns:
        frame = frame.assign(**{C.EVENT_TYPE: None})
    others = [c for c in LAKE_COLUMNS if c != C.RATING]
    table = pa.Table.from_pandas(frame[others], schema=pa.schema([RATINGS_SCHEMA.field(c) for c in others]),
                                 preserve_index=False)
    # NaN, not null: a typed event without a rating (pandas would make NaN a null).
    rating = pa.array(frame[C.RATING].to_numpy(dtype=np.float32), pa.float32(), from_pandas=False)
    return table.add_column(RATINGS_SCHEMA.get_field_index(C.RATING), RATINGS_SCHEMA.field(C.RATING), rating)


def conform(table: pa.Table) -> pa.Table:
    """``table``'s lake columns in the lake's schema; a table without ``event_type`` gets it, all null."""
    if C.EVENT_TYPE not in table.column_names:
        table = table.append_column(C.EVENT_TYPE, pa.nulls(table.num_rows, RATINGS_SCHEMA.field(C.EVENT_TYPE).type))
    return table.select(list(LAKE_COLUMNS)).cast(RATINGS_SCHEMA)


def _stored(table: pa.Table) -> pa.Table:
    """What a partition file holds: without ``event_type`` when no row is typed (rating-only lakes keep
    their files byte for byte), with its dictionary unified otherwise."""
    column = table.column(C.EVENT_TYPE)
    if column.null_count == table.num_rows:
        return table.drop_columns([C.EVENT_TYPE]).combine_chunks()
    # Encoded afresh in row order: the same rows always give the same dictionary (and file).
    encoded = pc.dictionary_encode(column.cast(pa.string()).combine_chunks())
    index = table.schema.get_field_index(C.EVENT_TYPE)
    return table.set_column(index, RATINGS_SCHEMA.field(C.EVENT_TYPE), encoded.cast(
        RATINGS_SCHEMA.field(C.EVENT_TYPE).type)).combine_chunks()


def day_names(days: np.ndarray) -> list[str]:
    """``YYYY-MM-DD`` partition names of days since 1970 (UTC)."""
    ms = pd.Series(np.asarray(days, dtype=np.int64) * DAY_MS).astype("datetime64[ms]")
    return ms.dt.tz_localize("UTC").dt.strftime("%Y-%m-%d").tolist()


@dataclass(frozen=True)
class Lake:
    """Where the lake is, and the only way to write to it; see the module docstring."""

    root: Path
    lock_timeout: float = 3600.0

    @classmethod
    def of(cls, settings: Settings) -> Lake:
        """The lake of ``settings`` (``<home>/lake``; lock timeout ``ingest.lock_timeout_seconds``)."""
        return cls(settings.lake, settings.ingest.lock_timeout_seconds)

    @property
    def ratings(self) -> Path:
        return self.root / "ratings"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def inbox_cache(self) -> Path:
        """The inbox watcher's cache of content hashes (a cache: safe to delete)."""
        return self.root / ".inbox_hashes.json"

    def side_path(self, kind: str) -> Path:
        """The side table of ``kind`` (one of :data:`SIDE_KINDS`)."""
        if kind not in SIDE_KINDS:
            raise ValueError(f"unknown side table {kind!r}; known: {sorted(SIDE_KINDS)}")
        return self.features / f"{kind}.parquet"

    def quarantine_path(self, content_hash: str) -> Path:
        """Where the bad rows of the content with this hash go."""
        return self.quarantine / f"{content_hash[:16]}.parquet"

    def journal_path(self, content_hash: str) -> Path:
        """The merge journal of the content with this hash: one line per partition merged."""
        return self.root / ".journal" / f"{content_hash[:32]}.jsonl"

    def read_journal(self, content_hash: str) -> dict[str, MergeResult]:
        """Partitions an earlier, interrupted merge of this content completed, with their results.

        A merge killed part-way leaves its journal; the rerun takes these partitions' counts
        from it (their rows are in the lake already, so merging them again would count them
        as duplicates) and merges only the rest, so the report equals an uninterrupted run's.
        An entry is written just before its partition file is replaced and names the file it
        replaces: it counts only if that file is gone (the write happened) or the merge
        changed nothing, so a kill between the two leaves the partition to be merged again.
        """
        path = self.journal_path(content_hash)
        done: dict[str, MergeResult] = {}
        if not path.exists():
            return done
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                day = str(entry["day"])
                result = MergeResult(int(entry["added"]), int(entry["duplicates"]), int(entry["new_unique"]))
                replaced = entry["replaces"]
            except (ValueError, KeyError, TypeError):
                break  # a line cut short by the kill: the partitions after it are merged again
            if entry.get("unchanged") or _file_token(self.ratings / f"{C.DATE}={day}" / PART_FILE) != replaced:
                done[day] = result
        return done

    # -- writing ---------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator[LakeWriter]:
        """Hold the writers' lock (``lake/.lock``) for the ``with`` block and yield the writer.

        Raises :class:`~recjobs.errors.LakeLockTimeout` when another writer held it for
        longer than ``lock_timeout`` seconds.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        lock = filelock.FileLock(path)
        try:
            lock.acquire(timeout=self.lock_timeout)
        except filelock.Timeout:
            raise LakeLockTimeout(
                f"{path}: another writer held the lake's lock for more than {self.lock_timeout:g}s "
                "(ingest.lock_timeout_seconds); is a stuck `recjobs ingest` still running?"
            ) from None
        try:
            yield LakeWriter(self)
        finally:
            lock.release()

    @contextmanager
    def spill_folder(self) -> Iterator[Path]:
        """A private temporary folder in ``lake/.spill``, removed afterwards (or by a later
        call, if this process is killed)."""
        root = self.root / ".spill"
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_spills(root)
        name = uuid.uuid4().hex
        # The lock comes first, so a concurrent cleaner never sees the folder unlocked.
        lock = filelock.FileLock(root / f"{name}.lock")
        lock.acquire()
        folder = root / name
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            lock.release()
            (root / f"{name}.lock").unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------
    def read_events(self, cutoff: dt.datetime, start: dt.datetime | None = None) -> Events | None:
        """Ratings with ``start <= timestamp < cutoff`` (UTC), coded; None if there are none."""
        return read_events(self.ratings, cutoff, start)

    def read_ratings(self, cutoff: dt.datetime, start: dt.datetime | None = None) -> pd.DataFrame:
        """Ratings with ``start <= timestamp < cutoff`` (UTC) as a frame, ids as strings."""
        return read_ratings(self.ratings, cutoff, start)

    def read_side(self, kind: str) -> pd.DataFrame | None:
        """The side table of ``kind`` as a frame (ids as ``str``), or None when none was ingested."""
        path = self.side_path(kind)
        if not path.exists():
            return None
        frame = pq.read_table(path).to_pandas()
        for col in (C.USER, C.ITEM):
            if col in frame.columns:
                frame[col] = frame[col].astype(object)
        return frame


def _remove_stale_spills(root: Path) -> None:
    """Delete spill folders whose writer died (their lock is free): SIGKILL leaves them."""
    for lock_path in root.glob("*.lock"):
        lock = filelock.FileLock(lock_path)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            continue  # a live ingest's spill
        try:
            shutil.rmtree(root / lock_path.stem, ignore_errors=True)
        finally:
            lock.release()
            lock_path.unlink(missing_ok=True)


class LakeWriter:
    """The lake's writes, available only while :meth:`Lake.writer` holds the lock."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake

    def merge_ratings(self, day: str, rows: pa.Table | pd.DataFrame, journal: str | None = None) -> MergeResult:
        """Merge ``rows`` into partition ``dt=day`` (see :func:`_merge_partition`).

        With ``journal`` (a content hash), the merge is noted in that content's journal
        before the partition is replaced (see :meth:`Lake.read_journal`); safe from threads.
        """
        path = self.lake.ratings / f"{C.DATE}={day}" / PART_FILE

        def note(result: MergeResult, changed: bool) -> None:
            if journal is not None:
                self._journal(journal, day, result, replaces=_file_token(path), unchanged=not changed)

        return _merge_partition(self.lake.ratings, day, rows, note)

    def write_side(self, kind: str, table: pa.Table) -> Path:
        """Replace the side table of ``kind`` with ``table``, atomically."""
        return write_parquet(table, self.lake.side_path(kind))

    def _journal(self, content_hash: str, day: str, result: MergeResult, replaces: list[int] | None,
                 unchanged: bool) -> None:
        """Append partition ``day``'s merge to the content's journal (before the file is replaced).

        One ``write`` of one line in append mode, so lines from parallel merges never mix;
        flushed, not fsynced: it must survive the process being killed, which the page cache
        does; after a power loss a partition may be counted again.
        """
        path = self.lake.journal_path(content_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"day": day, "added": result.added, "duplicates": result.duplicates,
                           "new_unique": result.new_unique, "replaces": replaces, "unchanged": unchanged})
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def end_journal(self, content_hash: str) -> None:
        """The content's merge is recorded for good (its ingest_log row written): drop its journal."""
        self.lake.journal_path(content_hash).unlink(missing_ok=True)


SEQ = "_seq"
"""Column of :func:`merge_partition`'s input ordering rows of one file: the highest wins."""
_TYPE_KEY = "_event_type_key"


@dataclass(frozen=True)
class MergeResult:
    """What one partition merge did."""

    added: int  # rows the partition gained
    duplicates: int  # input rows dropped: repeated in the input or already in the partition
    new_unique: int  # distinct (user, item, timestamp) keys among the input rows


def _file_token(path: Path) -> list[int] | None:
    """Which file is at ``path`` (inode, size, modification time), None if none: an atomic
    replace always gives another token."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _merge_partition(root: Path, day: str, new_rows: pa.Table | pd.DataFrame,
                     before_write: Callable[[MergeResult, bool], None] | None = None) -> MergeResult:
    """Merge ``new_rows`` into partition ``dt=day``.

    Rows are de-duplicated on (user, item, timestamp), the newest file winning (and,
    within ``new_rows``, the row with the highest :data:`SEQ`, or the last one without
    that column), and sorted, so merging the same rows again leaves the partition
    byte-for-byte as it was. Arrow throughout: no per-row Python objects.
    A read-modify-write of the partition file: only :class:`LakeWriter` calls it, under the lock.
    """
    if isinstance(new_rows, pd.DataFrame):
        new_rows = to_ratings_table(new_rows)
    n_new = new_rows.num_rows
    seq = (new_rows.column(SEQ).combine_chunks().cast(pa.int64()) if SEQ in new_rows.column_names
           else pa.array(np.arange(n_new, dtype=np.int64)))
    new_rows = conform(new_rows)
    path = root / f"{C.DATE}={day}" / PART_FILE
    old_table = pq.read_table(path) if path.exists() else None
    n_old = 0 if old_table is None else old_table.num_rows
    if old_table is not None:
        # The partition's rows rank below every new row: the newest file wins.
        combined = pa.concat_tables([conform(old_table), new_rows])
        seq = pa.concat_arrays([pa.array(np.full(n_old, -1, dtype=np.int64)), seq])
    else:
        combined = new_rows
    # A view and a purchase of one item in the same millisecond are two events: the type is
    # part of the key (as text: Arrow sorts no dictionary column; null, a rating, as "").
    type_key = pc.fill_null(combined.column(C.EVENT_TYPE).cast(pa.string()), "")
    keyed = combined.append_column(_TYPE_KEY, type_key).append_column(SEQ, seq)
    keys = [C.USER, C.ITEM, C.TIMESTAMP, _TYPE_KEY]
    order = pc.sort_indices(keyed, sort_keys=[(k, "ascending") for k in (*keys, SEQ)])
    keyed = keyed.take(order)
    combined = combined.take(order)
    seq_sorted = seq.take(order).to_numpy()
    # Within a run of equal keys the last row has the highest rank: keep it.
    keep = np.ones(combined.num_rows, dtype=bool)
    if combined.num_rows > 1:
        same = np.ones(combined.num_rows - 1, dtype=bool)
        for k in keys:
            col = keyed.column(k).combine_chunks()
            same &= np.asarray(pc.equal(col.slice(0, len(col) - 1), col.slice(1)), dtype=bool)
        keep[:-1] = ~same
    merged = _stored(combined.filter(pa.array(keep)))
    new_unique = int(np.count_nonzero(keep & (seq_sorted >= 0)))
    result = MergeResult(added=merged.num_rows - n_old, duplicates=n_old + n_new - merged.num_rows,
                         new_unique=new_unique)
    if old_table is not None and old_table.equals(merged):
        if before_write is not None:
            before_write(result, False)
        return result
    if before_write is not None:
        before_write(result, True)
    fault_point("lake.merge.before_write")
    write_parquet(merged, path)
    return result


def _window_scan(root: Path, cutoff: dt.datetime, start: dt.datetime | None,
                 coded_ids: bool = False) -> tuple[ds.Dataset, ds.Expression] | None:
    """The lake's dataset and the filter of rows with ``start <= timestamp < cutoff``; None if
    the lake is empty.

    ``coded_ids``: the id columns come dictionary-encoded, as Parquet stores them (a small
    integer per row and each file's distinct ids once), not as a string per row: at 200M rows
    the strings alone were gigabytes of the split's peak. A file's dictionary may also hold
    ids of rows the filter drops.
    """
    if not root.exists() or not any(root.glob(f"{C.DATE}=*/{PART_FILE}")):
        return None
    # The lake's schema, not the first file's: partitions without typed rows lack event_type (null here).
    schema = RATINGS_SCHEMA.append(pa.field(C.DATE, pa.string()))
    file_format: str | ds.ParquetFileFormat = "parquet"
    if coded_ids:
        for col in (C.USER, C.ITEM):
            schema = schema.set(schema.get_field_index(col),
                                pa.field(col, pa.dictionary(pa.int32(), pa.string()), nullable=False))
        file_format = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=[C.USER, C.ITEM]))
    dataset = ds.dataset(root, format=file_format, partitioning=_PARTITIONING, schema=schema)
    last_day = (cutoff - dt.timedelta(microseconds=1)).date().isoformat()
    ts = pa.scalar(cutoff, type=pa.timestamp("ms", tz="UTC"))
    expr = (ds.field(C.DATE) <= last_day) & (ds.field(C.TIMESTAMP) < ts)
    if start is not None:
        expr &= (ds.field(C.DATE) >= start.date().isoformat()) & (
            ds.field(C.TIMESTAMP) >= pa.scalar(start, type=pa.timestamp("ms", tz="UTC"))
        )
    return dataset, expr


def _window_table(root: Path, cutoff: dt.datetime, start: dt.datetime | None) -> pa.Table | None:
    """The lake's rows with ``start <= timestamp < cutoff`` as Arrow; None if the lake is empty."""
    scan = _window_scan(root, cutoff, start)
    return None if scan is None else scan[0].to_table(columns=list(LAKE_COLUMNS), filter=scan[1])


def read_ratings(root: Path, cutoff: dt.datetime, start: dt.datetime | None = None) -> pd.DataFrame:
    """All interactions with ``start <= timestamp < cutoff`` (UTC), ids as strings; ``event_type`` too
    when any row has one."""
    table = _window_table(root, cutoff, start)
    if table is None:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _EMPTY_DTYPES.items()})
    frame = table.to_pandas()
    for col in (C.USER, C.ITEM):
        frame[col] = frame[col].astype(object)
    if table.column(C.EVENT_TYPE).null_count == table.num_rows:
        return frame.drop(columns=[C.EVENT_TYPE])  # ratings only: the four columns, as ever
    frame[C.EVENT_TYPE] = frame[C.EVENT_TYPE].astype(object).where(frame[C.EVENT_TYPE].notna(), None)
    return frame


def read_events(root: Path, cutoff: dt.datetime, start: dt.datetime | None = None) -> Events | None:
    """The same rows as :func:`read_ratings`, coded (no Python object per row); None if none.

    Read a record batch at a time (in the lake's order, as :func:`read_ratings` has them) with
    the ids dictionary-encoded, so the window is never held as Arrow strings.
    """
    scan = _window_scan(root, cutoff, start, coded_ids=True)
    if scan is None:
        return None
    dataset, expr = scan
    # The files' row counts (their footers; partitions outside the window pruned) bound the rows,
    # so each column is allocated once at that size.
    most = sum(fragment.metadata.num_rows for fragment in dataset.get_fragments(filter=expr))
    events = Events.from_batches(dataset.to_batches(columns=list(LAKE_COLUMNS), filter=expr), most)
    release_memory()
    return events if len(events) else None


def release_memory() -> None:
    """Hand freed memory back to the OS: Arrow's allocator and glibc's malloc keep freed pages
    for reuse (after thousands of per-batch arrays, hundreds of MB), and what follows a read is
    numpy's, so they would only raise the stage's peak, which is what sizes its task."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


_EMPTY_DTYPES = {
    C.USER: object,
    C.ITEM: object,
    C.RATING: "float32",
    C.TIMESTAMP: "datetime64[ms, UTC]",
}
