"""Publish ranked lists to SQL with no partial reads and no blocked readers.

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

import contextlib
import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recjobs import columns as C
from recjobs.db import LIST_COLUMNS, list_index, list_table, publications, recommendations_history
from recjobs.faults import fault_point
from recjobs.heartbeat import Heartbeat

if TYPE_CHECKING:
    from recjobs.settings import PublishSettings

log = logging.getLogger(__name__)
KINDS = tuple(LIST_COLUMNS)
T = TypeVar("T")

# A version loaded but not yet through its swap is protected from pruning this long; a
# swap gives up long before (swap_deadline_s), so an older one was abandoned.
PENDING_GRACE = dt.timedelta(days=1)
# PostgreSQL's SQLSTATE for "lock not available", raised when lock_timeout expires.
LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class PublishResult:
    kind: str
    publication_id: int
    table_name: str
    rows: int
    live: bool
    seconds: float


@dataclass(frozen=True)
class SwapPolicy:
    """How long one swap attempt may wait for a lock, and how long to keep retrying."""

    lock_timeout_ms: int = 500
    deadline_s: float = 300.0

    @classmethod
    def of(cls, settings: PublishSettings) -> SwapPolicy:
        """The policy of the ``publish`` settings section."""
        return cls(settings.swap_lock_timeout_ms, settings.swap_deadline_s)


class SwapTimeoutError(RuntimeError):
    """A view swap (or table drop) never got its lock before the deadline."""


def _is_sqlite(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "sqlite"


def _view_sql(conn: Connection, kind: str, table_name: str) -> list[str]:
    cols = ", ".join(c.name for c in LIST_COLUMNS[kind])
    select = f"SELECT {cols} FROM {table_name}"
    if _is_sqlite(conn):
        return [f"DROP VIEW IF EXISTS {kind}", f"CREATE VIEW {kind} AS {select}"]
    return [f"CREATE OR REPLACE VIEW {kind} AS {select}"]


def ensure_live_views(engine: Engine) -> None:
    """Give each list an empty version 0 and its view, so apps' queries work from day one."""
    existing = set(sa.inspect(engine).get_view_names())
    for kind in KINDS:
        if kind in existing:
            continue
        with _write_tx(engine) as conn:
            table = list_table(kind, f"{kind}_v0")
            if not sa.inspect(conn).has_table(table.name):
                table.create(conn)
                list_index(kind, table).create(conn)
            for stmt in _view_sql(conn, kind, table.name):
                conn.exec_driver_sql(stmt)


def _write_tx(engine: Engine):  # noqa: ANN202 - a context manager of Connection
    # SQLite: take the write lock at BEGIN so the swap cannot fail half-way on a busy lock.
    return engine.execution_options(sqlite_immediate=True).begin()


def _is_lock_timeout(exc: sa.exc.DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE


def _locked_tx(engine: Engine, policy: SwapPolicy, what: str, body: Callable[[Connection], T]) -> T:
    """Run ``body`` in a write transaction whose lock waits are bounded, retrying until the deadline.

    PostgreSQL: every lock wait in the transaction (the advisory swap lock, the view's
    ACCESS EXCLUSIVE lock) gives up after ``policy.lock_timeout_ms``, so readers that
    queue behind a waiting swap wait no longer than that. SQLite readers never wait for
    a writer (WAL), so one attempt under the busy timeout is all it needs.
    """
    if _is_sqlite(engine):
        with _write_tx(engine) as conn:
            return body(conn)
    deadline = time.monotonic() + policy.deadline_s
    delay, attempt = 0.1, 1
    while True:
        try:
            with _write_tx(engine) as conn:
                # SET LOCAL: the timeout ends with this transaction, not with the pooled connection.
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(policy.lock_timeout_ms)}")
                return body(conn)
        except sa.exc.DBAPIError as exc:
            if not _is_lock_timeout(exc):
                raise
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
            time.sleep(wait)
            delay, attempt = min(delay * 2, 5.0), attempt + 1


