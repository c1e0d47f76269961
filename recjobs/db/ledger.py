"""The ``model_runs`` ledger: every row of it is written here, and its statuses are named here.

One row per (run date, stage[, family]) records what a night did:

* ``candidate`` rows, one per family: ``training`` while it trains, then ``evaluated``
  with its metrics, or ``failed`` with the error; the gate marks each ``promoted``,
  ``champion_kept`` or ``rejected``;
* the ``gate`` row: the decision (``promoted`` / ``champion_kept``, naming the
  champion) or ``no_candidates`` for a night with nothing to gate, or ``guarded`` for a
  night the input guard held (recjobs.guard); a failed rerun of a date that has a
  decision keeps it, with its ``no_candidates`` or ``guarded`` row beside it;
* the ``final`` row: the champion retrained on all data;
* the ``publish`` row: what was loaded, ``live`` or ``history``;
* ``rollback`` rows: a list moved back to an earlier version, by any caller.

A rerun of a date replaces that date's rows of the stage it reruns and nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recjobs.db.schema import model_runs

# Stages.
CANDIDATE, GATE, FINAL, PUBLISH, ROLLBACK = "candidate", "gate", "final", "publish", "rollback"
# Candidate statuses.
TRAINING, EVALUATED, FAILED, REJECTED = "training", "evaluated", "failed", "rejected"
# Gate statuses: a gate row with one of CHAMPION_STATUSES names a champion; a
# 'no_candidates' row records a night that had nothing to gate and never names one.
PROMOTED, CHAMPION_KEPT, NO_CANDIDATES = "promoted", "champion_kept", "no_candidates"
# 'guarded': the input guard held the night before its split (never names a champion either).
GUARDED = "guarded"
CHAMPION_STATUSES = (PROMOTED, CHAMPION_KEPT)
GATED_CANDIDATE_STATUSES = (EVALUATED, PROMOTED, REJECTED, CHAMPION_KEPT)
# Final / publish statuses.
TRAINED, LIVE, HISTORY = "trained", "live", "history"
# Columns of the gate metric names (gate.metric).
METRIC_COLUMN = {"ndcg": "ndcg_at_k", "map": "map_at_k", "precision": "precision_at_k", "recall": "recall_at_k"}
_REASON_LIMIT = 2000


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """A ``created_at`` read back: SQLite hands timezone-aware columns back naive; they were written in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _day(day: dt.date | str) -> str:
    return day if isinstance(day, str) else day.isoformat()


# Airflow exports the running task's context to its process's environment (the task SDK's
# context_to_airflow_vars); recjobs reads these names and never imports Airflow.
_AIRFLOW_ENV = {"airflow_dag_id": "AIRFLOW_CTX_DAG_ID", "airflow_run_id": "AIRFLOW_CTX_DAG_RUN_ID",
                "airflow_task_id": "AIRFLOW_CTX_TASK_ID"}


def airflow_task() -> dict[str, str | None]:
    """The Airflow DAG, run and task that this process runs (all None outside an Airflow task)."""
    found = {column: os.environ.get(name) or None for column, name in _AIRFLOW_ENV.items()}
    # All or nothing: a row names a run only where all three are known.
    return found if all(found.values()) else dict.fromkeys(_AIRFLOW_ENV)


def replace_rows(engine: Engine | Connection, day: dt.date | str, stage: str, family: str | None,
                 rows: Iterable[Mapping[str, Any]]) -> None:
    """Replace the date's rows of ``stage`` (of ``family`` only, if given) with ``rows``."""
    def write(conn: Connection) -> None:
        cond = (model_runs.c.run_date == _day(day)) & (model_runs.c.stage == stage)
        if family is not None:
            cond &= model_runs.c.family == family
        conn.execute(model_runs.delete().where(cond))
        now, task = _now(), airflow_task()
        for row in rows:
            conn.execute(model_runs.insert().values(run_date=_day(day), stage=stage, created_at=now,
                                                    **{**task, **row}))

    if isinstance(engine, Connection):
        write(engine)
    else:
        with engine.begin() as conn:
            write(conn)


# -- candidates ------------------------------------------------------------------------
def record_training(engine: Engine, day: dt.date, family: str) -> None:
    """A candidate starts training: any earlier result of the family for the date is withdrawn."""
    replace_rows(engine, day, CANDIDATE, family, [{"family": family, "model_version": "-", "status": TRAINING}])


def record_evaluated(engine: Engine, day: dt.date, family: str, row: Mapping[str, Any]) -> None:
    """The candidate's evaluation (its metrics and artifact), replacing its earlier rows of the date."""
    replace_rows(engine, day, CANDIDATE, family, [{"family": family, "status": EVALUATED, **row}])


