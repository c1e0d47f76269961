"""Row validation: ids present, rating a number in range, timestamp parseable.

Two implementations with one set of rules: a vectorised one for the common shapes of
plain text (decimals, whole Unix seconds), and :func:`validate` for everything else.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recjobs import columns as C
from recjobs.data.lake import SEQ, to_ratings_table
from recjobs.ingest._text import LINE
from recjobs.settings import Settings

NUL = "\x00"

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


# Longest part of an unknown event type quoted in its row's reason (the quarantine keeps it whole).
_SHOWN_TYPE = 40


def describe_type(value: str) -> str:
    """An event type as a reason shows it: quoted with escapes (one line, whatever it holds), cut short."""
    if len(value) <= _SHOWN_TYPE:
        return repr(value)
    return f"{value[:_SHOWN_TYPE]!r}... ({len(value)} characters)"


def _event_types(frame: pd.DataFrame, settings: Settings) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(the event type as text, whether the row is typed, a reason per row with an unknown type)."""
    if C.EVENT_TYPE not in frame.columns:
        empty = pd.Series(pd.NA, index=frame.index, dtype="string")
        return empty, pd.Series(False, index=frame.index), empty
    raw = frame[C.EVENT_TYPE]
    text = raw.astype("string") if not pd.api.types.is_float_dtype(raw.dtype) else (
        raw.map(lambda v: None if pd.isna(v) else repr(v)).astype("string"))
    typed = (text.notna() & (text != "")).fillna(False).astype(bool)
    known = sorted(settings.feedback.known_types)
    unknown = typed & ~text.isin(known).fillna(False).astype(bool)
    why = pd.Series(pd.NA, index=frame.index, dtype="string")
    if unknown.any():
        why[unknown] = [f"unknown event_type {describe_type(v)} (feedback.weights / feedback.exclude)"
                        for v in text[unknown]]
    return text, typed, why


def validate(frame: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, pd.Series]:
    """Split a batch of raw columns into valid typed rows and a reason per bad row.

    A row with an event type (settings.feedback) needs no rating: its type says what it weighs,
    so its rating is kept where it is a valid one and left empty (NaN) otherwise.
    """
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")

    def flag(mask: pd.Series, why: str) -> None:
        mask = mask.fillna(True).astype(bool) & reason.isna()
        reason[mask] = why

    user = frame[C.USER].astype("string")
    item = frame[C.ITEM].astype("string")
    flag(user.isna() | (user == ""), "empty user_id")
    flag(item.isna() | (item == ""), "empty item_id")
    # PostgreSQL's text cannot hold U+0000: one rule for both databases, at the door.
    flag(user.str.contains(NUL, regex=False), "user_id contains a NUL character (U+0000)")
    flag(item.str.contains(NUL, regex=False), "item_id contains a NUL character (U+0000)")
    event_type, typed, unknown_type = _event_types(frame, settings)
    bad_type = unknown_type.notna()
    reason[bad_type & reason.isna()] = unknown_type[bad_type & reason.isna()]
    raw_rating = frame[C.RATING]
    if pd.api.types.is_numeric_dtype(raw_rating.dtype):
        rating = raw_rating.astype("float64")
    else:
        rating = pd.to_numeric(raw_rating.astype("string").str.strip(), errors="coerce")
        rating = rating.astype("float64")
    lo, hi = settings.ingest.rating_min, settings.ingest.rating_max
    if C.EVENT_TYPE in frame.columns and raw_rating.isna().all() and settings.ingest.default_rating is None:
        flag(~typed, "no event_type and no rating (and ingest.default_rating is unset)")
    flag(~typed & rating.isna(), "rating is not a number")
    flag(~typed & ~rating.between(lo, hi), f"rating outside [{lo:g}, {hi:g}]")
    rating = rating.where(rating.between(lo, hi))  # typed rows: a valid rating or none
    ts = parse_timestamps(frame[C.TIMESTAMP])
    flag(ts.isna(), "timestamp is not Unix seconds or ISO 8601")
    good = reason.isna()
    valid = pd.DataFrame(
        {
            C.USER: user[good].astype(object),
            C.ITEM: item[good].astype(object),
            C.RATING: rating[good].astype("float32"),
            C.TIMESTAMP: ts[good],
            C.EVENT_TYPE: event_type[good].astype(object).where(typed[good], None),
        }
    )
    return valid, reason[~good]


