"""The ``ingest_log`` ledger: every row of it is written here.

One row per delivered content (by SHA-256): ``ingested`` with its counts, or
``rejected`` with the reason, so the inbox skips content it has seen. A rejection's
reason ends with the ingest settings it was judged under (:func:`judged_under`): once
those settings change, the content is no longer skipped but validated again, so a
rejection caused by a wrong setting does not outlive the setting.

Writes wait for the database as an ingest waits for the lake's lock (up to
``ingest.lock_timeout_seconds``): on SQLite a publish holds the one write lock for as
long as its load and swap take, which may be longer than the engine's own busy timeout.
A ratings file's row is *reserved* (status ``merging``) before its rows are merged
(:func:`reserve`), so a database that stays locked fails the ingest before anything is
merged, and no file is ever merged without its row; a ``merging`` row left by an ingest
that died counts as not seen, so the file is ingested again (merging is idempotent).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recjobs.db.engine import is_sqlite
from recjobs.db.schema import ingest_log
from recjobs.errors import IngestError
from recjobs.ingest._report import STATUS_INGESTED, STATUS_MERGING, STATUS_REJECTED, IngestReport
from recjobs.settings import FeedbackSettings, Settings

log = logging.getLogger(__name__)

DEFAULT_WAIT_SECONDS = 60.0
# Longest single busy wait inside SQLite, so a long wait is a loop that can say it waits.
_WAIT_STEP_SECONDS = 5.0


def _locked(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text


@contextmanager
def write_transaction(engine: Engine, wait_seconds: float, label: str) -> Iterator[sa.Connection]:
    """A write transaction that waits up to ``wait_seconds`` for another writer to finish.

    On SQLite the write lock is taken at ``BEGIN IMMEDIATE``, retried until the deadline
    (logging once that it waits), so the statements inside never meet a busy database;
    elsewhere row locks are waited for by the server. Raises :class:`IngestError` naming
    ``label`` (the file) when the database stays locked past the deadline.
    """
    if not is_sqlite(engine):
        with engine.begin() as conn:
            yield conn
        return
    deadline = time.monotonic() + wait_seconds
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        (previous,) = raw.execute("PRAGMA busy_timeout").fetchone()
        conn.execution_options(sqlite_immediate=True)
        waited = False
        try:
            while True:
                left = deadline - time.monotonic()
                raw.execute(f"PRAGMA busy_timeout={max(int(min(left, _WAIT_STEP_SECONDS) * 1000), 1)}")
                try:
                    tx = conn.begin()
                    break
                except sa.exc.OperationalError as exc:
                    if not _locked(exc):
                        raise
                    if time.monotonic() >= deadline:
                        raise IngestError(
                            f"{label}: the database {engine.url.render_as_string(hide_password=True)} "
                            f"stayed locked by another writer (a publish?) for more than {wait_seconds:g}s "
                            "(ingest.lock_timeout_seconds)") from None
                    if not waited:
                        log.warning("%s: the database is locked by another writer (a publish?); waiting "
                                    "for it, up to %gs (ingest.lock_timeout_seconds)", label, wait_seconds)
                        waited = True
            with tx:
                yield conn
        finally:
            raw.execute(f"PRAGMA busy_timeout={int(previous)}")


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



def quarantine_counts(engine: Engine, day: str) -> tuple[int, int]:
    """(rows read, rows quarantined) of the ingested rating files that delivered rows of ``day``."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ingest_log.c.rows_read, ingest_log.c.rows_quarantined, ingest_log.c.partitions)
                            .where(ingest_log.c.kind == "ratings", ingest_log.c.partitions.contains(day),
                                   sa.or_(ingest_log.c.status.is_(None),
                                          ingest_log.c.status == STATUS_INGESTED))).all()
    mine = [r for r in rows if day in (r.partitions or "").split(",")]
    return sum(r.rows_read for r in mine), sum(r.rows_quarantined for r in mine)

_JUDGED = " [judged under ingest settings "


def judged_under(settings: Settings) -> str:
    """The settings that decide whether a file is accepted, as the tail of a rejection's reason."""
    ingest = settings.ingest
    values = {"columns": ingest.columns, "default_rating": ingest.default_rating,
              "max_invalid_share": ingest.max_invalid_share, "rating_max": ingest.rating_max,
              "rating_min": ingest.rating_min}
    # The event types ingest accepts (feedback.weights / feedback.exclude) decide too; named only when
    # they differ from the defaults, so rejections recorded before types existed keep their tail.
    known = sorted(settings.feedback.known_types)
    if known != sorted(FeedbackSettings().known_types):
        values["event_types"] = known
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
    if row.status == STATUS_MERGING:
        log.info("%s: an earlier ingest of this content stopped before it finished; ingesting it again",
                 report.source_path)
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


def _row(report: IngestReport, kind: str) -> dict[str, object]:
    row = {k: v for k, v in asdict(report).items() if k in ingest_log.c and k != "partitions"}
    row.update(kind=kind, partitions=",".join(report.partitions), ingested_at=dt.datetime.now(dt.UTC))
    return row


def record_ingest(engine: Engine, report: IngestReport, kind: str, *,
                  wait_seconds: float = DEFAULT_WAIT_SECONDS) -> None:
    """Write (or replace) the ``ingest_log`` row for a report, waiting up to ``wait_seconds`` for the database."""
    row = _row(report, kind)
    with write_transaction(engine, wait_seconds, report.source_path) as conn:
        conn.execute(ingest_log.delete().where(ingest_log.c.content_hash == report.content_hash))
        conn.execute(ingest_log.insert().values(**row))


def reserve(engine: Engine, report: IngestReport, kind: str, *,
            wait_seconds: float = DEFAULT_WAIT_SECONDS) -> None:
    """Write the content's row as ``merging`` before its rows are merged (see the module docstring).

    Raises :class:`IngestError` when the database stays locked: nothing is merged then.
    """
    row = _row(report, kind)
    row.update(status=STATUS_MERGING, reason="merging into the lake; a row left so means the ingest "
                                             "stopped before it finished, and the file is ingested again")
    with write_transaction(engine, wait_seconds, report.source_path) as conn:
        conn.execute(ingest_log.delete().where(ingest_log.c.content_hash == report.content_hash))
        conn.execute(ingest_log.insert().values(**row))


def record_rejection(engine: Engine, report: IngestReport, kind: str, reason: str,
                     settings: Settings | None = None) -> None:
    """Remember that this content was refused, so the inbox does not retry it every night.

    With ``settings``, the reason records the ingest settings it was judged under, so the
    content is retried once they change (:func:`seen_before`), and the write waits for the
    database up to ``ingest.lock_timeout_seconds``.
    """
    wait = DEFAULT_WAIT_SECONDS
    if settings is not None:
        reason += judged_under(settings)
        wait = settings.ingest.lock_timeout_seconds
    report.status, report.reason = STATUS_REJECTED, reason
    report.rows_valid, report.duplicates_dropped, report.partitions = 0, 0, []
    record_ingest(engine, report, kind=kind, wait_seconds=wait)
