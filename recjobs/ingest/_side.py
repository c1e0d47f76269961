"""Side files: user and item features, and item titles, into the lake's side tables.

Formats (CSV with a header, or Parquet with the same columns):

* item features: ``item_id,feature[,weight]``, one row per (item, feature), e.g.
  ``50,genre=Sci-Fi``; weight defaults to 1;
* user features: ``user_id,feature[,weight]``, e.g. ``196,occupation=writer``;
* item titles: ``item_id,title``.

Text files are read by the ratings' text reader (:mod:`recjobs.ingest._text`: the same
quoting rule, so an id is the same text in every file; malformed lines are quarantined
by line number), Parquet ids by the one id rule (:func:`recjobs.data.ids.id_text`:
``239.0`` is item ``239``). A new file replaces the features of the ids it names and
keeps the others, so files can be delivered whole or as updates. Rows are validated
like ratings: empty ids or features, and weights that are not a number or do not fit
the table's float32, are quarantined with a reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy.engine import Engine

from recjobs import columns as C
from recjobs.data.ids import id_text
from recjobs.data.lake import SIDE_KINDS, Lake, LakeWriter
from recjobs.db.schema import items as items_table
from recjobs.errors import IngestError, LakeLockTimeout
from recjobs.files import write_parquet
from recjobs.ingest._layout import sniff_kind
from recjobs.ingest._parquet import read_parquet_frame
from recjobs.ingest._report import IngestReport, file_sha256
from recjobs.ingest._text import read_delimited
from recjobs.ingest.ledger import (
    DEFAULT_WAIT_SECONDS,
    record_ingest,
    record_rejection,
    reserve,
    seen_before,
    write_transaction,
)
from recjobs.settings import Settings

log = logging.getLogger(__name__)


def _read_any(path: Path, settings: Settings) -> tuple[pd.DataFrame, pd.Series]:
    """A side file's rows (ids and values as text by the ingest rules, indexed by line or
    row number) and its malformed lines' reasons."""
    if path.suffix.lower() != ".parquet":
        return read_delimited(path, settings.ingest.batch_rows)

    def as_text(name: str, kind: pa.DataType) -> bool:  # a numeric weight stays a number
        return not (name == C.WEIGHT and (pa.types.is_integer(kind) or pa.types.is_floating(kind)))

    frame = read_parquet_frame(path, as_text)
    if C.WEIGHT in frame.columns and pd.api.types.is_numeric_dtype(frame[C.WEIGHT]):
        frame[C.WEIGHT] = frame[C.WEIGHT].astype(float)
    return frame, pd.Series(dtype="string")


def ingest_side_frame(
    writer: LakeWriter, frame: pd.DataFrame, kind: str, source: str,
    check: Callable[[int, pd.DataFrame], None] | None = None, malformed: pd.Series | None = None,
) -> tuple[int, int, pd.DataFrame]:
    """Validate and merge a side frame; returns (rows valid, rows quarantined, quarantined rows).

    ``frame``'s ids and values are text as the reader gave them (kept exactly: the
    reader applied the quoting rule); its index numbers the rows in quarantine.
    ``malformed`` holds reasons for lines that are no row, by line number. ``writer``
    holds the lake's lock (the merge is a read-modify-write of the side table).
    ``check(n_bad, bad_rows)`` runs before anything is written and may raise to refuse
    the whole frame.
    """
    key = SIDE_KINDS[kind]
    value_col = C.TITLE if kind == "items" else C.FEATURE
    missing = [c for c in (key, value_col) if c not in frame.columns]
    if missing:
        raise IngestError(f"{source}: missing required columns {missing} for {kind}")
    ids = pd.Series(id_text(frame[key]), index=frame.index, dtype=object)
    values = pd.Series(id_text(frame[value_col]), index=frame.index, dtype=object)
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    reason[ids.isna() | (ids == "")] = f"empty {key}"
    if kind != "items":
        reason[reason.isna() & (values.isna() | (values == ""))] = "empty feature"
        weights = (
            pd.to_numeric(frame[C.WEIGHT], errors="coerce").astype("float64")
            if C.WEIGHT in frame.columns
            else pd.Series(1.0, index=frame.index)
        )
        with np.errstate(over="ignore"):
            weights32 = weights.to_numpy(dtype=np.float64, na_value=np.nan).astype(np.float32)
        finite = np.isfinite(weights.to_numpy(dtype=np.float64, na_value=np.nan))
        reason[reason.isna() & ~finite] = "weight is not a number"
        # The side table holds float32: check after the cast (1e39 is finite only in float64).
        reason[reason.isna() & ~np.isfinite(weights32)] = "weight is beyond float32's range"
    good = reason.isna()
    bad = frame[~good].assign(**{C.REASON: reason[~good], C.SOURCE_ROW: frame.index[~good]})
    if malformed is not None and len(malformed):
        lines = pd.DataFrame({c: pd.Series(pd.NA, index=malformed.index, dtype="string") for c in frame.columns})
        bad = pd.concat([bad, lines.assign(**{C.REASON: malformed, C.SOURCE_ROW: malformed.index})])
        bad = bad.sort_values(C.SOURCE_ROW, kind="stable")
    clean = pd.DataFrame({key: ids[good], value_col: values[good]})
    if kind != "items":
        clean[C.WEIGHT] = weights32[good.to_numpy()]
    if check is not None:
        check(len(bad), bad)
    old = writer.lake.read_side(kind)
    if old is not None:
        old = old[~old[key].isin(set(clean[key]))]
        clean = pd.concat([old, clean], ignore_index=True)
    subset = [key] if kind == "items" else [key, C.FEATURE]
    clean = clean.drop_duplicates(subset, keep="last").sort_values(subset, kind="stable")
    writer.write_side(kind, pa.Table.from_pandas(clean.reset_index(drop=True), preserve_index=False))
    return int(good.sum()), len(bad), bad


