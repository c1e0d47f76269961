"""Property-based ingest tests: random files against an independent reading of them.

Text files are read back by Python's ``csv`` module (``strict``, ``skipinitialspace``:
the documented quoting rule, see :mod:`recjobs.ingest._text`), Parquet values by the
documented id and time rules written out plainly here, and the ingest must agree: rows
read, every valid row in the lake exactly once with its id text unchanged, and the
quarantine holding exactly the rest with their line (row) numbers.

Our dialect forgives two things ``csv``'s strict mode refuses: tabs before an opening
quote, and blanks between a closing quote and the delimiter. The generators write
neither, so the oracle's reading is the documented one; the unit tests in
``test_ingest.py`` cover both. Seeds are fixed (``derandomize``) and examples bounded.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, event, example, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from recjobs import columns as C
from recjobs.data import Lake
from recjobs.ingest import IngestError, ingest_file
from recjobs.pipeline import engine_for
from recjobs.runs import cutoff_of
from recjobs.settings import load_settings

FAR = cutoff_of(dt.date(2030, 1, 1))
BASE = 881250949  # 1997-12-04
# No shrinking: each example is a real ingest, and a failure prints its blob to reproduce.
PROFILE = hyp_settings(max_examples=40, deadline=None, derandomize=True, database=None, print_blob=True,
                       phases=[Phase.explicit, Phase.generate],
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MALFORMED = ("expected ", "malformed quoting", "unterminated quote", "line is not valid UTF-8")

csv.field_size_limit(1 << 30)


def _ms(instant: dt.datetime) -> int:
    return int(instant.timestamp()) * 1000 + instant.microsecond // 1000


def _instant(k: int) -> dt.datetime:
    """A distinct instant per row, on a distinct day (so dates are distinct too)."""
    return dt.datetime.fromtimestamp(BASE + k * 86_461, dt.UTC)


@dataclass
class Outcome:
    """What ingesting a file must give."""

    rows_read: int
    lake: dict[tuple[str, str, int], float]  # (user, item, ms) -> rating: the last row of a key wins
    bad: Counter[tuple[int, str]]  # (line or row, "malformed" | "value")
    other_lines: int = 0  # text: blank lines, and the second and later lines of records


@pytest.fixture(scope="module")
def home() -> Iterator[tuple[Path, sa.Engine]]:
    """One home for the module's examples (creating a database per example is most of the time)."""
    with tempfile.TemporaryDirectory(prefix="recjobs-properties-") as tmp:
        engine = engine_for(load_settings({"home": tmp}, environ={}))
        yield Path(tmp), engine
        engine.dispose()


def _ingest(home: tuple[Path, sa.Engine], path: Path, batch_rows: int) -> tuple[object, pd.DataFrame, pd.DataFrame]:
    """Ingest ``path`` into an empty lake and ledger; the report, the lake, the quarantined rows."""
    root, engine = home
    shutil.rmtree(root / "lake", ignore_errors=True)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM ingest_log")
    settings = load_settings({"home": str(root), "ingest": {"max_invalid_share": 1.0, "batch_rows": batch_rows}},
                             environ={})
    report = ingest_file(path, settings, engine)
    lake = Lake.of(settings).read_ratings(FAR)
    bad = (pd.read_parquet(report.quarantine_path) if report.quarantine_path
           else pd.DataFrame({C.SOURCE_ROW: [], C.REASON: []}))
    return report, lake, bad


def _check(report: object, lake: pd.DataFrame, bad: pd.DataFrame, expected: Outcome) -> None:
    assert report.rows_read == expected.rows_read
    ms = (lake[C.TIMESTAMP] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    keys = list(zip(lake[C.USER], lake[C.ITEM], ms.astype(int), strict=True))
    assert len(keys) == len(set(keys)) == len(expected.lake)  # each valid row exactly once
    assert dict(zip(keys, lake[C.RATING].astype(float), strict=True)) == expected.lake  # ids unchanged
    kinds = Counter((int(row), "malformed" if str(why).startswith(MALFORMED) else "value")
                    for row, why in zip(bad[C.SOURCE_ROW], bad[C.REASON], strict=True))
    assert kinds == expected.bad
    assert report.rows_quarantined == sum(expected.bad.values())


# -- delimited text ------------------------------------------------------------------------

SPECIAL_IDS = [
    "NA", "null", "NaN", "None", "0", "007", "-0", "1e3", "7.0", " pad ", "a,b", "tab\there", 'LP 12" vinyl',
    '"quoted"', 'say "hi', "line\nbreak", "\u202eevil\u202c", "a\u200bb", "nul\x00byte", "\U0001f600",
    "'; DROP TABLE ratings;--", "\u2028sep", "\x85nel", "x\x0by", "\ufeffbom", "\\", "ü", "\u05e9\u05dc\u05d5\u05dd",
]
_text_ids = st.one_of(
    st.sampled_from(SPECIAL_IDS),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), min_size=1, max_size=12),
    st.integers(1000, 40_000).map(lambda n: "L" * n),  # long ids: files (and lines) span read blocks
)
# Positions where csv's strict mode and our forgiving dialect could differ if a stray quote
# flipped a field's meaning: blanks right after a quote before a delimiter or line end, and
# a tab before a quote at the start of a field (see the module docstring).
_AMBIGUOUS = re.compile(r'^[ \t]+([,\t\n]|$)|(^|[,\n])[ \t]*\t[ \t]*"')
ids = _text_ids.filter(lambda s: not _AMBIGUOUS.search(s))

