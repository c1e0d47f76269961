"""Ingest: validate rating files and merge them into the Parquet lake.

Accepted inputs:

* MovieLens ``u.data``: tab-separated ``user item rating timestamp``, no header;
* CSV with a header naming ``user_id,item_id,rating,timestamp`` (other columns are
  ignored; timestamps as Unix seconds or ISO 8601);
* Parquet with those columns.

Each row is checked; bad rows go to a quarantine Parquet file with the reason,
good rows are merged into ``dt=YYYY-MM-DD`` partitions, de-duplicated on
(user, item, timestamp). A file whose invalid share passes the configured limit is
rejected whole (quarantine still written, so the bad rows can be inspected).
Files are remembered by content hash, so ingesting one again changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recjobs import columns as C
from recjobs.db import ingest_log
from recjobs.lake import atomic_write_parquet, merge_partition
from recjobs.settings import Settings

log = logging.getLogger(__name__)

INBOX_PATTERNS = ("*.csv", "*.tsv", "*.data", "*.parquet")
REQUIRED = C.INTERACTION_COLUMNS


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

    def summary(self) -> str:
        if self.skipped:
            return f"{self.source_path}: already ingested (sha256 {self.content_hash[:12]}), skipped"
        return (
            f"{self.source_path}: {self.rows_read} rows read, {self.rows_valid} valid, "
            f"{self.rows_quarantined} quarantined, {self.duplicates_dropped} duplicates dropped, "
            f"{len(self.partitions)} partitions"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _detect_format(path: Path) -> str:
    if path.suffix.lower() == ".parquet":
        return "parquet"
    with open(path, "rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace").strip()
    if not first:
        raise IngestError(f"{path}: file is empty")
    if "\t" in first:
        fields = first.split("\t")
        return "tsv_header" if C.USER in fields else "movielens"
    return "csv"


def _batches(path: Path, fmt: str, batch_rows: int) -> Iterator[pd.DataFrame]:
    """Yield the required columns as strings, in file order, a batch at a time."""
    as_strings = {c: pa.string() for c in REQUIRED}
    if fmt == "parquet":
        try:
            pfile = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise IngestError(f"{path}: not a readable Parquet file ({exc})") from exc
        missing = [c for c in REQUIRED if c not in pfile.schema_arrow.names]
        if missing:
            raise IngestError(f"{path}: missing required columns {missing}")
        for batch in pfile.iter_batches(batch_size=batch_rows, columns=list(REQUIRED)):
            yield pa.Table.from_batches([batch]).to_pandas().astype(object).astype("string")
        return
    if fmt == "movielens":
        read = pacsv.ReadOptions(column_names=list(REQUIRED), block_size=1 << 24)
        parse = pacsv.ParseOptions(delimiter="\t")
    else:
        read = pacsv.ReadOptions(block_size=1 << 24)
        parse = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv_header" else ",")
        with open(path, encoding="utf-8", errors="replace") as fh:
            header = [h.strip() for h in fh.readline().strip().split(parse.delimiter)]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise IngestError(
                f"{path}: missing required columns {missing} (header has {header}); "
                f"expected a header naming {list(REQUIRED)}"
            )
    convert = pacsv.ConvertOptions(
        column_types=as_strings,
        include_columns=list(REQUIRED),
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    try:
        reader = pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        pending: list[pa.RecordBatch] = []
        size = 0
        for batch in reader:
            pending.append(batch)
            size += batch.num_rows
            if size >= batch_rows:
                yield pa.Table.from_batches(pending).to_pandas().astype("string")
                pending, size = [], 0
        if pending:
            yield pa.Table.from_batches(pending).to_pandas().astype("string")
    except pa.ArrowInvalid as exc:
        raise IngestError(f"{path}: cannot parse as {fmt}: {exc}") from exc


def parse_timestamps(raw: pd.Series) -> pd.Series:
    """Unix seconds or ISO 8601 strings to UTC timestamps; unparseable values become NaT."""
    text = raw.str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ms, UTC]")
    is_num = numeric.notna() & np.isfinite(numeric.astype("float64"))
    # Bounds keep values inside what datetime64[ms] and Parquet can hold.
    is_num &= numeric.between(-62_135_596_800, 253_402_300_799)
    if is_num.any():
        out[is_num] = pd.to_datetime(numeric[is_num].astype("float64"), unit="s", utc=True)
    rest = text.notna() & ~numeric.notna()
    if rest.any():
        parsed = pd.to_datetime(text[rest], format="ISO8601", utc=True, errors="coerce")
        out[rest] = parsed
    return out


def validate(frame: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, pd.Series]:
    """Split a batch of raw string columns into valid typed rows and a reason per bad row."""
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")

    def flag(mask: pd.Series, why: str) -> None:
        mask = mask.fillna(True).astype(bool) & reason.isna()
        reason[mask] = why

    user = frame[C.USER].str.strip()
    item = frame[C.ITEM].str.strip()
    flag(user.isna() | (user == ""), "empty user_id")
    flag(item.isna() | (item == ""), "empty item_id")
    rating = pd.to_numeric(frame[C.RATING].str.strip(), errors="coerce").astype("float64")
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


def known_hash(engine: Engine, digest: str) -> bool:
    """Whether content with this hash was ingested before."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(ingest_log.c.content_hash).where(ingest_log.c.content_hash == digest)
        ).first()
    return row is not None


