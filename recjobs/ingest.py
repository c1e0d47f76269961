"""Ingest: validate rating files and merge them into the Parquet lake.

Accepted inputs (see :func:`ingest_file`):

* MovieLens ``u.data`` (tab-separated ``user item rating timestamp``, no header) and
  ML-1M ``ratings.dat`` (``::``-separated, no header);
* CSV (or tab-separated text) with a header naming ``user_id,item_id,rating,timestamp``,
  or MovieLens 20M/25M's ``userId,movieId,rating,timestamp``, or any names mapped with
  ``ingest.columns``; other columns are ignored. UTF-8, with or without a byte-order
  mark, LF or CRLF line endings, fields optionally quoted;
* Parquet with those columns.

Each row is checked; bad rows (malformed lines included) go to a quarantine Parquet
file with their line number and reason, good rows are merged into ``dt=YYYY-MM-DD``
partitions, de-duplicated on (user, item, timestamp). A file whose invalid share
passes the configured limit is rejected whole (quarantine still written, so the bad
rows can be inspected) and recorded as rejected, so later inbox runs skip it until
it is forced or delivered corrected. Files are remembered by content hash, so
ingesting one again changes nothing.

Values, exactly:

* ids are text, kept as given: an unquoted CSV field loses surrounding spaces and
  tabs, a quoted one is kept byte for byte; ``NA``, ``null`` and the like are ids like
  any other; only an empty (or, in Parquet, null/NaN) id is invalid. Parquet integer
  ids become their decimal text, integral floats are written as integers (``7.0`` ->
  ``7``) and other floats as the shortest text that reads back the same (``7.5``);
* timestamps are Unix seconds (fractions allowed), ISO 8601 (no offset means UTC) or a
  Parquet timestamp/date column (no time zone means UTC); anything finer than a
  millisecond, the lake's unit, is truncated to the millisecond.

Memory does not grow with the file: batches are validated one at a time (plain text
blocks with Arrow compute on the raw bytes, anything unusual with the exact per-value
rules of :func:`validate`), valid rows are spilled to Arrow files in a private folder
under ``<lake>/.spill`` and bad rows streamed to the quarantine file; then, under the
lake's lock, consecutive days are merged a group at a time (``ingest.merge_rows``),
each partition replaced atomically. Long steps log progress every
``ingest.progress_seconds``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import filelock
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recjobs import columns as C
from recjobs.db import ingest_log
from recjobs.faults import fault_point
from recjobs.lake import (
    RATINGS_SCHEMA,
    SEQ,
    LakeLockTimeout,
    lake_lock,
    merge_partition,
    to_ratings_table,
)
from recjobs.settings import Settings, SettingsError

log = logging.getLogger(__name__)

INBOX_PATTERNS = ("*.csv", "*.tsv", "*.data", "*.dat", "*.parquet")
REQUIRED = C.INTERACTION_COLUMNS
# Column names of the MovieLens 20M/25M CSVs, accepted without a mapping.
ALIASES = {C.USER: ("userId",), C.ITEM: ("movieId",)}
BOM = b"\xef\xbb\xbf"
STATUS_INGESTED = "ingested"
STATUS_REJECTED = "rejected"


class IngestError(ValueError):
    """A file cannot be ingested; the message names the file and why."""


@dataclass
class IngestReport:
    """What one file contributed; also the row written to ``ingest_log``."""

    source_path: str
    content_hash: str
    rows_read: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    duplicates_dropped: int = 0
    partitions: list[str] = field(default_factory=list)
    quarantine_path: str | None = None
    skipped: bool = False
    reasons: dict[str, int] = field(default_factory=dict)
    status: str = STATUS_INGESTED
    reason: str | None = None

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.skipped and self.status == STATUS_REJECTED:
            return (
                f"{self.source_path}: rejected on an earlier run (sha256 {self.content_hash[:12]}), "
                f"skipped. Earlier reason: {self.reason} -- deliver a corrected file, or run "
                f"`recjobs ingest --force {self.source_path}` to ingest it anyway"
            )
        if self.skipped:
            return f"{self.source_path}: already ingested (sha256 {self.content_hash[:12]}), skipped"
        return (
            f"{self.source_path}: {self.rows_read} rows read, {self.rows_valid} valid, "
            f"{self.rows_quarantined} quarantined, {self.duplicates_dropped} duplicates dropped, "
            f"{len(self.partitions)} partitions"
        )


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_columns_option(text: str) -> dict[str, str]:
    """``user_id=customer,item_id=sku`` (the CLI's ``--columns``) as a mapping.

    Raises :class:`SettingsError` naming the bad pair; unknown canonical names are
    rejected by the ``ingest.columns`` setting itself.
    """
    out: dict[str, str] = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SettingsError(f"--columns expects CANONICAL=FILE_COLUMN pairs, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


# -- text files -----------------------------------------------------------------


def split_record(record: str, delimiter: str) -> list[str] | None:
    """Split one delimited record; None if its quoting is malformed.

    Unquoted fields lose surrounding spaces and tabs; a quoted field is kept exactly
    (``""`` inside it is one quote). This is the rule for ids and header names alike.
    """
    fields: list[str] = []
    i, n, width = 0, len(record), len(delimiter)
    while True:
        j = i
        while j < n and record[j] in " \t" and not record.startswith(delimiter, j):
            j += 1
        if j < n and record[j] == '"':
            parts: list[str] = []
            k = j + 1
            while True:
                q = record.find('"', k)
                if q < 0:
                    return None  # unterminated quote
                parts.append(record[k:q])
                if record.startswith('"', q + 1):
                    parts.append('"')
                    k = q + 2
                    continue
                break
            fields.append("".join(parts))
            k = q + 1
            while k < n and record[k] in " \t" and not record.startswith(delimiter, k):
                k += 1
            if k == n:
                return fields
            if not record.startswith(delimiter, k):
                return None  # text after a closing quote
            i = k + width
        else:
            d = record.find(delimiter, i)
            if d < 0:
                fields.append(record[i:].strip(" \t"))
                return fields
            fields.append(record[i:d].strip(" \t"))
            i = d + width


def _first_line(path: Path) -> str:
    with open(path, "rb") as fh:
        raw = fh.readline()
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    return raw.decode("utf-8", errors="replace").rstrip("\r\n")


def _delimiter(first_line: str) -> str:
    if "::" in first_line:
        return "::"
    return "\t" if "\t" in first_line else ","


def read_header(path: Path) -> list[str]:
    """The column names on a text file's first line (byte-order mark, quotes, CRLF handled)."""
    first = _first_line(path)
    return split_record(first, _delimiter(first)) or [first]


@dataclass
class _Layout:
    """Where each canonical column comes from in one file."""

    kind: str  # "text" or "parquet"
    names: list[str]  # the file's column names (positional names for headerless text)
    source: dict[str, str | None]  # canonical column -> file column; None: default rating
    delimiter: str = ","
    has_header: bool = True


def _resolve(path: Path, names: list[str], settings: Settings) -> dict[str, str | None]:
    mapping = settings.ingest.columns
    source: dict[str, str | None] = {}
    missing = []
    for col in REQUIRED:
        if col in mapping:
            if mapping[col] not in names:
                raise IngestError(
                    f"{path}: column {mapping[col]!r}, mapped to {col} by ingest.columns "
                    f"(--columns), is not in the file; its columns are {names}"
                )
            source[col] = mapping[col]
        elif col in names:
            source[col] = col
        elif any(a in names for a in ALIASES.get(col, ())):
            source[col] = next(a for a in ALIASES[col] if a in names)
        elif col == C.RATING and settings.ingest.default_rating is not None:
            source[col] = None
        else:
            missing.append(col)
    if missing:
        raise IngestError(
            f"{path}: missing required columns {missing} (header has {names}); expected a "
            f"header naming {list(REQUIRED)} (or MovieLens's userId,movieId), a mapping in "
            "ingest.columns / `recjobs ingest --columns`, or ingest.default_rating for files "
            "without ratings"
        )
    return source


def _layout(path: Path, settings: Settings) -> _Layout:
    if path.suffix.lower() == ".parquet":
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except (pa.ArrowException, OSError) as exc:
            raise IngestError(f"{path}: not a readable Parquet file ({exc})") from None
        return _Layout("parquet", names, _resolve(path, names, settings))
    first = _first_line(path)
    if not first.strip():
        raise IngestError(f"{path}: file is empty (or its first line is blank)")
    delimiter = _delimiter(first)
    names = split_record(first, delimiter) or [first]
    known = set(REQUIRED) | set(settings.ingest.columns.values())
    known |= {a for aliases in ALIASES.values() for a in aliases}
    if delimiter != "," and not known & set(names):
        # MovieLens u.data / ratings.dat: no header, the four columns in order.
        return _Layout("text", list(REQUIRED), {c: c for c in REQUIRED}, delimiter, False)
    return _Layout("text", names, _resolve(path, names, settings), delimiter, True)


_LINE = "_line"
"""Column of a vectorised text batch: each row's 1-based line number."""
# Bytes read per text batch for each row of ``ingest.batch_rows`` (a typical line is shorter).
_BYTES_PER_ROW = 40


def _decode(block: bytes) -> list[str | None]:
    """A block's lines without their newline; None for a line that is not UTF-8."""
    try:
        lines: list[str | None] = list(block.decode("utf-8").split("\n"))
    except UnicodeDecodeError:
        lines = []
        for piece in block.split(b"\n"):
            try:
                lines.append(piece.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(None)
    if block.endswith(b"\n"):
        lines.pop()  # the empty piece after the final newline
    return lines


def _is_plain(block: bytes) -> bool:
    """Valid UTF-8 without any quote character: the vectorised path applies."""
    if b'"' in block:
        return False
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _block_lines(block: bytes) -> pa.StringArray:
    """A plain block's lines as one Arrow array, built on the block's bytes (no str per line)."""
    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10) + 1
    if not block.endswith(b"\n"):
        ends = np.append(ends, len(block))
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), ends]).astype(np.int32)
    lines = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(block))
    # Each line still ends with its "\n"; trimming "\r\n" drops it and a CRLF's "\r" alike.
    return pc.utf8_rtrim(lines, characters="\r\n")


