"""Business rules on published lists: an exclusion list, an allow-list, per-user exclusions.

The sources are named in the ``rules`` settings (see :class:`recjobs.settings.RulesSettings`):
each is a CSV/Parquet file or a table in the recommendations database, read whenever a
list is ranked (each publish shard, each evaluation), so a source refreshed every night
takes effect the next night. A source that cannot be read fails the stage: publishing
unfiltered lists is worse than publishing none.

Item rules (exclude, allow) act on every list, recommendations and similar items alike;
per-user exclusions join the items a user has seen in the exclusion matrix handed to the
model, so the model never returns them.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import sqlalchemy as sa

from recjobs import columns as C
from recjobs.data.ids import Vocabulary, id_text
from recjobs.db.engine import make_engine
from recjobs.errors import IngestError, RulesError
from recjobs.ingest import read_delimited, read_parquet_frame
from recjobs.settings import Settings

log = logging.getLogger(__name__)

UNTIL = "until"
_FILE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def rules_active(settings: Settings) -> bool:
    """Whether any business rule is configured."""
    r = settings.rules
    return any(v is not None for v in (r.exclude_items, r.allow_items, r.user_exclusions))


def _is_file(source: str) -> bool:
    return source.lower().endswith(_FILE_SUFFIXES) or "/" in source or "\\" in source


def read_source(settings: Settings, setting: str, source: str, required: tuple[str, ...],
                dates: tuple[str, ...] = ()) -> pd.DataFrame:
    """The rows of a rules source, ids as text by the ingest rule, with at least the ``required`` columns.

    ``source`` is a file path (relative paths are under ``settings.home``) or a table name
    in the recommendations database. Read as ratings are: a CSV/TSV file by the ratings'
    text reader (a quoted id kept exactly, an unquoted one without surrounding blanks),
    every id through :func:`recjobs.data.ids.id_text` (Parquet or table floats: ``239.0``
    is ``239``). Columns named in ``dates`` that the source has are parsed as dates (see
    :func:`_dates`). The index numbers the rows as messages name them: file lines for text,
    1-based rows otherwise. Any problem is a :class:`RulesError` naming the setting.
    """
    where = f"rules.{setting} = {source!r}"
    unit = "row"
    if _is_file(source):
        path = Path(source).expanduser()
        path = path if path.is_absolute() else settings.home / path
        if not path.is_file():
            raise RulesError(f"{where}: no such file {path}")
        if path.suffix.lower() == ".parquet":
            frame = _read_parquet(path, where, required)
        else:
            frame, unit = _read_text(path, where), "line"
    else:
        if not _TABLE_NAME.match(source):
            raise RulesError(f"{where}: neither a .csv/.parquet path nor a table name")
        frame = _read_table(settings, source, where)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise RulesError(f"{where}: missing column(s) {missing}; it has {list(frame.columns)}")
    for col in (c for c in (C.USER, C.ITEM) if c in required):
        try:
            text = pd.Series(id_text(frame[col]), index=frame.index, dtype=object)
        except TypeError:
            raise RulesError(f"{where}: column {col} has type {frame[col].dtype}, which cannot be an id") from None
        empty = text.isna() | (text == "")
        if empty.any():
            raise RulesError(f"{where}: empty {col} in {unit}(s) {_rows(empty)}")
        frame[col] = text
    for col in (c for c in dates if c in frame.columns):
        frame[col] = _dates(frame[col], f"{where}: {col}", unit)
    return frame


def _read_text(path: Path, where: str) -> pd.DataFrame:
    try:
        frame, malformed = read_delimited(path)
    except (IngestError, OSError) as exc:
        raise RulesError(f"{where}: cannot read {path}: {exc}") from None
    if len(malformed):
        shown = ", ".join(f"{line} ({why})" for line, why in malformed.sort_index().head(5).items())
        more = " ..." if len(malformed) > 5 else ""
        raise RulesError(f"{where}: malformed line(s) {shown}{more}")
    return frame


def _read_parquet(path: Path, where: str, ids: tuple[str, ...]) -> pd.DataFrame:
    try:  # ids by the id rule on the Arrow column (dictionaries and decimals included)
        return read_parquet_frame(path, lambda name, _kind: name in ids)
    except IngestError as exc:
        raise RulesError(f"{where}: {exc}") from None


def _read_table(settings: Settings, source: str, where: str) -> pd.DataFrame:
    try:
        engine = make_engine(settings.db_url)
    except sa.exc.SQLAlchemyError as exc:
        raise RulesError(f"{where}: cannot open {settings.db_url_masked}: {_first_line(exc)}") from None
    try:
        with engine.connect() as conn:
            frame = pd.read_sql(sa.text(f"SELECT * FROM {source}"), conn)
    # pandas wraps a failed query in its own DatabaseError (a missing table in an existing database).
    except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
        raise RulesError(f"{where}: cannot read table {source} in {settings.db_url_masked}: "
                         f"{_first_line(exc)}") from None
    finally:
        engine.dispose()
    return frame.set_axis(pd.RangeIndex(1, len(frame) + 1))


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) and exc.__cause__ else exc
    text = str(getattr(cause, "orig", None) or cause).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dates(values: pd.Series, what: str, unit: str) -> pd.Series:
    """A column of dates (UTC timestamps; NaT where empty): date/timestamp values, or ISO 8601 text.

    Numbers are refused (seconds? days? nanoseconds?), as is any text that is not an
    ISO 8601 date or time (``2026-02-01``, ``2026-02-01T10:00+01:00``).
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.dt.tz_localize("UTC")
    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        raise RulesError(f"{what} is not a date: it is a column of numbers ({values.dtype}); "
                         "write dates (2026-02-01)")
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    text = values.map(lambda v: v.strip() if isinstance(v, str) else v)
    given = text.notna() & (text != "")
    is_text = given & text.map(lambda v: isinstance(v, str))
    is_date = given & text.map(lambda v: isinstance(v, dt.date | pd.Timestamp))
    if is_text.any():
        out[is_text] = pd.to_datetime(text[is_text], format="ISO8601", utc=True, errors="coerce")
    if is_date.any():
        out[is_date] = pd.to_datetime(text[is_date], utc=True, errors="coerce")
    bad = given & out.isna()
    if bad.any():
        raise RulesError(f"{what} is not an ISO 8601 date in {unit}(s) {_rows(bad)}")
    return out


