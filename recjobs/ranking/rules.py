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
from recjobs.data.ids import Vocabulary
from recjobs.db.engine import make_engine
from recjobs.errors import RulesError
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


def read_source(settings: Settings, setting: str, source: str, required: tuple[str, ...]) -> pd.DataFrame:
    """The rows of a rules source as strings (ids) with at least the ``required`` columns.

    ``source`` is a file path (relative paths are under ``settings.home``) or a table name
    in the recommendations database.
    """
    where = f"rules.{setting} = {source!r}"
    if _is_file(source):
        path = Path(source).expanduser()
        path = path if path.is_absolute() else settings.home / path
        if not path.is_file():
            raise RulesError(f"{where}: no such file {path}")
        try:
            if path.suffix.lower() == ".parquet":
                frame = pd.read_parquet(path)
            else:
                with open(path, encoding="utf-8-sig") as fh:
                    sep = "\t" if "\t" in fh.readline() else ","
                frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], sep=sep,
                                    encoding="utf-8-sig")
        except Exception as exc:  # any reader error: say which file, never publish unfiltered
            raise RulesError(f"{where}: cannot read {path}: {exc}") from None
    else:
        if not _TABLE_NAME.match(source):
            raise RulesError(f"{where}: neither a .csv/.parquet path nor a table name")
        engine = make_engine(settings.db_url)
        try:
            with engine.connect() as conn:
                frame = pd.read_sql(sa.text(f"SELECT * FROM {source}"), conn)
        except sa.exc.SQLAlchemyError as exc:
            raise RulesError(f"{where}: cannot read table {source} in {settings.db_url_masked}: "
                             f"{str(exc).splitlines()[0]}") from None
        finally:
            engine.dispose()
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise RulesError(f"{where}: missing column(s) {missing}; it has {list(frame.columns)}")
    ids = [c for c in (C.USER, C.ITEM) if c in required]
    for col in ids:
        empty = frame[col].isna()
        if empty.any():
            raise RulesError(f"{where}: empty {col} in row(s) {_rows(empty)}")
        # Ids are strings everywhere (an integer column of a Parquet file or table included).
        frame[col] = frame[col].astype(str).str.strip()
    return frame


def _rows(mask: pd.Series) -> str:
    # Data rows as a person counts them in a file with a header: the first is row 2.
    positions = np.flatnonzero(mask.to_numpy())[:5] + 2
    more = " ..." if int(mask.sum()) > 5 else ""
    return ", ".join(map(str, positions)) + more


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
        frame = read_source(settings, "user_exclusions", r.user_exclusions, (C.USER, C.ITEM))
        keep = np.ones(len(frame), bool)
        if UNTIL in frame.columns:
            until = pd.to_datetime(frame[UNTIL], errors="coerce", utc=True)
            bad = until.isna() & frame[UNTIL].notna() & (frame[UNTIL].astype(str).str.strip() != "")
            if bad.any():
                raise RulesError(f"rules.user_exclusions = {r.user_exclusions!r}: {UNTIL} is not a date in "
                                 f"row(s) {_rows(bad)}")
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