def _text_batches(
    path: Path, layout: _Layout, batch_rows: int
) -> Iterator[tuple[pa.Table | pd.DataFrame, pd.Series, float]]:
    """Yield (rows, malformed, share of the file read) per batch.

    Rows are the needed columns as strings: an Arrow table with a :data:`_LINE` column
    for blocks without quotes (the common case, no Python object per line), else a
    frame indexed by 1-based line number; malformed holds reasons for lines that are
    not records, by line number.
    """
    n_fields = len(layout.names)
    wanted = {c: layout.names.index(s) for c, s in layout.source.items() if s is not None}
    # At most 1 GiB: a block's lines are one Arrow string array (32-bit offsets).
    block_bytes = min(max(batch_rows * _BYTES_PER_ROW, 1 << 16), 1 << 30)
    size = max(path.stat().st_size, 1)
    consumed = 0
    carry: tuple[int, str] | None = None  # a quoted field spanning lines: (first line, text)
    pending = b""  # the incomplete last line of the previous read
    with open(path, "rb") as fh:
        while True:
            data = fh.read(block_bytes)
            block = pending + data if pending else data
            if not block:
                break
            if data:
                cut = block.rfind(b"\n") + 1
                if cut == 0:  # one line longer than a block: read on
                    pending = block
                    continue
                block, pending = block[:cut], block[cut:]
            else:
                pending = b""  # the last line, without a newline
            first_no = consumed + 1
            if first_no == 1 and block.startswith(BOM):
                block = block[len(BOM):]
            n_lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
            consumed += n_lines
            done = min(fh.tell() - len(pending), size) / size
            numbers = np.arange(first_no, first_no + n_lines, dtype="int64")
            skip = 1 if first_no == 1 and layout.has_header else 0
            if carry is None and _is_plain(block):
                arr = _block_lines(block).slice(skip)
                rows, malformed = _split_plain(arr, numbers[skip:], layout.delimiter, n_fields, wanted)
                yield rows, malformed, done
                continue
            lines = _decode(block)[skip:]
            records: list[list[str]] = []
            record_numbers: list[int] = []
            bad: dict[int, str] = {}
            for number, line in zip(numbers[skip:].tolist(), lines, strict=True):
                if line is None:
                    bad[number] = "line is not valid UTF-8"
                    continue
                line = line.rstrip("\r")
                if carry is not None:
                    number, line = carry[0], carry[1] + "\n" + line
                    carry = None
                if line.count('"') % 2:
                    carry = (number, line)
                    continue
                if not line:
                    continue
                fields = split_record(line, layout.delimiter)
                if fields is None:
                    bad[number] = "malformed quoting"
                elif len(fields) != n_fields:
                    bad[number] = f"expected {n_fields} fields, found {len(fields)}"
                else:
                    records.append(fields)
                    record_numbers.append(number)
            index = pd.Index(record_numbers, dtype="int64")
            frame = pd.DataFrame(
                {c: pd.Series([r[i] for r in records], index=index, dtype="string")
                 for c, i in wanted.items()},
                index=index,
            )
            yield frame, pd.Series(bad, dtype="string"), done
    if carry is not None:
        yield (
            pd.DataFrame({c: pd.Series(dtype="string") for c in wanted}),
            pd.Series({carry[0]: "unterminated quote"}, dtype="string"),
            1.0,
        )