RATINGS = {"4": 4.0, "3.5": 3.5, "05": 5.0, "0.5": 0.5, "1e0": 1.0, "x": None, "9": None, "": None, "nan": None,
           "-1": None}
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_MIN_S, _MAX_S = -62_135_596_800, 253_402_300_799  # years 1..9999


def _timestamp_token(k: int, style: int) -> str:
    instant = _instant(k)
    seconds = int(instant.timestamp())
    return [str(seconds), f"{seconds}.250", instant.strftime("%Y-%m-%dT%H:%M:%SZ"),
            instant.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))).isoformat(),
            "not-a-time", ""][style]


def _valid_id(text: str | None) -> bool:
    """The documented id rule, independently: any non-empty text without U+0000 (which
    PostgreSQL text cannot hold, so both databases refuse it at ingest)."""
    return bool(text) and "\x00" not in text


def _parse_rating(text: str) -> float | None:
    """The documented rule, independently: a decimal number within rating_min..rating_max."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if 0.5 <= value <= 5.0 else None


def _parse_time(text: str) -> int | None:
    """The documented rule, independently: Unix seconds (fractions allowed) or ISO 8601, in ms."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        seconds = Decimal(text)
        return int((seconds * 1000).to_integral_value(rounding="ROUND_FLOOR")) if _MIN_S <= seconds <= _MAX_S else None
    try:
        instant = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return _ms(instant if instant.tzinfo else instant.replace(tzinfo=dt.UTC))


def _render(value: str, delimiter: str, quote: bool, pad: int) -> str:
    must = (not value or delimiter in value or "\n" in value or value[0] in ' \t"' or value[-1] in " \t")
    if must or quote:
        return " " * pad + '"' + value.replace('"', '""') + '"'
    return value