def ingest_file(
    path: Path | str, settings: Settings, engine: Engine, *, force: bool = False
) -> IngestReport:
    """Validate ``path`` and merge its valid rows into the lake; see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if not path.is_file():
        raise IngestError(f"{path}: not a regular file")
    digest = file_sha256(path)
    report = IngestReport(source_path=str(path), content_hash=digest)
    if not force and known_hash(engine, digest):
        report.skipped = True
        log.info(report.summary())
        return report
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: file is empty")

    fmt = _detect_format(path)
    valid_parts: list[pd.DataFrame] = []
    bad_parts: list[pd.DataFrame] = []
    reasons: Counter[str] = Counter()
    offset = 0
    for batch in _batches(path, fmt, settings.ingest.batch_rows):
        # 1-based line numbers as a person sees them in an editor.
        batch.index = pd.RangeIndex(offset, offset + len(batch)) + (1 if fmt == "movielens" else 2)
        offset += len(batch)
        valid, why = validate(batch, settings)
        valid_parts.append(valid)
        if len(why):
            bad = batch.loc[why.index].copy()
            bad[C.REASON] = why
            bad[C.SOURCE_ROW] = bad.index.astype("int64")
            bad_parts.append(bad)
            reasons.update(why.tolist())
        if offset and offset % (5 * settings.ingest.batch_rows) == 0:
            log.info("%s: %d rows validated", path, offset)
    report.rows_read = offset
    report.reasons = dict(reasons)
    if offset == 0:
        raise IngestError(f"{path}: file has a header but no data rows")

    n_bad = sum(len(b) for b in bad_parts)
    report.rows_quarantined = n_bad
    if n_bad:
        qpath = settings.quarantine_dir / f"{digest[:16]}.parquet"
        quarantined = pd.concat(bad_parts)
        quarantined.insert(0, C.SOURCE_FILE, str(path))
        atomic_write_parquet(
            pa.Table.from_pandas(quarantined.reset_index(drop=True), preserve_index=False), qpath
        )
        report.quarantine_path = str(qpath)
    share = n_bad / offset
    if share > settings.ingest.max_invalid_share:
        top = ", ".join(f"{why}: {n}" for why, n in reasons.most_common(5))
        raise IngestError(
            f"{path}: {n_bad} of {offset} rows invalid ({share:.2%}), above the limit of "
            f"{settings.ingest.max_invalid_share:.2%} (ingest.max_invalid_share); nothing was "
            f"ingested. Reasons: {top}. Bad rows with their line numbers: {report.quarantine_path}"
        )

    valid = pd.concat(valid_parts, ignore_index=True)
    before = len(valid)
    valid = valid.drop_duplicates([C.USER, C.ITEM, C.TIMESTAMP], keep="last")
    report.duplicates_dropped = before - len(valid)
    report.rows_valid = len(valid)
    days = valid[C.TIMESTAMP].dt.strftime("%Y-%m-%d")
    for day, rows in valid.groupby(days, sort=True):
        _, dups = merge_partition(settings.ratings_dir, str(day), rows)
        report.duplicates_dropped += dups
        report.partitions.append(str(day))
    record_ingest(engine, report, kind="ratings")
    log.info(report.summary())
    return report


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
    :mod:`recjobs.features`. Every file is attempted; if any fails, an :class:`IngestError` listing all the
    failures is raised after the rest have been ingested.
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
            errors.append(str(exc))
    if errors:
        raise IngestError("; ".join(errors))
    return reports