def _split_plain(
    lines: pa.StringArray, numbers: np.ndarray, delimiter: str, n_fields: int,
    wanted: dict[str, int],
) -> tuple[pa.Table, pd.Series]:
    """The vectorised path for a block with no quote characters."""
    nonblank = np.asarray(pc.not_equal(lines, ""), dtype=bool)
    parts = pc.split_pattern(lines, pattern=delimiter)
    counts = np.asarray(pc.list_value_length(parts).fill_null(0), dtype=np.int64)
    ok = nonblank & (counts == n_fields)
    wrong = nonblank & ~ok
    parts = parts.filter(pa.array(ok))
    columns = {col: pc.utf8_trim(pc.list_element(parts, pos), characters=" \t")
               for col, pos in wanted.items()}
    columns[_LINE] = pa.array(numbers[ok], pa.int64())
    malformed = pd.Series(
        [f"expected {n_fields} fields, found {n}" for n in counts[wrong]],
        index=pd.Index(numbers[wrong], dtype="int64"), dtype="string",
    )
    return pa.table(columns), malformed


# -- Parquet files ----------------------------------------------------------------


def _id_text(arr: pa.Array, path: Path, name: str) -> pd.Series:
    """Ids as text: integers in decimal, integral floats without ``.0``, strings as they are."""
    kind = arr.type
    if pa.types.is_dictionary(kind):
        arr = arr.dictionary_decode()
        kind = arr.type
    if pa.types.is_floating(kind):
        values = arr.to_numpy(zero_copy_only=False)
        out = np.full(len(values), None, dtype=object)
        finite = np.isfinite(values)
        integral = finite & (np.floor(values) == values)
        small = integral & (np.abs(values) < 2.0**63)
        out[small] = values[small].astype(np.int64).astype(str)
        out[integral & ~small] = [str(int(v)) for v in values[integral & ~small]]
        rest = finite & ~integral
        out[rest] = [str(v) for v in values[rest]]
        return pd.Series(out, dtype="string")
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        try:
            arr = pc.cast(arr, pa.string())
        except pa.ArrowException:
            raise IngestError(f"{path}: column {name!r} has type {kind}, which cannot be an id") from None
    return pd.Series(arr.to_numpy(zero_copy_only=False), dtype="string")