@st.composite
def text_files(draw: st.DrawFn) -> tuple[bytes, str, int]:
    """(file bytes, suffix, batch_rows): a header, then records of every kind."""
    delimiter = draw(st.sampled_from([",", "\t"]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    columns = draw(st.permutations([C.USER, C.ITEM, C.RATING, C.TIMESTAMP, "extra"][: draw(st.sampled_from([4, 5]))]))
    quote_header = draw(st.booleans())
    lines = [delimiter.join(_render(c, delimiter, quote_header, 0) for c in columns)]
    n = draw(st.integers(1, 30))
    kinds = ["row"] * 6 + ["blank", "fields", "after_quote"] + (["stray"] if draw(st.booleans()) else [])
    for k in range(n):
        kind = draw(st.sampled_from(kinds))
        if kind == "blank":
            lines.append("")
            continue
        values = {C.USER: draw(ids), C.ITEM: draw(ids), "extra": draw(ids),
                  C.RATING: draw(st.sampled_from(sorted(RATINGS))),
                  C.TIMESTAMP: _timestamp_token(k, draw(st.sampled_from([0, 0, 1, 2, 3, 4, 5])))}
        fields = []
        for col in columns:
            if col in (C.RATING, C.TIMESTAMP):  # leading spaces only: csv skips those too
                fields.append(" " * draw(st.integers(0, 2)) + values[col] if values[col] else "")
            else:
                fields.append(_render(values[col], delimiter, draw(st.booleans()), draw(st.integers(0, 2))))
        if kind == "fields":
            fields = fields[:-1] if draw(st.booleans()) else [*fields, "more"]
        elif kind == "after_quote":
            fields[draw(st.integers(0, len(fields) - 1))] = '"text"after'
        elif kind == "stray":  # opens a field and never closes it there: runs on, as in csv
            fields[draw(st.integers(0, len(fields) - 1))] = '"stray'
        lines.append(delimiter.join(fields))
    text = newline.join(lines) + (newline if draw(st.booleans()) else "")
    data = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + text.encode("utf-8")
    return data, ".csv" if delimiter == "," else ".tsv", draw(st.sampled_from([16, 1_000_000]))


def read_with_csv(data: bytes, delimiter: str) -> Outcome:
    """What the ingest must give, from Python's csv module's reading of the file."""
    handle = io.StringIO(data.decode("utf-8-sig"), newline="")
    reader = csv.reader(handle, delimiter=delimiter, quotechar='"', doublequote=True, strict=True,
                        skipinitialspace=True)
    header = next(reader)
    pos = {name: header.index(name) for name in (C.USER, C.ITEM, C.RATING, C.TIMESTAMP)}
    out = Outcome(0, {}, Counter())
    last = reader.line_num
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error:  # strict: text after a closing quote, or a quote open at the end
            fields = None
        first, last = last + 1, reader.line_num
        if fields == []:
            out.other_lines += 1  # a blank line
            continue
        if fields is None or len(fields) != len(header):
            out.rows_read += last - first + 1  # every line of a malformed record is quarantined
            out.bad.update((line, "malformed") for line in range(first, last + 1))
            continue
        out.rows_read += 1
        out.other_lines += last - first
        user, item = fields[pos[C.USER]], fields[pos[C.ITEM]]
        rating, ms = _parse_rating(fields[pos[C.RATING]]), _parse_time(fields[pos[C.TIMESTAMP]])
        if _valid_id(user) and _valid_id(item) and rating is not None and ms is not None:
            out.lake.pop((user, item, ms), None)
            out.lake[(user, item, ms)] = rating
        else:
            out.bad[(first, "value")] += 1
    return out


@PROFILE
@given(text_files())
# An id holding U+0000 is a bad value, not a row (drawn by chance only in some runs' examples).
@example((b"user_id,item_id,rating,timestamp\nnul\x00id,i1,4,881250949\nu1,i\x00,4,881250949\nu1,i1,4,881250949\n",
          ".csv", 16))
def test_text_files_ingest_as_pythons_csv_module_reads_them(home: tuple[Path, sa.Engine],
                                                            case: tuple[bytes, str, int]) -> None:
    data, suffix, batch_rows = case
    expected = read_with_csv(data, "," if suffix == ".csv" else "\t")
    lines_after_header = data.count(b"\n") + (0 if data.endswith(b"\n") else 1) - 1
    # Rows read + quarantined lines + the rest (blank, continuation) = every line after the header.
    assert expected.rows_read + expected.other_lines == lines_after_header
    event(f"{suffix}, {'several read blocks' if batch_rows == 16 and len(data) > 1 << 16 else 'one read block'}")
    if any(kind == "malformed" for _, kind in expected.bad):
        event("malformed lines")
    if b'"stray' in data:
        event("a stray quote")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"ratings{suffix}"
        path.write_bytes(data)
        if expected.rows_read == 0:
            with pytest.raises(IngestError, match="no data rows"):
                _ingest(home, path, batch_rows)
            return
        report, lake, bad = _ingest(home, path, batch_rows)
    _check(report, lake, bad, expected)


# -- Parquet -------------------------------------------------------------------------------

def _float_id(value: float) -> str | None:
    """The documented rule: whole floats as integers, others as the shortest round-trip text."""
    if math.isnan(value) or math.isinf(value):
        return None
    return str(int(value)) if value == int(value) else repr(value)


@st.composite
def id_columns(draw: st.DrawFn, n: int) -> tuple[pa.Array, list[str | None]]:
    """An id column of a random type, and each row's id text (None: invalid)."""
    kind = draw(st.sampled_from(["int", "float", "string", "dictionary", "large_string"]))
    if kind == "int":
        values = draw(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=n, max_size=n))
        return pa.array(values, pa.int64()), [None if v is None else str(v) for v in values]
    if kind == "float":
        values = draw(st.lists(st.one_of(st.none(), st.floats(), st.integers(-(10**6), 10**6).map(float)),
                               min_size=n, max_size=n))
        return pa.array(values, pa.float64()), [None if v is None else _float_id(v) for v in values]
    values = draw(st.lists(st.one_of(st.none(), _text_ids, st.just("")), min_size=n, max_size=n))
    arr = pa.array(values, pa.large_string() if kind == "large_string" else pa.string())
    if kind == "dictionary":
        arr = arr.dictionary_encode()
    return arr, [v or None for v in values]


@st.composite
def rating_columns(draw: st.DrawFn, n: int) -> tuple[pa.Array, list[float | None]]:
    kind = draw(st.sampled_from(["float", "int", "string"]))
    if kind == "string":
        tokens = draw(st.lists(st.sampled_from(sorted(RATINGS)), min_size=n, max_size=n))
        return pa.array(tokens, pa.string()), [RATINGS[t] for t in tokens]
    if kind == "int":
        values = draw(st.lists(st.one_of(st.none(), st.integers(-3, 9)), min_size=n, max_size=n))
        return pa.array(values, pa.int64()), [float(v) if v is not None and 0.5 <= v <= 5 else None for v in values]
    values = draw(st.lists(st.one_of(st.none(), st.sampled_from([0.5, 1.0, 3.75, 5.0, 5.5, -1.0, float("nan")])),
                           min_size=n, max_size=n))
    return pa.array(values, pa.float64()), [v if v is not None and 0.5 <= v <= 5 else None for v in values]


@st.composite
def time_columns(draw: st.DrawFn, n: int) -> tuple[pa.Array, list[int | None]]:
    """A timestamp column of a random type; each row's instant differs (its day too)."""
    kind = draw(st.sampled_from(["int", "float", "iso", "ts_ms", "ts_us_naive", "ts_ns", "date"]))
    broken = draw(st.lists(st.booleans(), min_size=n, max_size=n)) if draw(st.booleans()) else [False] * n
    instants = [_instant(k) for k in range(n)]
    seconds = [int(i.timestamp()) for i in instants]
    if kind == "int":
        values = [None if b else s for s, b in zip(seconds, broken, strict=True)]
        return pa.array(values, pa.int64()), [None if v is None else v * 1000 for v in values]
    if kind == "float":
        values = [float("nan") if b else s + 0.25 for s, b in zip(seconds, broken, strict=True)]
        return pa.array(values, pa.float64()), [None if b else s * 1000 + 250 for s, b in zip(seconds, broken,
                                                                                             strict=True)]
    if kind == "iso":
        values = ["whenever" if b else i.isoformat() for i, b in zip(instants, broken, strict=True)]
        return pa.array(values, pa.string()), [None if b else _ms(i) for i, b in zip(instants, broken, strict=True)]
    if kind == "date":
        values = [None if b else i.date() for i, b in zip(instants, broken, strict=True)]
        return pa.array(values, pa.date32()), [
            None if v is None else _ms(dt.datetime.combine(v, dt.time(), dt.UTC)) for v in values]
    unit = {"ts_ms": "ms", "ts_us_naive": "us", "ts_ns": "ns"}[kind]
    per_second = {"ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    extra = 123_456_789 * per_second // 10**9  # 0.123456789 s in this unit: truncated to 123 ms
    values = [None if b else s * per_second + extra for s, b in zip(seconds, broken, strict=True)]
    arr = pa.array(values, pa.timestamp(unit, tz=None if kind == "ts_us_naive" else "UTC"))
    return arr, [None if v is None else s * 1000 + 123 for v, s in zip(values, seconds, strict=True)]


@st.composite
def parquet_files(draw: st.DrawFn) -> tuple[pa.Table, Outcome, int, int]:
    n = draw(st.integers(1, 25))
    users, user_text = draw(id_columns(n))
    items, item_text = draw(id_columns(n))
    ratings, rating_value = draw(rating_columns(n))
    times, time_ms = draw(time_columns(n))
    columns = {C.USER: users, C.ITEM: items, C.RATING: ratings, C.TIMESTAMP: times}
    if draw(st.booleans()):
        columns["extra"] = pa.array(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)))
    order = draw(st.permutations(sorted(columns)))
    table = pa.table({name: columns[name] for name in order})
    expected = Outcome(n, {}, Counter())
    for row, (u, i, r, ms) in enumerate(zip(user_text, item_text, rating_value, time_ms, strict=True), start=1):
        if _valid_id(u) and _valid_id(i) and r is not None and ms is not None:
            expected.lake.pop((u, i, ms), None)
            expected.lake[(u, i, ms)] = r
        else:
            expected.bad[(row, "value")] += 1
    return table, expected, draw(st.integers(1, 10)), draw(st.sampled_from([3, 1_000_000]))


@PROFILE
@given(parquet_files())
def test_parquet_files_of_random_column_types_ingest_by_the_documented_rules(
        home: tuple[Path, sa.Engine], case: tuple[pa.Table, Outcome, int, int]) -> None:
    table, expected, row_group, batch_rows = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ratings.parquet"
        pq.write_table(table, path, row_group_size=row_group)
        report, lake, bad = _ingest(home, path, batch_rows)
    _check(report, lake, bad, expected)
