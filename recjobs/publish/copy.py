"""Bulk loading a list's rows into a new table: binary COPY on PostgreSQL, executemany on SQLite."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recjobs.db.engine import is_sqlite
from recjobs.faults import fault_point
from recjobs.progress import RateProgress

log = logging.getLogger(__name__)

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


def binary_copy_rows(table: pa.Table, pg_types: list[str]) -> pa.Buffer:
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
                copy.write(binary_copy_rows(table.select(columns), pg_types))
                return table.num_rows

            yield write
            copy.write(_COPY_TRAILER)


def bulk_load(conn: Connection, table_name: str, columns: list[str], frames: Iterable[Frame],
               total: int | None = None) -> int:
    """Append ``frames`` (pandas or Arrow) to ``table_name`` in ``conn``'s transaction; returns the row count.

    PostgreSQL: binary COPY built from Arrow (:func:`binary_copy_rows`) on the publish
    transaction's own connection, so a publish killed mid-load leaves nothing behind
    (measured as fast as ADBC's ``adbc_ingest``, which would need a connection and a
    transaction of its own). Binary rather than CSV: the server parses no text, and
    floats and timestamps travel bit-exact. SQLite: executemany in the same transaction.
    Logs rows, rows/s and, given ``total`` rows, an ETA at least every 10 s.
    """
    writer = _sqlite_writer if is_sqlite(conn) else _postgres_writer
    progress = RateProgress(log, f"loading {table_name}", total=total)
    rows = 0
    with writer(conn, table_name, columns) as write:
        for frame in frames:
            rows += write(frame)
            fault_point("publish.mid_load")  # tests: a publish killed with its load half sent
            progress.update(rows)
    return rows


__all__ = ["Frame", "binary_copy_rows", "bulk_load"]