def _value_column(arr: pa.Array) -> pd.Series:
    """Ratings and timestamps: numbers as float64, timestamps/dates as ms UTC, else text."""
    kind = arr.type
    if pa.types.is_dictionary(kind):
        arr = arr.dictionary_decode()
        kind = arr.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return pd.Series(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False))
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        # A time-zone-less column is read as UTC; safe=False truncates finer units to ms.
        ms = pc.cast(arr, pa.timestamp("ms", tz="UTC"), safe=False)
        return ms.to_pandas()
    return pd.Series(pc.cast(arr, pa.string()).to_numpy(zero_copy_only=False), dtype="string")


def _parquet_batches(
    path: Path, layout: _Layout, settings: Settings
) -> Iterator[tuple[pd.DataFrame, pd.Series, float]]:
    """Yield (rows, no malformed rows, share read) per batch, indexed by 1-based row number."""
    names = sorted({s for s in layout.source.values() if s is not None})
    done = 0
    try:
        pfile = pq.ParquetFile(path)
        total = max(pfile.metadata.num_rows, 1)
        for batch in pfile.iter_batches(batch_size=settings.ingest.batch_rows, columns=names):
            index = pd.RangeIndex(done + 1, done + 1 + batch.num_rows)
            done += batch.num_rows
            frame = pd.DataFrame(index=index)
            for col, name in layout.source.items():
                if name is None:
                    values = pd.Series(settings.ingest.default_rating, index=index, dtype="float64")
                elif col in (C.USER, C.ITEM):
                    values = _id_text(batch.column(name), path, name)
                else:
                    values = _value_column(batch.column(name))
                frame[col] = values.set_axis(index)
            yield frame, pd.Series(dtype="string"), done / total
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"{path}: not a readable Parquet file after row {done} ({exc})") from None


# -- validation -----------------------------------------------------------------

# Unix seconds that datetime64[ms] and Parquet can hold (years 1..9999).
_MIN_S, _MAX_S = -62_135_596_800, 253_402_300_799


def _seconds_to_timestamps(seconds: pd.Series) -> pd.Series:
    values = seconds.astype("float64").to_numpy()
    out = pd.Series(pd.NaT, index=seconds.index, dtype="datetime64[ms, UTC]")
    ok = np.isfinite(values) & (values >= _MIN_S) & (values <= _MAX_S)
    # Round to the microsecond first (absorbs float noise: 0.1 s is 99.9999... ms), then
    # truncate to the lake's millisecond.
    ms = np.floor(np.round(values[ok] * 1e6) / 1000).astype("int64")
    out[ok] = pd.to_datetime(ms, unit="ms", utc=True).astype("datetime64[ms, UTC]")
    return out


