"""The ``ingest_log`` ledger: every row of it is written here.

One row per delivered content (by SHA-256): ``ingested`` with its counts, or
``rejected`` with the reason, so the inbox skips content it has seen. A rejection's
reason ends with the ingest settings it was judged under (:func:`judged_under`): once
those settings change, the content is no longer skipped but validated again, so a
rejection caused by a wrong setting does not outlive the setting.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recjobs.db.schema import ingest_log
from recjobs.ingest._report import STATUS_INGESTED, STATUS_REJECTED, IngestReport
from recjobs.settings import Settings

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


_JUDGED = " [judged under ingest settings "


def judged_under(settings: Settings) -> str:
    """The settings that decide whether a file is accepted, as the tail of a rejection's reason."""
    ingest = settings.ingest
    values = {"columns": ingest.columns, "default_rating": ingest.default_rating,
              "max_invalid_share": ingest.max_invalid_share, "rating_max": ingest.rating_max,
              "rating_min": ingest.rating_min}
    return f"{_JUDGED}{json.dumps(values, sort_keys=True)}]"


def judged_under_other_settings(reason: str | None, settings: Settings | None) -> bool:
    """Whether a rejection's ``reason`` was judged under ingest settings other than ``settings``.

    False when it cannot tell (no settings given, or a reason recorded without them).
    """
    if settings is None or not reason or _JUDGED not in reason:
        return False
    return reason[reason.rindex(_JUDGED):] != judged_under(settings)


def seen_before(engine: Engine, report: IngestReport, settings: Settings | None = None) -> bool:
    """Mark ``report`` skipped if its content was ingested or rejected before; log why.

    A rejection judged under other ingest settings than ``settings`` does not count: the
    content is validated again under the current ones.
    """
    row = _log_row(engine, report.content_hash)
    if row is None:
        return False
    if row.status == STATUS_REJECTED and judged_under_other_settings(row.reason, settings):
        log.info("%s: rejected on an earlier run under other ingest settings; validating it again under "
                 "the current ones", report.source_path)
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


def record_rejection(engine: Engine, report: IngestReport, kind: str, reason: str,
                     settings: Settings | None = None) -> None:
    """Remember that this content was refused, so the inbox does not retry it every night.

    With ``settings``, the reason records the ingest settings it was judged under, so the
    content is retried once they change (:func:`seen_before`).
    """
    if settings is not None:
        reason += judged_under(settings)
    report.status, report.reason = STATUS_REJECTED, reason
    report.rows_valid, report.duplicates_dropped, report.partitions = 0, 0, []
    record_ingest(engine, report, kind=kind)
