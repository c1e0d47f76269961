"""Delimited text: the reader of CSV, TSV, MovieLens ``u.data`` and ``ratings.dat`` files.

The quoting rule, for ids and header names alike: an unquoted field loses surrounding
spaces and tabs; a field that *opens* with a quote (after optional blanks) is quoted,
kept exactly, and may span lines (``""`` inside it is one quote). A quote anywhere
else in an unquoted field is text, as in Python's ``csv`` module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

BOM = b"\xef\xbb\xbf"


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


def first_line(path: Path) -> str:
    with open(path, "rb") as fh:
        raw = fh.readline()
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    return raw.decode("utf-8", errors="replace").rstrip("\r\n")


def delimiter_of(first_line: str) -> str:
    if "::" in first_line:
        return "::"
    return "\t" if "\t" in first_line else ","


def read_header(path: Path) -> list[str]:
    """The column names on a text file's first line (byte-order mark, quotes, CRLF handled)."""
    first = first_line(path)
    return split_record(first, delimiter_of(first)) or [first]


LINE = "_line"
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


def text_batches(
    path: Path, delimiter: str, n_fields: int, wanted: dict[str, int], has_header: bool, batch_rows: int
) -> Iterator[tuple[pa.Table | pd.DataFrame, pd.Series, float]]:
    """Yield (rows, malformed, share of the file read) per batch.

    ``wanted`` maps the columns to return to their field positions in records of
    ``n_fields`` fields. Rows are those columns as strings: an Arrow table with a
    :data:`LINE` column for blocks without quotes (the common case, no Python object per
    line), else a frame indexed by 1-based line number; malformed holds reasons for lines
    that are not records, by line number.
    """
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
            skip = 1 if first_no == 1 and has_header else 0
            if carry is None and _is_plain(block):
                arr = _block_lines(block).slice(skip)
                rows, malformed = split_plain(arr, numbers[skip:], delimiter, n_fields, wanted)
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
                fields = split_record(line, delimiter)
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


def split_plain(
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
    columns[LINE] = pa.array(numbers[ok], pa.int64())
    malformed = pd.Series(
        [f"expected {n_fields} fields, found {n}" for n in counts[wrong]],
        index=pd.Index(numbers[wrong], dtype="int64"), dtype="string",
    )
    return pa.table(columns), malformed