def record_failure(engine: Engine, day: dt.date, family: str, error: BaseException | str) -> None:
    """Record that ``family`` produced no candidate for the date, with the error."""
    reason = error if isinstance(error, str) else "".join(
        traceback.format_exception_only(type(error), error)).strip()
    replace_rows(engine, day, CANDIDATE, family,
                 [{"family": family, "model_version": "-", "status": FAILED, "reason": reason[:_REASON_LIMIT]}])


def candidates(engine: Engine, day: dt.date, families: Sequence[str]) -> list[sa.Row]:
    """The date's evaluated (or already gated) candidate rows of ``families``."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(model_runs).where(
            model_runs.c.run_date == _day(day), model_runs.c.stage == CANDIDATE,
            model_runs.c.status.in_(GATED_CANDIDATE_STATUSES), model_runs.c.family.in_(list(families)))).all())


def candidate_outcomes(engine: Engine, day: dt.date) -> list[sa.Row]:
    """Every candidate row of the date (family, status, reason), whatever its status."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(model_runs.c.family, model_runs.c.status, model_runs.c.reason).where(
            model_runs.c.run_date == _day(day), model_runs.c.stage == CANDIDATE)).all())


# -- the gate ---------------------------------------------------------------------------
def gate_row(engine: Engine, day: dt.date) -> sa.Row | None:
    """The date's gate row: its decision if it has one, else its failure; None if the gate has not run."""
    with engine.connect() as conn:
        return conn.execute(sa.select(model_runs).where(
            model_runs.c.run_date == _day(day), model_runs.c.stage == GATE).order_by(
            sa.case((model_runs.c.status.in_(CHAMPION_STATUSES), 0), else_=1), model_runs.c.id.desc())).first()


def champion_before(engine: Engine, day: dt.date) -> sa.Row | None:
    """The champion decided by the latest gate before ``day`` (so reruns see the same one)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(model_runs)
            .where(model_runs.c.stage == GATE, model_runs.c.run_date < _day(day),
                   model_runs.c.status.in_(CHAMPION_STATUSES))
            .order_by(model_runs.c.run_date.desc(), model_runs.c.id.desc())
        ).first()


def dates_awaiting_gate(engine: Engine, first: dt.date, before: dt.date, active_since: dt.datetime) -> list[str]:
    """Dates in ``[first, before)`` with candidate rows written since ``active_since`` but no gate row."""
    in_window = (model_runs.c.run_date >= _day(first)) & (model_runs.c.run_date < _day(before))
    with engine.connect() as conn:
        gated = set(conn.execute(sa.select(model_runs.c.run_date).distinct()
                                 .where(in_window, model_runs.c.stage == GATE)).scalars())
        latest = conn.execute(sa.select(model_runs.c.run_date, sa.func.max(model_runs.c.created_at))
                              .where(in_window, model_runs.c.stage == CANDIDATE)
                              .group_by(model_runs.c.run_date)).all()
    return sorted(d for d, at in latest if d not in gated and at is not None and as_utc(at) >= active_since)


def record_no_candidates(engine: Engine, day: dt.date, reason: str) -> bool:
    """Record that ``day`` had nothing to gate, as a gate row with status 'no_candidates'.

    A decision the date already has (a gate row naming a champion) stands: a failed rerun
    must not erase it, or the next night would compare with an earlier champion. The
    failure is then recorded beside it (replacing an earlier failure of the date), and a
    rerun that gates replaces both. Returns whether an earlier decision stands.
    """
    return _record_failed_night(engine, day, NO_CANDIDATES, reason, "a rerun found nothing to gate")


def record_guarded(engine: Engine, day: dt.date, reason: str) -> bool:
    """Record that the input guard held ``day``: a gate row with status 'guarded' (as :func:`record_no_candidates`)."""
    return _record_failed_night(engine, day, GUARDED, reason, "a rerun was held by the input guard")


def clear_guarded(engine: Engine, day: dt.date) -> None:
    """The date's input passed (or was let through): its 'guarded' gate row, if any, is withdrawn."""
    with engine.begin() as conn:
        conn.execute(model_runs.delete().where(model_runs.c.run_date == _day(day), model_runs.c.stage == GATE,
                                               model_runs.c.status == GUARDED))


def guarded_row(engine: Engine, day: dt.date) -> sa.Row | None:
    """The date's 'guarded' gate row, if the input guard holds it."""
    with engine.connect() as conn:
        return conn.execute(sa.select(model_runs).where(
            model_runs.c.run_date == _day(day), model_runs.c.stage == GATE,
            model_runs.c.status == GUARDED).order_by(model_runs.c.id.desc())).first()


