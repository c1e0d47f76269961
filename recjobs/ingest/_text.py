"""Delimited text: the reader of CSV, TSV, MovieLens ``u.data`` and ``ratings.dat`` files.

The quoting rule, for ids and header names alike, is Python's ``csv`` module's (``"`` the
quote, ``""`` inside a quoted field one quote, ``strict``) with blanks forgiven:

* an unquoted field loses surrounding spaces and tabs; a quote inside it is text
  (``LP 12" vinyl``);
* only a quote that *opens* a field (after optional blanks) starts a quoted field; it is
  kept exactly and may span lines (line endings inside it are text, ``\r\n`` included);
  blanks may follow its closing quote, anything else there makes the line malformed;
* a quoted field still open after :data:`MAX_QUOTED_CHARS` characters, or at the end of
  the file, is a stray quote: every line it took is quarantined ("unterminated quote"),
  and reading starts afresh after it.

So every line after the header is in exactly one record, or quarantined, or blank.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recjobs.errors import IngestError

BOM = b"\xef\xbb\xbf"


_OK, _BAD, _OPEN = 0, 1, 2
_BLANKS = " \t"


def _scan(line: str, delimiter: str, fields: list[str], quoted: list[str] | None) -> tuple[int, list[str] | None]:
    """Split one line into ``fields`` (appended); the state machine behind :func:`split_record`.

    ``quoted`` is None at the start of a record, or the text so far of a quoted field
    that an earlier line left open (the line continues it). Returns ``(_OK, None)`` when
    the record ends with this line, ``(_BAD, None)`` for malformed quoting (text after a
    closing quote), or ``(_OPEN, parts)`` when a quoted field is still open at the end of
    the line, ``parts`` being its text so far. Only a quote that *opens* a field (after
    optional blanks) starts a quoted field; a quote anywhere else in a field is text.
    """
    i, n, width = 0, len(line), len(delimiter)
    while True:
        if quoted is None:
            j = i
            while j < n and line[j] in _BLANKS and not line.startswith(delimiter, j):
                j += 1
            if j >= n or line[j] != '"':
                d = line.find(delimiter, i)
                if d < 0:
                    fields.append(line[i:].strip(_BLANKS))
                    return _OK, None
                fields.append(line[i:d].strip(_BLANKS))
                i = d + width
                continue
            quoted, k = [], j + 1
        else:
            k = i
        while True:
            q = line.find('"', k)
            if q < 0:
                quoted.append(line[k:])
                return _OPEN, quoted
            quoted.append(line[k:q])
            if not line.startswith('"', q + 1):
                break
            quoted.append('"')  # "" inside a quoted field is one quote
            k = q + 2
        fields.append("".join(quoted))
        quoted = None
        k = q + 1
        while k < n and line[k] in _BLANKS and not line.startswith(delimiter, k):
            k += 1
        if k == n:
            return _OK, None
        if not line.startswith(delimiter, k):
            return _BAD, None  # text after a closing quote
        i = k + width


def split_record(record: str, delimiter: str) -> list[str] | None:
    """Split one delimited record (one line); None if its quoting is malformed or left open.

    Unquoted fields lose surrounding spaces and tabs; a quoted field is kept exactly
    (``""`` inside it is one quote). This is the rule for ids and header names alike.
    """
    fields: list[str] = []
    status, _ = _scan(record, delimiter, fields, None)
    return fields if status == _OK else None


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


def _opens_a_field(block: bytes, quote: int, delimiter: bytes) -> bool:
    """Whether the quote at ``quote`` starts a field: only blanks between it and the line's
    start or the end of a delimiter. Errs towards True (the exact path then decides)."""
    k = quote - 1
    while k >= 0 and block[k] in b" \t" and block[k] not in delimiter:
        k -= 1
    return k < 0 or block[k] == 10 or block.endswith(delimiter, 0, k + 1)


def _is_plain(block: bytes, delimiter: str) -> bool:
    """Valid UTF-8 in which no quote opens a field: the vectorised path applies.

    A quote inside an unquoted field (``LP 12" vinyl``) is text, so such a block still
    splits on every delimiter; the first quote that may open a field sends the block to
    the exact per-line reader.
    """
    sep = delimiter.encode()
    q = block.find(b'"')
    while q >= 0:
        if _opens_a_field(block, q, sep):
            return False
        q = block.find(b'"', q + 1)
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


MAX_QUOTED_CHARS = 1 << 20
"""A quoted field spanning lines that is still open after this many characters is taken
for a stray quote: its lines are quarantined and reading starts afresh on the next line
(memory stays bounded whatever the file)."""


class _Open:
    """A record whose quoted field is still open at the end of a line: it runs on."""

    __slots__ = ("chars", "fields", "numbers", "quoted")

    def __init__(self, numbers: list[int], fields: list[str], quoted: list[str], chars: int) -> None:
        self.numbers, self.fields, self.quoted, self.chars = numbers, fields, quoted, chars


def text_batches(
    path: Path, delimiter: str, n_fields: int, wanted: dict[str, int], has_header: bool, batch_rows: int
) -> Iterator[tuple[pa.Table | pd.DataFrame, pd.Series, float]]:
    """Yield (rows, malformed, share of the file read) per batch.

    ``wanted`` maps the columns to return to their field positions in records of
    ``n_fields`` fields. Rows are those columns as strings: an Arrow table with a
    :data:`LINE` column for blocks where no quote opens a field (the common case, no
    Python object per line), else a frame indexed by 1-based line number (a record
    spanning lines has its first line's number); malformed holds a reason for every
    line that is in no record, by line number. Every line after the header is in one
    record (valid or not), or malformed, or blank.
    """
    # At most 1 GiB: a block's lines are one Arrow string array (32-bit offsets).
    block_bytes = min(max(batch_rows * _BYTES_PER_ROW, 1 << 16), 1 << 30)
    size = max(path.stat().st_size, 1)
    consumed = 0
    carry: _Open | None = None  # a quoted field still open at the end of the last line
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
            if carry is None and _is_plain(block, delimiter):
                arr = _block_lines(block).slice(skip)
                rows, malformed = split_plain(arr, numbers[skip:], delimiter, n_fields, wanted)
                yield rows, malformed, done
                continue
            records: list[list[str]] = []
            record_numbers: list[int] = []
            bad: dict[int, str] = {}
            carry = _read_lines(_decode(block)[skip:], numbers[skip:].tolist(), delimiter, n_fields, carry,
                                records, record_numbers, bad)
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
            pd.Series(dict.fromkeys(carry.numbers, "unterminated quote"), dtype="string"),
            1.0,
        )


def _read_lines(
    lines: list[str | None], numbers: list[int], delimiter: str, n_fields: int, carry: _Open | None,
    records: list[list[str]], record_numbers: list[int], bad: dict[int, str],
) -> _Open | None:
    """The exact per-line reader: records into ``records``, reasons into ``bad``.

    Returns the record still open at the end (its quoted field continues on the next line).
    """
    for number, raw in zip(numbers, lines, strict=True):
        if raw is None:
            if carry is not None:
                bad.update(dict.fromkeys(carry.numbers, "unterminated quote"))
                carry = None
            bad[number] = "line is not valid UTF-8"
            continue
        if carry is not None and '"' not in raw:  # wholly inside the open quoted field
            carry.quoted += (raw, "\n")
            carry.numbers.append(number)
            carry.chars += len(raw) + 1
            if carry.chars > MAX_QUOTED_CHARS:
                bad.update(dict.fromkeys(carry.numbers, "unterminated quote"))
                carry = None
            continue
        line = raw.rstrip("\r")  # the line ending (LF or CRLF)
        if carry is None:
            if not line:
                continue  # a blank line is no record
            fields: list[str] = []
            status, quoted = _scan(line, delimiter, fields, None)
            lines_of = [number]
            chars = 0
        else:
            fields, lines_of, chars = carry.fields, carry.numbers, carry.chars
            lines_of.append(number)
            status, quoted = _scan(line, delimiter, fields, carry.quoted)
        if status == _OPEN:
            assert quoted is not None
            quoted.append(raw[len(line):] + "\n")  # inside quotes the line ending is text
            chars += len(raw) + 1
            if chars > MAX_QUOTED_CHARS:
                bad.update(dict.fromkeys(lines_of, "unterminated quote"))
                carry = None
                continue
            carry = _Open(lines_of, fields, quoted, chars)
            continue
        carry = None
        if status == _BAD:
            bad.update(dict.fromkeys(lines_of, "malformed quoting"))
        elif len(fields) != n_fields:
            bad.update(dict.fromkeys(lines_of, f"expected {n_fields} fields, found {len(fields)}"))
        else:
            records.append(fields)
            record_numbers.append(lines_of[0])
    return carry


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


def read_delimited(path: Path, batch_rows: int = 1_000_000) -> tuple[pd.DataFrame, pd.Series]:
    """A whole delimited file with a header, every column as text by the quoting rule above.

    The reader of side files and rules sources, so an id means there what it means in a
    ratings file. Returns (rows indexed by 1-based line number, a reason for each
    malformed line by line number). Raises :class:`IngestError` naming the file for an
    empty file or a header that is malformed or names a column twice.
    """
    first = first_line(path)
    if not first.strip():
        raise IngestError(f"{path}: file is empty (or its first line is blank)")
    delimiter = delimiter_of(first)
    names = split_record(first, delimiter)
    if names is None:
        raise IngestError(f"{path}: malformed quoting in the header line")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise IngestError(f"{path}: column(s) {twice} appear more than once in the header")
    wanted = {name: i for i, name in enumerate(names)}
    frames: list[pd.DataFrame] = []
    malformed: list[pd.Series] = []
    for rows, bad, _ in text_batches(path, delimiter, len(names), wanted, True, batch_rows):
        if isinstance(rows, pa.Table):
            index = pd.Index(rows.column(LINE).to_numpy(), dtype="int64")
            rows = pd.DataFrame({n: pd.Series(rows.column(n).to_numpy(zero_copy_only=False), index=index,
                                              dtype="string") for n in names}, index=index)
        frames.append(rows)
        malformed.append(bad)
    frame = pd.concat(frames) if frames else pd.DataFrame({n: pd.Series(dtype="string") for n in names})
    return frame, pd.concat(malformed) if malformed else pd.Series(dtype="string")
