"""A whole night in one process: what the nightly DAG does, for ``recjobs run`` and the demo."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from recjobs.db.schema import engine_for
from recjobs.errors import GuardedError
from recjobs.evaluation.metrics import Metrics
from recjobs.pipeline.candidates import record_failure
from recjobs.pipeline.gate import GateDecision, record_no_candidates
from recjobs.pipeline.isolate import stage_runner
from recjobs.pipeline.split import run_day
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


def run_pipeline(settings: Settings, run_date: str | dt.date, ingest: bool = True,
                 isolate: bool = False) -> RunReport:
    """Everything the nightly DAG does for ``run_date``, from one process.

    ``isolate``: each stage runs in a child process (:mod:`recjobs.pipeline.isolate`), as
    each Airflow task does, so this process's peak memory is the largest stage's.
    """
    day = run_day(settings, run_date)
    engine = engine_for(settings)
    stage = stage_runner(settings, isolate)
    try:
        if ingest:
            for report in stage("ingest"):
                log.info(report.summary())
    except Exception as exc:
        record_no_candidates(engine, day, f"no candidates for {day}: {type(exc).__name__}: {exc}")
        raise
    try:
        # The input guard (recjobs.guard), then the split, from one read of the lake: a night
        # outside the guard's thresholds raises GuardedError with its 'guarded' gate row
        # written; nothing of it is split, trained or published.
        stage("guard_and_split", day)
    except GuardedError:
        raise
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
            stage("train", day, family)
            metrics[family] = stage("evaluate", day, family)
        except Exception as exc:  # one family failing must not stop the others
            log.exception("family %s failed on %s", family, day)
            record_failure(engine, day, family, exc)
            failures[family] = f"{type(exc).__name__}: {exc}"
    decision = stage("promote", day)
    stage("final", day)
    published = stage("publish", day)
    return RunReport(day.isoformat(), metrics, failures, decision, published)


__all__ = ["RunReport", "run_pipeline"]