def _record_failed_night(engine: Engine, day: dt.date, status: str, reason: str, rerun: str) -> bool:
    failures = (NO_CANDIDATES, GUARDED)
    with engine.begin() as conn:
        decided = conn.execute(sa.select(model_runs.c.family, model_runs.c.created_at).where(
            model_runs.c.run_date == _day(day), model_runs.c.stage == GATE,
            model_runs.c.status.in_(CHAMPION_STATUSES))).first()
        if decided is not None:
            conn.execute(model_runs.delete().where(
                model_runs.c.run_date == _day(day), model_runs.c.stage == GATE,
                model_runs.c.status.in_(failures)))
            reason = (f"{rerun}; the decision of {as_utc(decided.created_at):%Y-%m-%d %H:%M} "
                      f"UTC ({decided.family}) stands: {reason}")
            conn.execute(model_runs.insert().values(
                run_date=_day(day), stage=GATE, family="-", model_version="-", status=status,
                reason=reason[:_REASON_LIMIT], created_at=_now(), **airflow_task()))
            return True
        replace_rows(conn, day, GATE, None, [{"family": "-", "model_version": "-", "status": status,
                                               "reason": reason[:_REASON_LIMIT]}])
        return False


def record_gate(engine: Engine, day: dt.date, candidate_updates: Mapping[int, Mapping[str, Any]],
                gate: Mapping[str, Any]) -> None:
    """The gate's decision: each candidate row (by id) gets its status and comparison, and the
    date's gate row is replaced, in one transaction."""
    with engine.begin() as conn:
        for row_id, values in candidate_updates.items():
            conn.execute(model_runs.update().where(model_runs.c.id == row_id).values(**values))
        replace_rows(conn, day, GATE, None, [gate])


# -- final model, publish, rollback -----------------------------------------------------
def record_final(engine: Engine, day: dt.date, family: str, version: str, seconds: float,
                 params: Mapping[str, Any], artifact: str, reason: str) -> None:
    """The champion retrained on all of the date's data."""
    replace_rows(engine, day, FINAL, None, [{
        "family": family, "model_version": version, "status": TRAINED, "fit_seconds": seconds,
        "params": json.dumps(dict(params), sort_keys=True), "artifact_path": artifact, "reason": reason}])


def record_publish(engine: Engine | Connection, day: dt.date, family: str, version: str, live: bool,
                   reason: str) -> None:
    """What the date's publish loaded, and whether it went live."""
    replace_rows(engine, day, PUBLISH, None, [{
        "family": family, "model_version": version, "status": LIVE if live else HISTORY, "reason": reason}])


def record_rollback(engine: Engine | Connection, run_date: str, family: str, version: str, reason: str) -> None:
    """A list moved back to an earlier version (``run_date`` and ``version`` of the one now live)."""
    row = {"run_date": run_date, "stage": ROLLBACK, "family": family, "model_version": version,
           "status": LIVE, "reason": reason[:_REASON_LIMIT], "created_at": _now(), **airflow_task()}
    if isinstance(engine, Connection):
        engine.execute(model_runs.insert().values(**row))
    else:
        with engine.begin() as conn:
            conn.execute(model_runs.insert().values(**row))


def final_row(engine: Engine, day: dt.date | str, version: str | None = None) -> sa.Row | None:
    """The date's final-model row (of ``version``, if given, else the latest)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(model_runs).where(
            model_runs.c.run_date == _day(day), model_runs.c.stage == FINAL).order_by(model_runs.c.id.desc())).all()
    same = [r for r in rows if version is None or r.model_version == version]
    return (same or rows or [None])[0]


def champion_metrics_before(engine: Engine, day: dt.date, column: str, limit: int) -> list[float]:
    """``column`` of the latest ``limit`` gate rows naming a champion before ``day`` (one per date), newest first."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(model_runs.c.run_date, model_runs.c[column]).where(
            model_runs.c.stage == GATE, model_runs.c.run_date < _day(day),
            model_runs.c.status.in_(CHAMPION_STATUSES)).order_by(
            model_runs.c.run_date.desc(), model_runs.c.id.desc())).all()
    out: dict[str, float] = {}
    for run_date, value in rows:
        if run_date not in out and value is not None:
            out[run_date] = float(value)
    return list(out.values())[:limit]


__all__ = [
    "CANDIDATE", "CHAMPION_KEPT", "CHAMPION_STATUSES", "EVALUATED", "FAILED", "FINAL", "GATE", "GUARDED", "HISTORY",
    "LIVE", "METRIC_COLUMN", "NO_CANDIDATES", "PROMOTED", "PUBLISH", "REJECTED", "ROLLBACK", "TRAINED", "TRAINING",
    "airflow_task", "as_utc", "candidate_outcomes", "candidates", "champion_before", "champion_metrics_before", "clear_guarded", "dates_awaiting_gate",
    "final_row", "gate_row", "guarded_row", "record_evaluated", "record_failure", "record_final", "record_gate",
    "record_guarded", "record_no_candidates", "record_publish", "record_rollback", "record_training", "replace_rows",
]