# -- bulk load -----------------------------------------------------------------------
# PostgreSQL binary COPY: the signature, flags (0) and header-extension length (0); the
# trailer is a field count of -1. See "COPY ... Binary Format" in the PostgreSQL manual.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
# timestamptz travels as microseconds since 2000-01-01 UTC.
_PG_EPOCH_US = 946_684_800_000_000
# The wire form of each PostgreSQL type we load (pg_type.typname): a big-endian numpy
# dtype, or None for text sent as its UTF-8 bytes.
_PG_BINARY: dict[str, str | None] = {
    "varchar": None, "text": None, "bool": "?", "int2": ">i2", "int4": ">i4", "int8": ">i8",
    "float4": ">f4", "float8": ">f8", "timestamptz": ">i8", "timestamp": ">i8",
}
# A frame to load: pandas (as publish_list stamps it) or Arrow (no conversion at all).
Frame = pd.DataFrame | pa.Table
LOAD_PROGRESS_S = 10.0
_ARROW_FIXED = {"bool": pa.bool_(), "int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64(),
                "float4": pa.float32(), "float8": pa.float64()}


def _pg_types(conn: Connection, table_name: str, columns: list[str]) -> list[str]:
    """The PostgreSQL type name (pg_type.typname) of each of ``columns`` of ``table_name``."""
    rows = conn.execute(sa.text(
        "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"), {"t": table_name}).all()
    types = dict(rows)
    unsupported = [f"{c} ({types.get(c)})" for c in columns if types.get(c) not in _PG_BINARY]
    if unsupported:
        raise TypeError(f"bulk load into {table_name}: no binary COPY encoding for {', '.join(unsupported)}")
    return [types[c] for c in columns]