def ingest_side_file(path: Path | str, settings: Settings, engine: Engine, kind: str | None = None, *,
                     force: bool = False) -> IngestReport:
    """Ingest a features or titles file (see the module docstring).

    Skipped if its content was seen before, as a ratings file is (:func:`recjobs.ingest.ingest_file`);
    ``force`` reads and validates it again whatever the ledger says.
    """
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    digest = file_sha256(path)
    report = IngestReport(source_path=str(path), content_hash=digest)
    if not force and seen_before(engine, report, settings):
        return report
    kind = kind or sniff_kind(path, settings)
    try:
        frame, malformed = _read_any(path, settings)
        if frame.empty and not len(malformed):
            raise IngestError(f"{path}: no data rows")
        report.rows_read = len(frame) + len(malformed)
        # The side file's merge is a read-modify-write of the lake, like a ratings merge.
        wait = settings.ingest.lock_timeout_seconds
        with Lake.of(settings).writer() as writer:
            reserve(engine, report, kind, wait_seconds=wait)
            report.rows_valid, report.rows_quarantined, bad = ingest_side_frame(
                writer, frame, kind, str(path), check=lambda n_bad, bad: _check_share(
                    report, settings, bad, kind, n_bad), malformed=malformed)
            if kind == "items":
                sync_titles(writer.lake, engine, wait_seconds=wait)
            record_ingest(engine, report, kind=kind, wait_seconds=wait)
    except LakeLockTimeout as exc:
        raise IngestError(f"{path}: {exc}") from None
    except IngestError as exc:
        record_rejection(engine, report, kind, str(exc), settings)
        raise
    return report


def _check_share(
    report: IngestReport, settings: Settings, bad: pd.DataFrame, kind: str, n_bad: int
) -> None:
    report.rows_quarantined = n_bad
    if report.rows_quarantined:
        qpath = Lake.of(settings).quarantine_path(report.content_hash)
        rows = bad.astype({c: "string" for c in bad.columns if c != C.SOURCE_ROW}).astype({C.SOURCE_ROW: "int64"})
        rows.insert(0, C.SOURCE_FILE, report.source_path)
        write_parquet(pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False), qpath)
        report.quarantine_path = str(qpath)
    share = report.rows_quarantined / max(report.rows_read, 1)
    if share > settings.ingest.max_invalid_share:
        raise IngestError(f"{report.source_path}: {report.rows_quarantined} of {report.rows_read} {kind} rows "
                          f"invalid ({share:.2%}); bad rows: {report.quarantine_path}")


def sync_titles(lake: Lake, engine: Engine, *, wait_seconds: float = DEFAULT_WAIT_SECONDS) -> None:
    """Copy item titles from the lake into the ``items`` table, for apps and the dashboard.

    Waits up to ``wait_seconds`` for a busy database (see :func:`~recjobs.ingest.ledger.write_transaction`).
    """
    titles = lake.read_side("items")
    if titles is None:
        return
    with write_transaction(engine, wait_seconds, "items table") as conn:
        conn.execute(items_table.delete())
        conn.execute(items_table.insert(), titles[[C.ITEM, C.TITLE]].to_dict("records"))
