"""Ingesting one rating file: validate (unlocked, streaming), then merge under the lake's lock."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy.engine import Engine

from recjobs import columns as C
from recjobs.data.lake import DAY_MS, Lake, LakeWriter, MergeResult, day_names
from recjobs.errors import IngestError, LakeLockTimeout
from recjobs.faults import fault_point
from recjobs.ingest._layout import OPTIONAL, REQUIRED, layout_of
from recjobs.ingest._parquet import parquet_batches
from recjobs.ingest._report import IngestReport, file_sha256
from recjobs.ingest._spill import Quarantine, Spill
from recjobs.ingest._text import text_batches
from recjobs.ingest._validate import valid_to_arrow, validate, validate_plain
from recjobs.ingest.ledger import record_ingest, record_rejection, reserve, seen_before
from recjobs.progress import RateProgress
from recjobs.settings import Settings

log = logging.getLogger(__name__)


def read_and_validate(
    path: Path, settings: Settings, report: IngestReport, spill: Spill
) -> None:
    """Validate every row of ``path``: valid rows to ``spill``, bad ones to quarantine.

    Memory holds one batch at a time. Raises :class:`IngestError` (to be recorded as a
    rejection) for unusable content.
    """
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: file is empty")
    layout = layout_of(path, settings)
    batches: Iterator[tuple[pa.Table | pd.DataFrame, pd.Series, float]] = (
        parquet_batches(path, layout, settings) if layout.kind == "parquet"
        else text_batches(path, layout.delimiter, len(layout.names), layout.wanted(), layout.has_header,
                          settings.ingest.batch_rows)
    )
    quarantine = Quarantine(Lake.of(settings).quarantine_path(report.content_hash), str(path))
    progress = RateProgress(log, f"{path.name}: validating", every=settings.ingest.progress_seconds)
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
                valid, frame = validate_plain(frame, settings)
                spill_add(valid)
            else:
                n_read += len(frame) + len(malformed)
            bad_parts: list[pd.DataFrame] = []
            if len(frame):
                if C.RATING not in frame.columns:
                    frame[C.RATING] = settings.ingest.default_rating
                valid_rows, why = validate(frame, settings)
                spill_add(valid_to_arrow(valid_rows))
                if len(why):
                    bad = frame.loc[why.index, [c for c in (*REQUIRED, *OPTIONAL) if c in frame.columns]
                                    ].astype("string")
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
            progress.update(n_read, share=share, detail=f"{n_read} rows validated, {quarantine.rows} quarantined")
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


def _merge_spill(writer: LakeWriter, spill: Spill, settings: Settings, report: IngestReport, label: str) -> None:
    """Merge the spilled rows into the lake, a group of consecutive days at a time.

    A group holds at most ``ingest.merge_rows`` new rows (a bigger day alone), so memory
    is one group plus one partition, whatever the file's size. ``writer`` holds the lock.
    """
    days = np.array(sorted(spill.day_rows), dtype=np.int64)
    counts = np.array([spill.day_rows[d] for d in days.tolist()], dtype=np.int64)
    names = day_names(days)
    progress = RateProgress(log, f"{label}: merging", total=spill.rows, every=settings.ingest.progress_seconds)
    # Partitions an interrupted merge of this content completed: counted from its journal, not again.
    done = writer.lake.read_journal(report.content_hash)
    if done:
        log.info("%s: %d of %d partitions were merged by an interrupted ingest of this content; merging the rest",
                 label, len(set(done) & set(names)), len(names))
    with ThreadPoolExecutor(settings.ingest.threads) as pool:
        _merge_groups(writer, spill, settings, report, days, counts, names, progress, pool, done)


def _merge_groups(
    writer: LakeWriter, spill: Spill, settings: Settings, report: IngestReport, days: np.ndarray,
    counts: np.ndarray, names: list[str], progress: RateProgress, pool: ThreadPoolExecutor,
    done: dict[str, MergeResult],
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
        day = np.floor_divide(rows.column(C.TIMESTAMP).cast(pa.int64()).to_numpy(), DAY_MS)
        order = np.argsort(day, kind="stable")
        rows, day = rows.take(order), day[order]
        bounds = np.searchsorted(day, np.append(days[start:end], days[end - 1] + 1))
        # Days are independent files: merge them in parallel, account for them in order.
        merges = [None if names[start + j] in done else
                  pool.submit(writer.merge_ratings, names[start + j],
                              rows.slice(int(bounds[j]), int(bounds[j + 1] - bounds[j])), report.content_hash)
                  for j in range(end - start)]
        for j, merge in enumerate(merges):
            lo, hi = int(bounds[j]), int(bounds[j + 1])
            if merge is None:
                result = done[names[start + j]]
            else:
                result = merge.result()  # journaled by the merge itself, before its file was replaced
            report.rows_valid += result.new_unique
            report.duplicates_dropped += result.duplicates
            report.partitions.append(names[start + j])
            done_rows += hi - lo
            fault_point("ingest.mid_merge")
            progress.update(done_rows, detail=f"{len(report.partitions)} of {len(days)} partitions merged")
        start = end


def ingest_file(
    path: Path | str, settings: Settings, engine: Engine, *, force: bool = False
) -> IngestReport:
    """Validate ``path`` and merge its valid rows into the lake; see the module docstring.

    Content seen before is skipped: ingested content silently, rejected content with a
    warning that repeats the earlier reason, unless it was rejected under other ingest
    settings than ``settings`` (it is then validated again). ``force`` reads and
    validates the content again whatever the ledger says (rejected content is rejected
    again unless the settings changed). A file that is refused is recorded as rejected,
    with the settings it was judged under, and the :class:`IngestError` is raised.
    Validation runs unlocked, streaming valid rows to a spill folder in ``<lake>/.spill``
    (memory holds a batch, not the file); the merge and the ``ingest_log`` row are
    written under the lake's lock, so concurrent ingests (the DAG beside a manual run)
    lose nothing. The log row is reserved before the merge and completed after it, each
    write waiting for a busy database up to ``ingest.lock_timeout_seconds``. Killed
    anywhere, a rerun ingests every valid row exactly once: a reserved row counts as not
    seen, and merging rows again changes nothing.
    """
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if not path.is_file():
        raise IngestError(f"{path}: not a regular file")
    try:
        report = IngestReport(source_path=str(path), content_hash=file_sha256(path))
        if not force and seen_before(engine, report, settings):
            return report
        lake = Lake.of(settings)
        with lake.spill_folder() as folder:
            spill = Spill(folder)
            started = time.monotonic()
            try:
                read_and_validate(path, settings, report, spill)
            except IngestError as exc:
                record_rejection(engine, report, "ratings", str(exc), settings)
                raise
            validated = time.monotonic()
            with lake.writer() as writer:
                # Another process may have ingested the same content while this one validated.
                if not force and seen_before(engine, report, settings):
                    return report
                # The row first: a database that stays locked fails the ingest before any merge.
                wait = settings.ingest.lock_timeout_seconds
                reserve(engine, report, "ratings", wait_seconds=wait)
                merging = time.monotonic()
                _merge_spill(writer, spill, settings, report, path.name)
                fault_point("ingest.before_log")
                record_ingest(engine, report, kind="ratings", wait_seconds=wait)
                writer.end_journal(report.content_hash)
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