def parse_timestamps(raw: pd.Series) -> pd.Series:
    """Unix seconds, ISO 8601 text, or timestamps to UTC at millisecond resolution.

    Finer values are truncated to the millisecond; unparseable values become NaT.
    """
    if isinstance(raw.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(raw.dtype):
        return raw.dt.floor("ms").astype("datetime64[ms, UTC]")
    if pd.api.types.is_numeric_dtype(raw.dtype):
        return _seconds_to_timestamps(raw)
    text = raw.astype("string").str.strip()
    numeric = pd.to_numeric(text, errors="coerce").astype("float64")
    out = _seconds_to_timestamps(numeric)
    # Plain decimals are converted digit by digit: a float cannot hold 1767225600.9999999
    # (it rounds up to the next second), and truncation must not depend on that.
    # Whole seconds are exact as floats; only values with a fraction need this.
    has_point = numeric.notna() & text.str.contains(".", regex=False).fillna(False)
    if has_point.any():
        candidates = text[has_point]
        parts = pc.extract_regex(pa.array(candidates.to_numpy(dtype=object), pa.string()),
                                 r"^(?P<sign>[+-]?)(?P<whole>\d{1,12})\.(?P<frac>\d*)$")
        ok = np.asarray(parts.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        parts = parts.filter(pa.array(ok))
        whole = pc.cast(parts.field("whole"), pa.int64()).to_numpy()
        frac = pc.utf8_rpad(parts.field("frac"), width=3, padding="0")
        first3 = pc.cast(pc.utf8_slice_codeunits(frac, 0, 3), pa.int64()).to_numpy()
        rest = pc.utf8_rtrim(pc.utf8_slice_codeunits(frac, 3), characters="0")
        finer = np.asarray(pc.not_equal(rest, "").to_numpy(zero_copy_only=False), dtype=bool)
        sign = np.where(np.asarray(parts.field("sign").to_numpy(zero_copy_only=False)) == "-", -1, 1)
        ms = (whole * 1000 + first3) * sign - ((sign < 0) & finer)  # floor to the millisecond
        in_range = (ms >= _MIN_S * 1000) & (ms <= _MAX_S * 1000 + 999)
        index = candidates.index[ok]
        out[index] = pd.NaT
        out[index[in_range]] = pd.to_datetime(
            ms[in_range], unit="ms", utc=True).astype("datetime64[ms, UTC]")
    rest = text.notna() & numeric.isna()
    if rest.any():
        parsed = pd.to_datetime(text[rest], format="ISO8601", utc=True, errors="coerce")
        out[rest] = parsed.dt.floor("ms").astype("datetime64[ms, UTC]")
    return out


def validate(frame: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, pd.Series]:
    """Split a batch of raw columns into valid typed rows and a reason per bad row."""
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")

    def flag(mask: pd.Series, why: str) -> None:
        mask = mask.fillna(True).astype(bool) & reason.isna()
        reason[mask] = why

    user = frame[C.USER].astype("string")
    item = frame[C.ITEM].astype("string")
    flag(user.isna() | (user == ""), "empty user_id")
    flag(item.isna() | (item == ""), "empty item_id")
    raw_rating = frame[C.RATING]
    if pd.api.types.is_numeric_dtype(raw_rating.dtype):
        rating = raw_rating.astype("float64")
    else:
        rating = pd.to_numeric(raw_rating.astype("string").str.strip(), errors="coerce")
        rating = rating.astype("float64")
    flag(rating.isna(), "rating is not a number")
    lo, hi = settings.ingest.rating_min, settings.ingest.rating_max
    flag(~rating.between(lo, hi), f"rating outside [{lo:g}, {hi:g}]")
    ts = parse_timestamps(frame[C.TIMESTAMP])
    flag(ts.isna(), "timestamp is not Unix seconds or ISO 8601")
    good = reason.isna()
    valid = pd.DataFrame(
        {
            C.USER: user[good].astype(object),
            C.ITEM: item[good].astype(object),
            C.RATING: rating[good].astype("float32"),
            C.TIMESTAMP: ts[good],
        }
    )
    return valid, reason[~good]


# -- the ingest log -------------------------------------------------------------


def _log_row(engine: Engine, digest: str) -> sa.Row | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(ingest_log.c.status, ingest_log.c.reason).where(
                ingest_log.c.content_hash == digest
            )
        ).first()


def known_hash(engine: Engine, digest: str) -> bool:
    """Whether content with this hash was ingested before (a rejection does not count)."""
    row = _log_row(engine, digest)
    return row is not None and row.status in (None, STATUS_INGESTED)


def rejection_reason(engine: Engine, digest: str) -> str | None:
    """Why content with this hash was rejected before, or None if it was not."""
    row = _log_row(engine, digest)
    if row is None or row.status != STATUS_REJECTED:
        return None
    return row.reason or "no reason recorded"


def seen_before(engine: Engine, report: IngestReport) -> bool:
    """Mark ``report`` skipped if its content was ingested or rejected before; log why."""
    row = _log_row(engine, report.content_hash)
    if row is None:
        return False
    report.skipped = True
    if row.status == STATUS_REJECTED:
        report.status, report.reason = STATUS_REJECTED, row.reason or "no reason recorded"
        log.warning(report.summary())
    else:
        log.info(report.summary())
    return True


def record_ingest(engine: Engine, report: IngestReport, kind: str) -> None:
    """Write (or replace) the ``ingest_log`` row for a report."""
    row = {k: v for k, v in asdict(report).items() if k in ingest_log.c and k != "partitions"}
    row.update(
        kind=kind,
        partitions=",".join(report.partitions),
        ingested_at=dt.datetime.now(dt.UTC),
    )
    with engine.begin() as conn:
        conn.execute(ingest_log.delete().where(ingest_log.c.content_hash == report.content_hash))
        conn.execute(ingest_log.insert().values(**row))


def record_rejection(engine: Engine, report: IngestReport, kind: str, reason: str) -> None:
    """Remember that this content was refused, so the inbox does not retry it every night."""
    report.status, report.reason = STATUS_REJECTED, reason
    report.rows_valid, report.duplicates_dropped, report.partitions = 0, 0, []
    record_ingest(engine, report, kind=kind)


# Values the vectorised validation accepts without pandas: plain decimals, whole Unix
# seconds. Anything else (ISO dates, fractions, signs, exponents, bad values) goes through
# :func:`validate`, so the rules stay exactly those of one implementation; on these shapes
# both give the same number (digit strings this short parse exactly / correctly rounded).
_PLAIN_RATING = r"^[0-9]{1,6}(\.[0-9]{1,6})?$"
_PLAIN_SECONDS = r"^[0-9]{1,11}$"  # below _MAX_S, so always in range


def _validate_plain(
    table: pa.Table, settings: Settings
) -> tuple[pa.Table, pd.DataFrame]:
    """Vectorised validation of a text batch: (valid rows for the spill, the rest to check).

    The rest is returned as the string frame :func:`validate` takes, indexed by line.
    """
    user = table.column(C.USER).combine_chunks()
    item = table.column(C.ITEM).combine_chunks()
    ok = np.asarray(pc.greater(pc.utf8_length(user), 0), dtype=bool)
    ok &= np.asarray(pc.greater(pc.utf8_length(item), 0), dtype=bool)
    if C.RATING in table.column_names:
        raw = table.column(C.RATING).combine_chunks()
        plain = pc.match_substring_regex(raw, _PLAIN_RATING)
        rating = pc.cast(pc.if_else(plain, raw, "0"), pa.float64()).to_numpy()
        lo, hi = settings.ingest.rating_min, settings.ingest.rating_max
        ok &= np.asarray(plain, dtype=bool) & (rating >= lo) & (rating <= hi)
    else:
        rating = np.full(table.num_rows, settings.ingest.default_rating, dtype=np.float64)
    raw_ts = table.column(C.TIMESTAMP).combine_chunks()
    plain_ts = pc.match_substring_regex(raw_ts, _PLAIN_SECONDS)
    seconds = pc.cast(pc.if_else(plain_ts, raw_ts, "0"), pa.int64()).to_numpy()
    ok &= np.asarray(plain_ts, dtype=bool)
    mask = pa.array(ok)
    valid = pa.table({
        C.USER: user.filter(mask),
        C.ITEM: item.filter(mask),
        C.RATING: pa.array(rating[ok].astype(np.float32)),
        C.TIMESTAMP: pa.array(seconds[ok] * 1000, pa.timestamp("ms", tz="UTC")),
        SEQ: table.column(_LINE).filter(mask),
    })
    rest = table.filter(pc.invert(mask))
    index = pd.Index(rest.column(_LINE).to_numpy(), dtype="int64")
    frame = pd.DataFrame(
        {c: pd.Series(rest.column(c).to_numpy(zero_copy_only=False), index=index, dtype="string")
         for c in rest.column_names if c != _LINE},
        index=index,
    )
    return valid, frame


def _valid_to_arrow(valid: pd.DataFrame) -> pa.Table:
    """:func:`validate`'s valid rows in the spill's layout; the row/line number orders them."""
    table = to_ratings_table(valid)
    return table.append_column(SEQ, pa.array(valid.index.to_numpy(dtype=np.int64)))


# -- progress, spill, quarantine ----------------------------------------------------


class _Progress:
    """Logs a long step's progress at most every ``every`` seconds, with a rate and an ETA."""

    def __init__(self, what: str, every: float) -> None:
        self.what, self.every = what, every
        self.start = self.last = time.monotonic()

    def update(self, share: float, rows: int, detail: str) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        eta = f"{elapsed * (1 - share) / share:.0f}s" if share > 0 else "unknown"
        log.info("%s: %s, %.0f rows/s, %.0f%% done, ETA %s, %.0fs elapsed",
                 self.what, detail, rows / max(elapsed, 1e-9), 100 * share, eta, elapsed)


_DAY_MS = 86_400_000
_SPILL_CHUNK = 16_384  # rows per spill record batch: the merge reads whole batches


def _remove_stale_spills(root: Path) -> None:
    """Delete spill folders whose ingest died (their lock is free): SIGKILL leaves them."""
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


@contextmanager
def _spill_folder(settings: Settings) -> Iterator[Path]:
    """A private temporary folder in ``<lake>/.spill``, removed afterwards (or by a later
    ingest, if this process is killed)."""
    root = settings.lake / ".spill"
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


class _Spill:
    """A file's validated rows on disk: one Arrow IPC run per batch, sorted by time, so
    the merge reads only the record batches holding the days it merges."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runs: list[Path] = []
        # Per record batch: (run, batch index in the run, first day, last day).
        self.chunks: list[tuple[int, int, int, int]] = []
        self.day_rows: Counter[int] = Counter()
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        days = table.column(C.TIMESTAMP).cast(pa.int64()).to_numpy() // _DAY_MS  # floor division
        order = np.argsort(days, kind="stable")  # by day is enough: the merge sorts each day
        table = table.take(order).combine_chunks().cast(_SPILL_SCHEMA)
        days = days[order]
        counts = np.bincount(days - days[0])
        found = np.flatnonzero(counts)
        self.day_rows.update(dict(zip((found + days[0]).tolist(), counts[found].tolist(), strict=True)))
        run = len(self.runs)
        path = self.folder / f"run-{run:06d}.arrow"
        options = pa.ipc.IpcWriteOptions(compression="lz4")
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as out:
            out.write_table(table, max_chunksize=_SPILL_CHUNK)
        for i, start in enumerate(range(0, table.num_rows, _SPILL_CHUNK)):
            end = min(start + _SPILL_CHUNK, table.num_rows) - 1
            self.chunks.append((run, i, int(days[start]), int(days[end])))
        self.runs.append(path)
        self.rows += table.num_rows

    def read_days(self, first: int, last: int) -> pa.Table:
        """Every spilled row whose day is in ``first..last`` (days since 1970)."""
        parts: list[pa.RecordBatch] = []
        readers: dict[int, pa.ipc.RecordBatchFileReader] = {}
        for run, i, lo, hi in self.chunks:
            if hi < first or lo > last:
                continue
            if run not in readers:
                readers[run] = pa.ipc.open_file(pa.OSFile(str(self.runs[run]), "rb"))
            batch = readers[run].get_batch(i)
            if lo < first or hi > last:
                day = np.floor_divide(batch.column(C.TIMESTAMP).cast(pa.int64()).to_numpy(), _DAY_MS)
                batch = batch.filter(pa.array((day >= first) & (day <= last)))
            parts.append(batch)
        return pa.Table.from_batches(parts, schema=_SPILL_SCHEMA)


_SPILL_SCHEMA = RATINGS_SCHEMA.append(pa.field(SEQ, pa.int64(), nullable=False))
_QUARANTINE_SCHEMA = pa.schema(
    [(C.SOURCE_FILE, pa.string())] + [(c, pa.string()) for c in REQUIRED]
    + [(C.REASON, pa.string()), (C.SOURCE_ROW, pa.int64())]
)


class _Quarantine:
    """Bad rows streamed to a temporary Parquet file, put in place whole by :meth:`finish`."""

    def __init__(self, path: Path, source: str) -> None:
        self.path, self.source = path, source
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, bad: pd.DataFrame) -> None:
        """Append one batch's bad rows (raw values as text, a reason, indexed by line)."""
        if bad.empty:
            return
        bad = bad.sort_index()
        columns = {C.SOURCE_FILE: pa.array([self.source] * len(bad), pa.string())}
        for col in (*REQUIRED, C.REASON):
            columns[col] = pa.array(bad[col].astype(object).where(bad[col].notna(), None).tolist(),
                                    pa.string())
        columns[C.SOURCE_ROW] = pa.array(bad.index.to_numpy(dtype=np.int64))
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, _QUARANTINE_SCHEMA, compression="zstd")
        self.writer.write_table(pa.table(columns, schema=_QUARANTINE_SCHEMA))
        self.rows += len(bad)

    def finish(self) -> str | None:
        """Close and move the file into place (fsynced, atomic); its path, or None if empty."""
        if self.writer is None:
            return None
        self.writer.close()
        self.writer = None
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        return str(self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.tmp.unlink(missing_ok=True)


# -- ingest -----------------------------------------------------------------------


def _read_and_validate(
    path: Path, settings: Settings, report: IngestReport, spill: _Spill
) -> None:
    """Validate every row of ``path``: valid rows to ``spill``, bad ones to quarantine.

    Memory holds one batch at a time. Raises :class:`IngestError` (to be recorded as a
    rejection) for unusable content.
    """
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: file is empty")
    layout = _layout(path, settings)
    batches: Iterator[tuple[pa.Table | pd.DataFrame, pd.Series, float]] = (
        _parquet_batches(path, layout, settings) if layout.kind == "parquet"
        else _text_batches(path, layout, settings.ingest.batch_rows)
    )
    quarantine = _Quarantine(settings.quarantine_dir / f"{report.content_hash[:16]}.parquet", str(path))
    progress = _Progress(f"{path.name}: validating", settings.ingest.progress_seconds)
    reasons: Counter[str] = Counter()
    n_read = 0
    # Spill writes (sort, compress, write) run beside the next batch's parsing; at most
    # one waits, so memory stays at about two batches.
    writer = ThreadPoolExecutor(1) if settings.ingest.threads > 1 else None
    pending: Future[None] | None = None

    def spill_add(table: pa.Table) -> None:
        nonlocal pending
        if pending is not None:
            pending.result()
            pending = None
        if writer is None:
            spill.add(table)
        else:
            pending = writer.submit(spill.add, table)

    try:
        for frame, malformed, share in batches:
            if isinstance(frame, pa.Table):
                n_read += frame.num_rows + len(malformed)
                valid, frame = _validate_plain(frame, settings)
                spill_add(valid)
            else:
                n_read += len(frame) + len(malformed)
            bad_parts: list[pd.DataFrame] = []
            if len(frame):
                if C.RATING not in frame.columns:
                    frame[C.RATING] = settings.ingest.default_rating
                valid_rows, why = validate(frame, settings)
                spill_add(_valid_to_arrow(valid_rows))
                if len(why):
                    bad = frame.loc[why.index, list(REQUIRED)].astype("string")
                    bad[C.REASON] = why
                    bad_parts.append(bad)
                    reasons.update(why.tolist())
            if len(malformed):
                bad = pd.DataFrame({c: pd.Series(pd.NA, index=malformed.index, dtype="string")
                                    for c in REQUIRED})
                bad[C.REASON] = malformed
                bad_parts.append(bad)
                reasons.update(malformed.tolist())
            if bad_parts:
                quarantine.write(pd.concat(bad_parts))
            fault_point("ingest.mid_validation")
            progress.update(share, n_read, f"{n_read} rows validated, {quarantine.rows} quarantined")
        if pending is not None:
            pending.result()
        report.rows_read = n_read
        report.reasons = dict(reasons)
        if n_read == 0:
            raise IngestError(f"{path}: file has a header but no data rows")
        report.rows_quarantined = quarantine.rows
        report.quarantine_path = quarantine.finish()
    except BaseException:
        quarantine.abort()
        raise
    finally:
        if writer is not None:
            writer.shutdown(wait=True)
    n_bad = report.rows_quarantined
    share = n_bad / n_read
    if share > settings.ingest.max_invalid_share:
        top = ", ".join(f"{why}: {n}" for why, n in reasons.most_common(5))
        raise IngestError(
            f"{path}: {n_bad} of {n_read} rows invalid ({share:.2%}), above the limit of "
            f"{settings.ingest.max_invalid_share:.2%} (ingest.max_invalid_share); nothing was "
            f"ingested. Reasons: {top}. Bad rows with their line numbers: {report.quarantine_path}"
        )


def _day_names(days: np.ndarray) -> list[str]:
    """``YYYY-MM-DD`` partition names of days since 1970, formatted as the lake always was."""
    ms = pd.Series(np.asarray(days, dtype=np.int64) * _DAY_MS).astype("datetime64[ms]")
    return ms.dt.tz_localize("UTC").dt.strftime("%Y-%m-%d").tolist()


def _merge_spill(spill: _Spill, settings: Settings, report: IngestReport, label: str) -> None:
    """Merge the spilled rows into the lake, a group of consecutive days at a time.

    A group holds at most ``ingest.merge_rows`` new rows (a bigger day alone), so memory
    is one group plus one partition, whatever the file's size. Callers hold the lock.
    """
    days = np.array(sorted(spill.day_rows), dtype=np.int64)
    counts = np.array([spill.day_rows[d] for d in days.tolist()], dtype=np.int64)
    names = _day_names(days)
    progress = _Progress(f"{label}: merging", settings.ingest.progress_seconds)
    with ThreadPoolExecutor(settings.ingest.threads) as pool:
        _merge_groups(spill, settings, report, days, counts, names, progress, pool)


def _merge_groups(
    spill: _Spill, settings: Settings, report: IngestReport, days: np.ndarray,
    counts: np.ndarray, names: list[str], progress: _Progress, pool: ThreadPoolExecutor,
) -> None:
    done_rows = 0
    start = 0
    while start < len(days):
        end = start + 1
        total = int(counts[start])
        while end < len(days) and total + counts[end] <= settings.ingest.merge_rows:
            total += int(counts[end])
            end += 1
        rows = spill.read_days(int(days[start]), int(days[end - 1]))
        day = np.floor_divide(rows.column(C.TIMESTAMP).cast(pa.int64()).to_numpy(), _DAY_MS)
        order = np.argsort(day, kind="stable")
        rows, day = rows.take(order), day[order]
        bounds = np.searchsorted(day, np.append(days[start:end], days[end - 1] + 1))
        # Days are independent files: merge them in parallel, account for them in order.
        merges = [pool.submit(merge_partition, settings.ratings_dir, names[start + j],
                              rows.slice(int(bounds[j]), int(bounds[j + 1] - bounds[j])))
                  for j in range(end - start)]
        for j, merge in enumerate(merges):
            lo, hi = int(bounds[j]), int(bounds[j + 1])
            result = merge.result()
            report.rows_valid += result.new_unique
            report.duplicates_dropped += result.duplicates
            report.partitions.append(names[start + j])
            done_rows += hi - lo
            fault_point("ingest.mid_merge")
            progress.update(done_rows / max(spill.rows, 1), done_rows,
                            f"{len(report.partitions)} of {len(days)} partitions merged")
        start = end


def ingest_file(
    path: Path | str, settings: Settings, engine: Engine, *, force: bool = False
) -> IngestReport:
    """Validate ``path`` and merge its valid rows into the lake; see the module docstring.

    Content seen before is skipped: ingested content silently, rejected content with a
    warning that repeats the earlier reason; ``force`` ingests it anyway. A file that
    is refused is recorded as rejected and the :class:`IngestError` is raised.
    Validation runs unlocked, streaming valid rows to a spill folder in ``<lake>/.spill``
    (memory holds a batch, not the file); the merge and the ``ingest_log`` row are
    written under the lake's lock, so concurrent ingests (the DAG beside a manual run)
    lose nothing. Killed anywhere, a rerun ingests every valid row exactly once: the
    log row comes last, and merging rows again changes nothing.
    """
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if not path.is_file():
        raise IngestError(f"{path}: not a regular file")
    try:
        report = IngestReport(source_path=str(path), content_hash=file_sha256(path))
        if not force and seen_before(engine, report):
            return report
        with _spill_folder(settings) as folder:
            spill = _Spill(folder)
            started = time.monotonic()
            try:
                _read_and_validate(path, settings, report, spill)
            except IngestError as exc:
                record_rejection(engine, report, "ratings", str(exc))
                raise
            validated = time.monotonic()
            with lake_lock(settings.lake, settings.ingest.lock_timeout_seconds):
                # Another process may have ingested the same content while this one validated.
                if not force and seen_before(engine, report):
                    return report
                merging = time.monotonic()
                _merge_spill(spill, settings, report, path.name)
                fault_point("ingest.before_log")
                record_ingest(engine, report, kind="ratings")
            log.info("%s: validated %d rows in %.1fs (%.0f rows/s), merged %d partitions in %.1fs",
                     path.name, report.rows_read, validated - started,
                     report.rows_read / max(validated - started, 1e-9), len(report.partitions),
                     time.monotonic() - merging)
    except OSError as exc:  # unreadable, or vanished mid-read: not the content's fault
        raise IngestError(f"{path}: cannot read: {exc}") from None
    except LakeLockTimeout as exc:
        raise IngestError(f"{path}: {exc}") from None
    log.info(report.summary())
    return report


def inbox_files(settings: Settings) -> list[Path]:
    """Files waiting in the inbox, in name order (so a rerun sees the same order)."""
    inbox = settings.inbox
    if not inbox.exists():
        return []
    found = {p for pattern in INBOX_PATTERNS for p in inbox.glob(pattern) if p.is_file()}
    return sorted(found)


def ingest_inbox(settings: Settings, engine: Engine) -> list[IngestReport]:
    """Ingest every new file in the inbox; files seen before (by content) are skipped.

    Side files (features, titles) are recognised by their columns and go to
    :mod:`recjobs.features`. Every file is attempted; if any fails, an
    :class:`IngestError` naming each failed file and why is raised after the rest have
    been ingested. Files rejected on an earlier run are skipped with a warning.
    """
    from recjobs.features import ingest_side_file, sniff_kind

    reports: list[IngestReport] = []
    errors: list[str] = []
    for path in inbox_files(settings):
        try:
            kind = sniff_kind(path) if path.stat().st_size else "ratings"
            if kind == "ratings":
                reports.append(ingest_file(path, settings, engine))
            else:
                reports.append(ingest_side_file(path, settings, engine, kind))
        except IngestError as exc:
            log.error("%s", exc)
            errors.append(str(exc))
        except OSError as exc:
            errors.append(f"{path}: cannot read: {exc}")
    if errors:
        raise IngestError(
            f"{len(errors)} of {len(reports) + len(errors)} inbox files failed: " + "; ".join(errors)
        )
    return reports