def _timestamp_us(column: pa.Array) -> pa.Array:
    """Microseconds since 1970 UTC of a timestamp or ISO 8601 text column; no zone means UTC."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            column = column.cast(pa.timestamp("us", tz="UTC"))
        except pa.ArrowInvalid:  # text without an offset: UTC by convention
            column = column.cast(pa.timestamp("us"))
    elif not pa.types.is_timestamp(column.type):
        raise TypeError(f"cannot load a {column.type} column as a timestamp")
    # Unsafe only to truncate nanoseconds: PostgreSQL keeps microseconds.
    return column.cast(pa.timestamp("us", tz=column.type.tz), safe=False).cast(pa.int64())


def _fixed_values(column: pa.Array, pg_type: str) -> np.ndarray:
    """``column`` as the numpy values of ``pg_type`` (nulls as 0; their bytes are never sent)."""
    if pg_type in ("timestamptz", "timestamp"):
        values = pc.subtract(_timestamp_us(column), _PG_EPOCH_US)
    else:
        values = column.cast(_ARROW_FIXED[pg_type])  # a safe cast: overflow raises, never wraps
    return values.fill_null(pa.scalar(0).cast(values.type)).to_numpy(zero_copy_only=False)


def _binary_array(data: np.ndarray, offsets: np.ndarray, n: int) -> pa.Array:
    return pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _binary_copy_rows(table: pa.Table, pg_types: list[str]) -> pa.Buffer:
    """The rows of ``table`` in PostgreSQL's binary COPY format (no signature or trailer).

    A row is a field count, then per field its byte length (-1: NULL) and its bytes.
    Runs of fixed-width fields are packed per row with one numpy structured array; text
    values stay in Arrow; Arrow's ``binary_join_element_wise`` then lays each row's parts
    side by side in C++. Nothing loops over rows in Python.
    """
    n = table.num_rows
    parts: list[pa.Array] = []
    packed: list[tuple[str, np.ndarray | int]] = [(">i2", len(pg_types))]

    def flush() -> None:
        if not packed:
            return
        record = np.empty(n, np.dtype([(f"f{i}", kind) for i, (kind, _) in enumerate(packed)]))
        for i, (_, values) in enumerate(packed):
            record[f"f{i}"] = values
        width = record.dtype.itemsize
        parts.append(_binary_array(record.view(np.uint8), np.arange(0, (n + 1) * width, width, dtype=np.int64), n))
        packed.clear()

    for column, pg_type in zip(table.columns, pg_types, strict=True):
        column = column.combine_chunks()
        kind = _PG_BINARY[pg_type]
        if kind is None:
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                    or pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
                column = column.cast(pa.large_string())  # e.g. integer ids: their decimal text
            data = column.cast(pa.large_binary())  # the text's UTF-8 bytes
            packed.append((">i4", pc.binary_length(data).fill_null(-1).to_numpy(zero_copy_only=False)))
            flush()
            parts.append(data.fill_null(b""))  # NULL sends no bytes; '' sends length 0
            continue
        values, width = _fixed_values(column, pg_type), np.dtype(kind).itemsize
        if column.null_count == 0:
            packed += [(">i4", width), (kind, values)]
            continue
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        packed.append((">i4", np.where(valid, width, -1)))
        flush()
        sizes = np.where(valid, width, 0)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        parts.append(_binary_array(values[valid].astype(kind).view(np.uint8), offsets, n))
    flush()
    rows = pc.binary_join_element_wise(*parts, pa.scalar(b"", pa.large_binary()))
    # No nulls and fresh offsets: the values buffer between the first and last offset is
    # exactly the rows, back to back.
    offsets = np.frombuffer(rows.buffers()[1], np.int64, n + 1, rows.offset * 8)
    return rows.buffers()[2][int(offsets[0]):int(offsets[-1])]


@contextlib.contextmanager
def _sqlite_writer(conn: Connection, table_name: str, columns: list[str]) -> Iterator[Callable[[Frame], int]]:
    marks = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO {table_name} ({', '.join(columns)}) VALUES ({marks})"
    cursor = conn.connection.dbapi_connection.cursor()

    def write(frame: Frame) -> int:
        # Zipped column lists build rows ~6x faster than DataFrame.itertuples.
        lists = [frame[c].to_pylist() if isinstance(frame, pa.Table) else frame[c].tolist() for c in columns]
        cursor.executemany(sql, zip(*lists, strict=True))
        return len(frame)

    try:
        yield write
    finally:
        cursor.close()


@contextlib.contextmanager
def _postgres_writer(conn: Connection, table_name: str, columns: list[str]) -> Iterator[Callable[[Frame], int]]:
    pg_types = _pg_types(conn, table_name, columns)
    # Binary COPY text is read in the client encoding, and Arrow's is UTF-8 (SET LOCAL:
    # until this transaction ends, whatever the database's own encoding).
    conn.exec_driver_sql("SET LOCAL client_encoding = 'UTF8'")
    with conn.connection.dbapi_connection.cursor() as cur:
        with cur.copy(f"COPY {table_name} ({', '.join(columns)}) FROM STDIN (FORMAT binary)") as copy:
            copy.write(_COPY_SIGNATURE)

            def write(frame: Frame) -> int:
                table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame[columns], preserve_index=False)
                copy.write(_binary_copy_rows(table.select(columns), pg_types))
                return table.num_rows

            yield write
            copy.write(_COPY_TRAILER)


def _bulk_load(conn: Connection, table_name: str, columns: list[str], frames: Iterable[Frame],
               total: int | None = None) -> int:
    """Append ``frames`` (pandas or Arrow) to ``table_name`` in ``conn``'s transaction; returns the row count.

    PostgreSQL: binary COPY built from Arrow (:func:`_binary_copy_rows`) on the publish
    transaction's own connection, so a publish killed mid-load leaves nothing behind
    (measured as fast as ADBC's ``adbc_ingest``, which would need a connection and a
    transaction of its own). Binary rather than CSV: the server parses no text, and
    floats and timestamps travel bit-exact. SQLite: executemany in the same transaction.
    Logs rows, rows/s and, given ``total`` rows, an ETA at least every 10 s.
    """
    writer = _sqlite_writer if _is_sqlite(conn) else _postgres_writer
    started = time.monotonic()
    next_report, rows = started + LOAD_PROGRESS_S, 0
    with writer(conn, table_name, columns) as write:
        for frame in frames:
            rows += write(frame)
            fault_point("publish.mid_load")  # tests: a publish killed with its load half sent
            now = time.monotonic()
            if now >= next_report:
                rate = rows / (now - started)
                eta = f", ETA {(total - rows) / rate:.0f}s" if total else ""
                log.info("loading %s: %d%s rows (%.0f rows/s%s)", table_name, rows,
                         f"/{total}" if total else "", rate, eta)
                next_report = now + LOAD_PROGRESS_S
    return rows


def _lock_swaps(conn: Connection, kind: str) -> None:
    """Serialise swaps of one list, so the newer-date check and the swap act as one step."""
    # SQLite: BEGIN IMMEDIATE already holds the database's single write lock.
    if not _is_sqlite(conn):
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"recjobs:{kind}"})


def _live(conn: Connection, kind: str) -> sa.Row | None:
    return conn.execute(
        sa.select(publications).where(publications.c.kind == kind, publications.c.is_live.is_(True))
    ).first()


def _number_legacy_versions(conn: Connection, kind: str, exclude_id: int | None = None) -> None:
    """Give ``live_seq`` to versions published before it existed, so rollback keeps working.

    Earlier releases made every publish live whose date was not older than the live
    one's, so replaying that rule in id order recovers which versions went live, in order.
    """
    live = _live(conn, kind)
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


def _next_live_seq(conn: Connection, kind: str) -> int:
    top = conn.execute(sa.select(sa.func.max(publications.c.live_seq)).where(publications.c.kind == kind)).scalar()
    return (top or 0) + 1


# -- staging -------------------------------------------------------------------------
def _staging_schema(kind: str) -> pa.Schema:
    key, target = (c.name for c in LIST_COLUMNS[kind][:2])
    return pa.schema([
        pa.field(key, pa.string(), nullable=False),
        pa.field(target, pa.string(), nullable=False),
        pa.field(C.RANK, pa.int32(), nullable=False),
        pa.field(C.SCORE, pa.float64(), nullable=False),
        pa.field(C.MODEL_VERSION, pa.string(), nullable=False),
    ])


def rank_to_staging(frames: Iterable[pd.DataFrame], kind: str, path: Path) -> Path:
    """Write the ranked ``frames`` of list ``kind`` to the Parquet file ``path``, atomically.

    This is where scoring happens (``frames`` is usually a lazy ranking generator), so
    it runs with no database connection open: ranking never holds a write lock. The
    file appears whole or not at all (temporary file, fsync, rename).
    """
    schema = _staging_schema(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for frame in frames:
                writer.write_table(pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_staging(paths: Path | Sequence[Path], batch_rows: int = 200_000) -> Iterator[pd.DataFrame]:
    """The staged list at ``paths`` (one file, or a list's shards in order) in frames of ``batch_rows`` rows.

    Every file is opened before the first frame is produced, so a missing or unreadable
    shard fails before any transaction starts.
    """
    files = []
    for path in [paths] if isinstance(paths, Path) else list(paths):
        try:
            files.append(pq.ParquetFile(path))
        except (OSError, pa.ArrowInvalid) as exc:
            raise FileNotFoundError(f"cannot read staged list {path}: {exc}") from exc
    return (batch.to_pandas() for source in files for batch in source.iter_batches(batch_size=batch_rows))


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
) -> PublishResult:
    """Publish the list staged at ``path`` (or its shards, in order) by :func:`rank_to_staging`.

    See :func:`publish_list`.
    """
    frames = read_staging(path)  # opened now, so a missing file fails before any transaction
    return publish_list(engine, kind, run_date, model_version, frames, keep_versions, history,
                        history_days=history_days, swap=swap)


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
) -> PublishResult:
    """Load ``frames`` as a new version of list ``kind`` and make it live if it is not older.

    ``frames`` yield the list's columns (without ``generated_at``, which is added). They
    are consumed inside the load transaction, so they should be cheap to produce (read
    from a staging file, see :func:`load_staging`), not scored on the fly.
    ``history_days`` prunes ``recommendations_history`` to that many days behind its
    newest date (None keeps all). Raises :class:`SwapTimeoutError` if the view's lock
    is never granted; the loaded version then stays, not live, until pruned.
    """
    policy = swap or SwapPolicy()
    start = dt.datetime.now(dt.UTC)
    generated_at = start.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    columns = [c.name for c in LIST_COLUMNS[kind]]

    def stamped() -> Iterable[pd.DataFrame]:
        for frame in frames:
            yield frame.assign(**{C.GENERATED_AT: generated_at})

    with _write_tx(engine) as conn:
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
        n_rows = _bulk_load(conn, table.name, columns, stamped())
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
        _lock_swaps(conn, kind)
        if conn.execute(sa.select(publications.c.dropped).where(publications.c.id == pub_id)).scalar_one():
            raise RuntimeError(f"{table.name} was pruned by a concurrent publish before its swap; rerun")
        _number_legacy_versions(conn, kind, exclude_id=pub_id)
        live = _live(conn, kind)
        if live is not None and live.run_date > run_date:
            conn.execute(publications.update().where(publications.c.id == pub_id).values(history_only=True))
            return live
        for stmt in _view_sql(conn, kind, table.name):
            conn.exec_driver_sql(stmt)
        conn.execute(publications.update().where(publications.c.kind == kind).values(is_live=False))
        conn.execute(publications.update().where(publications.c.id == pub_id).values(
            is_live=True, history_only=False, live_seq=_next_live_seq(conn, kind), live_at=dt.datetime.now(dt.UTC)))
        return None

    newer = _locked_tx(engine, policy, f"make {table.name} live as {kind}", swap_in)
    if newer is not None:
        log.info("%s for %s kept as history only: live set is from %s", kind, run_date, newer.run_date)
    if history and kind == "recommendations" and history_days is not None:
        prune_history(engine, history_days)
    prune(engine, kind, keep_versions, policy)
    seconds = (dt.datetime.now(dt.UTC) - start).total_seconds()
    return PublishResult(kind, pub_id, table.name, n_rows, newer is None, seconds)


def prune_history(engine: Engine, history_days: int) -> int:
    """Delete ``recommendations_history`` rows older than the newest run date minus ``history_days``."""
    with _write_tx(engine) as conn:  # SQLite: write lock up front, not a read lock upgraded later
        newest = conn.execute(sa.select(sa.func.max(recommendations_history.c.run_date))).scalar()
        if newest is None:
            return 0
        cutoff = (dt.date.fromisoformat(newest) - dt.timedelta(days=history_days)).isoformat()
        deleted = conn.execute(
            recommendations_history.delete().where(recommendations_history.c.run_date < cutoff)
        ).rowcount
    if deleted:
        log.info("deleted %d recommendations_history rows before %s (publish.history_days=%d)",
                 deleted, cutoff, history_days)
    return deleted


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _doomed(rows: list[sa.Row], keep_versions: int) -> list[sa.Row]:
    """The versions to drop: all but the first ``keep_versions`` in order of worth.

    Worth: the live version, then the versions rollback would return to (latest live
    first), then the rest (history-only backfills), newest first. A version still
    waiting for its swap is never dropped (unless abandoned).
    """
    active = [r for r in rows if not r.dropped]
    live = [r for r in active if r.is_live]
    live_seq = live[0].live_seq if live and live[0].live_seq is not None else None
    chain = sorted(
        (r for r in active if not r.is_live and r.live_seq is not None and (live_seq is None or r.live_seq < live_seq)),
        key=lambda r: r.live_seq, reverse=True,
    )
    fresh = dt.datetime.now(dt.UTC) - PENDING_GRACE
    pending = [r for r in active if not r.is_live and r.live_seq is None and not r.history_only
               and _aware(r.published_at) > fresh]
    ranked = {r.id for r in [*live, *chain, *pending]}
    rest = sorted((r for r in active if r.id not in ranked), key=lambda r: r.id, reverse=True)
    keep = {r.id for r in [*live, *chain, *rest][:keep_versions]} | {r.id for r in [*live, *pending]}
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
    return dropped


def _drop_version(engine: Engine, kind: str, pub_id: int, table_name: str, policy: SwapPolicy) -> bool:
    """Drop one version's table in its own short transaction; False if it is live or busy now."""

    def drop(conn: Connection) -> bool:
        _lock_swaps(conn, kind)
        # Re-checked under the swap lock: a rollback may have made it live since prune looked.
        if conn.execute(sa.select(publications.c.is_live).where(publications.c.id == pub_id)).scalar_one():
            return False
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table_name}")
        conn.execute(publications.update().where(publications.c.id == pub_id).values(dropped=True))
        return True

    try:
        return _locked_tx(engine, policy, f"drop {table_name}", drop)
    except SwapTimeoutError:
        log.info("%s is in use by a reader; the next prune drops it", table_name)
        return False