_PLAIN_RATING = r"^[0-9]{1,6}(\.[0-9]{1,6})?$"
_PLAIN_SECONDS = r"^[0-9]{1,11}$"  # below _MAX_S, so always in range


def validate_plain(
    table: pa.Table, settings: Settings
) -> tuple[pa.Table, pd.DataFrame]:
    """Vectorised validation of a text batch: (valid rows for the spill, the rest to check).

    The rest is returned as the string frame :func:`validate` takes, indexed by line.
    """
    user = table.column(C.USER).combine_chunks()
    item = table.column(C.ITEM).combine_chunks()
    ok = np.asarray(pc.greater(pc.utf8_length(user), 0), dtype=bool)
    ok &= np.asarray(pc.greater(pc.utf8_length(item), 0), dtype=bool)
    # A NUL goes to validate(), which names it (see there).
    ok &= ~np.asarray(pc.match_substring(user, NUL), dtype=bool) & ~np.asarray(pc.match_substring(item, NUL), dtype=bool)
    typed = np.zeros(table.num_rows, dtype=bool)
    event_type = None
    if C.EVENT_TYPE in table.column_names:
        event_type = table.column(C.EVENT_TYPE).combine_chunks()
        typed = np.asarray(pc.fill_null(pc.greater(pc.utf8_length(event_type), 0), False), dtype=bool)
        known = pa.array(sorted(settings.feedback.known_types), pa.string())
        # An unknown type goes to validate(), which names it.
        ok &= ~typed | np.asarray(pc.fill_null(pc.is_in(event_type, value_set=known), False), dtype=bool)
    if C.RATING in table.column_names:
        raw = table.column(C.RATING).combine_chunks()
        plain = pc.match_substring_regex(raw, _PLAIN_RATING)
        rating = pc.cast(pc.if_else(plain, raw, "0"), pa.float64()).to_numpy()
        lo, hi = settings.ingest.rating_min, settings.ingest.rating_max
        in_range = np.asarray(plain, dtype=bool) & (rating >= lo) & (rating <= hi)
        # Typed rows need no rating (see validate()): a bad one is left empty.
        ok &= typed | in_range
        rating = np.where(in_range, rating, np.nan)
    else:
        default = settings.ingest.default_rating
        rating = np.full(table.num_rows, np.nan if default is None else default, dtype=np.float64)
        if default is None:
            ok &= typed  # validate() names the untyped rows of an event log without a default rating
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
        C.EVENT_TYPE: (pa.nulls(int(ok.sum()), pa.string()) if event_type is None
                       else pc.if_else(pa.array(typed), event_type, pa.scalar(None, pa.string())).filter(mask)),
        SEQ: table.column(LINE).filter(mask),
    })
    rest = table.filter(pc.invert(mask))
    index = pd.Index(rest.column(LINE).to_numpy(), dtype="int64")
    frame = pd.DataFrame(
        {c: pd.Series(rest.column(c).to_numpy(zero_copy_only=False), index=index, dtype="string")
         for c in rest.column_names if c != LINE},
        index=index,
    )
    return valid, frame


def valid_to_arrow(valid: pd.DataFrame) -> pa.Table:
    """:func:`validate`'s valid rows in the spill's layout; the row/line number orders them."""
    table = to_ratings_table(valid)
    return table.append_column(SEQ, pa.array(valid.index.to_numpy(dtype=np.int64)))
