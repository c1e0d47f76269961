"""A whole night in one process: what the nightly DAG does, for ``recjobs run`` and the demo."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from recjobs.db.schema import engine_for
from recjobs.evaluation.metrics import Metrics
from recjobs.ingest import ingest_inbox
from recjobs.pipeline.candidates import evaluate_candidate, record_failure, train_candidate
from recjobs.pipeline.final import train_final
from recjobs.pipeline.gate import GateDecision, promote, record_no_candidates
from recjobs.pipeline.publish import publish
from recjobs.pipeline.split import prepare, run_day
from recjobs.publish.versions import PublishResult
from recjobs.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    run_date: str
    candidates: dict[str, Metrics]
    failures: dict[str, str]
    decision: GateDecision
    published: list[PublishResult]


def run_pipeline(settings: Settings, run_date: str | dt.date, ingest: bool = True) -> RunReport:
    """Everything the nightly DAG does for ``run_date``, in one process."""
    day = run_day(settings, run_date)
    engine = engine_for(settings)
    try:
        if ingest:
            for report in ingest_inbox(settings, engine):
                log.info(report.summary())
        prepare(settings, day)
    except Exception as exc:
        # As in the DAG: the night ends with a 'no_candidates' gate row saying why, so the
        # gate history shows it and later gates skip it (a decision the date already had
        # stands beside it); the error still propagates.
        record_no_candidates(engine, day, f"no candidates for {day}: {type(exc).__name__}: {exc}")
        raise
    metrics: dict[str, Metrics] = {}
    failures: dict[str, str] = {}
    for family in settings.families:
        try:
            train_candidate(settings, engine, day, family)
            metrics[family] = evaluate_candidate(settings, engine, day, family)
        except Exception as exc:  # one family failing must not stop the others
            log.exception("family %s failed on %s", family, day)
            record_failure(engine, day, family, exc)
            failures[family] = f"{type(exc).__name__}: {exc}"
    decision = promote(settings, engine, day)
    train_final(settings, engine, day)
    published = publish(settings, engine, day)
    return RunReport(day.isoformat(), metrics, failures, decision, published)


__all__ = ["RunReport", "run_pipeline"]