# -- rollback ------------------------------------------------------------------------
def _rollback_target(conn: Connection, kind: str) -> tuple[sa.Row, sa.Row]:
    """(live version, the version that was live before it); RuntimeError if there is none."""
    _number_legacy_versions(conn, kind)
    live = _live(conn, kind)
    if live is None:
        raise RuntimeError(f"nothing published for {kind}: no version to roll back from")
    previous = conn.execute(
        sa.select(publications)
        .where(publications.c.kind == kind, publications.c.dropped.is_(False),
               publications.c.live_seq < live.live_seq)
        .order_by(publications.c.live_seq.desc())
    ).first()
    if previous is None:
        raise RuntimeError(f"{kind}: no earlier kept version than {live.table_name} to roll back to")
    return live, previous


def _repoint_back(conn: Connection, kind: str, live: sa.Row, previous: sa.Row) -> None:
    for stmt in _view_sql(conn, kind, previous.table_name):
        conn.exec_driver_sql(stmt)
    conn.execute(publications.update().where(publications.c.kind == kind).values(is_live=False))
    conn.execute(publications.update().where(publications.c.id == previous.id).values(
        is_live=True, live_at=dt.datetime.now(dt.UTC)))
    # Retire the version rolled back from, so the next rollback goes further back rather
    # than forth. Its table is dropped after this commit (a drop here would make the swap
    # wait for every reader of the old table).
    conn.execute(publications.update().where(publications.c.id == live.id).values(dropped=True))