def _rows(mask: pd.Series) -> str:
    # The index numbers rows as a person counts them: file lines, or 1-based rows.
    numbers = mask.index[mask.to_numpy()][:5].tolist()
    more = " ..." if int(mask.sum()) > 5 else ""
    return ", ".join(map(str, numbers)) + more


@dataclass(frozen=True)
class Rules:
    """The rules resolved against a model's ids.

    ``blocked`` marks items no list may contain (None: none); ``user_excluded`` is a
    users x items matrix of per-user exclusions (None: none).
    """

    blocked: np.ndarray | None
    user_excluded: sp.csr_matrix | None

    def exclude(self, seen: sp.csr_matrix) -> sp.csr_matrix:
        """``seen`` with the per-user exclusions added: what the model must not return."""
        if self.user_excluded is None:
            return seen
        both = (seen != 0).astype(np.float32) + self.user_excluded
        both.data[:] = 1.0
        return both.tocsr()


def blocked_items(settings: Settings, item_ids: np.ndarray) -> np.ndarray | None:
    """Which of ``item_ids`` no list may contain (``rules.exclude_items``, ``rules.allow_items``); None: no item rule.

    Ids a source names that are not in ``item_ids`` are ignored (they cannot be
    recommended anyway); their count is logged.
    """
    r = settings.rules
    items = Vocabulary(item_ids)
    blocked = None
    if r.exclude_items is not None:
        frame = read_source(settings, "exclude_items", r.exclude_items, (C.ITEM,))
        pos = items.positions(frame[C.ITEM])
        blocked = np.zeros(len(item_ids), bool)
        blocked[pos[pos >= 0]] = True
        log.info("rules.exclude_items: %d item(s) excluded (%d unknown id(s) ignored)",
                 int(blocked.sum()), int((pos < 0).sum()))
    if r.allow_items is not None:
        frame = read_source(settings, "allow_items", r.allow_items, (C.ITEM,))
        pos = items.positions(frame[C.ITEM])
        allowed = np.zeros(len(item_ids), bool)
        allowed[pos[pos >= 0]] = True
        if not allowed.any():
            log.warning("rules.allow_items: none of its %d item(s) is in the catalogue: every list is empty",
                        len(frame))
        blocked = ~allowed if blocked is None else blocked | ~allowed
        log.info("rules.allow_items: %d of %d item(s) allowed", int(allowed.sum()), len(item_ids))
    return blocked


def load_rules(settings: Settings, day: dt.date, user_ids: np.ndarray, item_ids: np.ndarray) -> Rules:
    """Read the configured sources and resolve them against ``user_ids`` and ``item_ids`` (see :func:`blocked_items`)."""
    r = settings.rules
    items = Vocabulary(item_ids)
    blocked = blocked_items(settings, item_ids)
    user_excluded = None
    if r.user_exclusions is not None:
        frame = read_source(settings, "user_exclusions", r.user_exclusions, (C.USER, C.ITEM), dates=(UNTIL,))
        keep = np.ones(len(frame), bool)
        if UNTIL in frame.columns:
            until = frame[UNTIL]
            # A pair applies through its `until` day; no `until`: for good.
            keep = (until.isna() | (until.dt.date >= day)).to_numpy()
        rows = Vocabulary(user_ids).positions(frame[C.USER])
        cols = items.positions(frame[C.ITEM])
        ok = keep & (rows >= 0) & (cols >= 0)
        user_excluded = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (rows[ok], cols[ok])),
                                      shape=(len(user_ids), len(item_ids)))
        user_excluded.sum_duplicates()
        user_excluded.data[:] = 1.0
        log.info("rules.user_exclusions: %d pair(s) in force (%d expired, %d with unknown ids)",
                 user_excluded.nnz, int((~keep).sum()), int((keep & ~ok).sum()))
    return Rules(blocked, user_excluded)


def compact(top: np.ndarray, scores: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``top``/``scores`` with the ``drop``ped and padding slots removed, order kept, padded at the end."""
    keep = (top >= 0) & ~drop
    order = np.argsort(~keep, axis=1, kind="stable")
    kept = np.take_along_axis(keep, order, axis=1)
    top = np.where(kept, np.take_along_axis(top, order, axis=1), -1)
    scores = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf).astype(np.float32)
    return top, scores


def drop_blocked(top: np.ndarray, scores: np.ndarray, blocked: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``top``/``scores`` without the ``blocked`` items (see :func:`compact`)."""
    if blocked is None:
        return top, scores
    return compact(top, scores, blocked[np.maximum(top, 0)] & (top >= 0))
