"""The ``ingest_log`` ledger: every row of it is written here.

One row per delivered content (by SHA-256): ``ingested`` with its counts, or
``rejected`` with the reason, so the inbox skips content it has seen.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recjobs.db.schema import ingest_log
from recjobs.ingest._report import STATUS_INGESTED, STATUS_REJECTED, IngestReport

log = logging.getLogger(__name__)


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