def rollback(engine: Engine, kind: str = "recommendations", swap: SwapPolicy | None = None) -> tuple[str, str]:
    """Repoint ``kind`` at the version that was live before the live one; returns (old table, new table)."""
    policy = swap or SwapPolicy()

    def back(conn: Connection) -> tuple[str, str]:
        _lock_swaps(conn, kind)
        live, previous = _rollback_target(conn, kind)
        _repoint_back(conn, kind, live, previous)
        return live.table_name, previous.table_name

    old, new = _locked_tx(engine, policy, f"roll back {kind}", back)
    prune(engine, kind, keep_versions=None, swap=policy)  # drops the retired table only
    return old, new


def rollback_lists(engine: Engine, swap: SwapPolicy | None = None) -> dict[str, tuple[str, str] | str]:
    """Roll back the last publish: recommendations, and similar_items only if that publish made them live.

    Both views move in one transaction. Returns, per list, (old table, new table) or why
    it did not move. Raises RuntimeError if recommendations cannot be rolled back.
    """
    policy = swap or SwapPolicy()

    def back(conn: Connection) -> dict[str, tuple[str, str] | str]:
        for kind in KINDS:  # always the same order, so two rollbacks cannot deadlock
            _lock_swaps(conn, kind)
        recs_live, recs_previous = _rollback_target(conn, "recommendations")
        moves: dict[str, tuple[str, str] | str] = {}
        sims_live = _live(conn, "similar_items")
        # A champion without item vectors (popularity) publishes no similar_items: the
        # live ones then come from an earlier publish, which is not being rolled back.
        if sims_live is None or (sims_live.run_date, sims_live.model_version) != (
                recs_live.run_date, recs_live.model_version):
            moves["similar_items"] = "not moved: the last publish did not publish it"
        else:
            try:
                live, previous = _rollback_target(conn, "similar_items")
            except RuntimeError as exc:
                moves["similar_items"] = f"not moved: {exc}"
            else:
                _repoint_back(conn, "similar_items", live, previous)
                moves["similar_items"] = (live.table_name, previous.table_name)
        _repoint_back(conn, "recommendations", recs_live, recs_previous)
        return {"recommendations": (recs_live.table_name, recs_previous.table_name), **moves}

    moves = _locked_tx(engine, policy, "roll back the last publish", back)
    for kind in KINDS:
        prune(engine, kind, keep_versions=None, swap=policy)  # drops retired tables only
    return moves


def live_version(engine: Engine, kind: str = "recommendations") -> sa.Row | None:
    """The live publication row of ``kind``, or None."""
    with engine.connect() as conn:
        return _live(conn, kind)
