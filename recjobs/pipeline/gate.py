"""The gate stage: read the date's evaluated candidates, apply the gate's rule, record the decision.

The rule itself is :func:`recjobs.evaluation.gate.decide`; the rows are read from and
written to the ``model_runs`` ledger (:mod:`recjobs.db.ledger`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recjobs.db import ledger
from recjobs.errors import GuardedError, NoCandidatesError, PipelineError
from recjobs.evaluation.gate import GateCandidate, decide, describe
from recjobs.evaluation.metrics import PerUser
from recjobs.evaluation.significance import PairedTest
from recjobs.pipeline.split import run_day
from recjobs.runs import PER_USER_FILE, RunFolder, parse_date
from recjobs.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    """The champion a gate chose for its date."""

    family: str
    candidate_version: str
    promoted: bool
    reason: str


def earlier_dates_in_flight(settings: Settings, engine: Engine, run_date: str | dt.date,
                            now: dt.datetime | None = None) -> list[dt.date]:
    """Earlier dates whose gate this date's gate should wait for, oldest first.

    A date counts when it lies within ``gate.wait_window_days`` before ``run_date``, has
    candidate rows but no gate row yet, and a candidate row was written within the last
    ``gate.wait_timeout_minutes`` (older ones were abandoned: waiting cannot help).
    """
    day = parse_date(run_date)
    gate = settings.gate
    if gate.wait_window_days == 0:
        return []
    first = day - dt.timedelta(days=gate.wait_window_days)
    active_since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=gate.wait_timeout_minutes)
    return [parse_date(d) for d in ledger.dates_awaiting_gate(engine, first, day, active_since)]


def record_no_candidates(engine: Engine, run_date: str | dt.date, reason: str) -> None:
    """Record that ``run_date`` had nothing to gate (its 'no_candidates' gate row).

    A decision the date already has stands (see :func:`recjobs.db.ledger.record_no_candidates`).
    """
    day = parse_date(run_date)
    stands = ledger.record_no_candidates(engine, day, reason)
    log.warning("gate %s: %s%s", day, reason, "; the date's earlier decision stands" if stands else "")


def _no_candidates_reason(engine: Engine, day: dt.date) -> str:
    rows = ledger.candidate_outcomes(engine, day)
    if not rows:
        return (f"no candidates for {day}: no family was trained (did ingest or split fail? "
                f"see the run's ingest and split tasks, or run `recjobs split --date {day}`)")
    detail = "; ".join(f"{r.family}: {r.status}" + (f" ({r.reason.splitlines()[-1][:200]})" if r.reason else "")
                       for r in rows)
    return f"no evaluated candidates for {day}: {detail}"


def _gate_candidate(settings: Settings, row: sa.Row) -> GateCandidate:
    """A candidate row with its per-user metrics (saved beside its artifact), as the rule takes it."""
    metric = ledger.METRIC_COLUMN[settings.gate.metric]
    path = (Path(row.artifact_path) / PER_USER_FILE if row.artifact_path
            else RunFolder.of(settings, row.run_date).per_user(row.family))
    users = values = None
    split: dict[str, str] = {}
    if path.exists():
        per_user, split = PerUser.load(path)
        users, values = per_user.users, per_user.values[settings.gate.metric]
    return GateCandidate(row.family, float(getattr(row, metric)), int(row.k), users, values, split)


def _gate_columns(test: PairedTest | None) -> dict[str, float | None]:
    if test is None:
        return {"gate_diff": None, "gate_ci_low": None, "gate_ci_high": None, "gate_p_value": None}
    return {"gate_diff": float(test.diff), "gate_ci_low": test.ci_low, "gate_ci_high": test.ci_high,
            "gate_p_value": test.p_value}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def promote(settings: Settings, engine: Engine, run_date: str | dt.date, note: str = "") -> GateDecision:
    """Choose the champion for ``run_date`` from the evaluated candidates; see README 'Gate'.

    Every candidate row gets its comparison with the champion (gate_diff,
    gate_ci_low/high, gate_p_value), the gate row the deciding one. With no evaluated
    candidate, records a 'no_candidates' gate row and raises :class:`NoCandidatesError`
    (:class:`GuardedError`, writing nothing, when the input guard held the date).
    ``note`` (e.g. how long the caller waited for earlier gates) is appended to the
    recorded reason.
    """
    day = run_day(settings, run_date)
    rows = ledger.candidates(engine, day, settings.families)
    notes = [note] if note else []
    in_flight = earlier_dates_in_flight(settings, engine, day)
    if in_flight:
        # Said in the reason: the champion compared with may not be the one those dates will decide.
        notes.append("gated while earlier date(s) " + ", ".join(map(str, in_flight))
                     + " had candidates but no gate yet")
    suffix = "".join(f"; {n}" for n in notes)
    if not rows:
        guarded = ledger.guarded_row(engine, day)
        if guarded is not None:
            # The input guard held the night before its split: its 'guarded' row says why; a
            # 'no_candidates' row would hide that.
            raise GuardedError(guarded.reason)
        reason = _no_candidates_reason(engine, day) + suffix
        record_no_candidates(engine, day, reason)
        raise NoCandidatesError(reason)
    previous = ledger.champion_before(engine, day)
    outcome = decide([_gate_candidate(settings, r) for r in rows], previous.family if previous else None,
                     settings.gate, settings.seed, day.isoformat(), settings.families)
    reason = outcome.reason + suffix
    by_family = {r.family: r for r in rows}
    metric, name = ledger.METRIC_COLUMN[settings.gate.metric], settings.gate.metric
    for r in sorted(rows, key=lambda r: -getattr(r, metric)):
        t = outcome.tests.get(r.family)
        log.info("gate %s: candidate %s %s@%s=%.4f diversity=%s novelty=%s%s", day, r.family, name, r.k,
                 getattr(r, metric), _fmt(r.diversity), _fmt(r.novelty),
                 f"; vs {outcome.reference}: {describe(t)}" if t is not None else "")
    winner = by_family[outcome.winner]
    status = ledger.PROMOTED if outcome.promoted else ledger.CHAMPION_KEPT
    updates = {r.id: {"status": status if r.family == winner.family else ledger.REJECTED, "reason": reason,
                      **_gate_columns(outcome.tests.get(r.family))} for r in rows}
    ledger.record_gate(engine, day, updates, {
        "family": winner.family, "model_version": winner.model_version, "status": status, "reason": reason,
        "k": winner.k, "ndcg_at_k": winner.ndcg_at_k, "precision_at_k": winner.precision_at_k,
        "recall_at_k": winner.recall_at_k, "map_at_k": winner.map_at_k, "coverage": winner.coverage,
        "diversity": winner.diversity, "novelty": winner.novelty, **_gate_columns(outcome.decisive),
    })
    log.info("gate %s: %s", day, reason)
    return GateDecision(winner.family, winner.model_version, outcome.promoted, reason)


def gate_decision(engine: Engine, day: dt.date) -> sa.Row:
    """The date's gate row naming its champion; an error if the gate has not run or had no candidates."""
    row = ledger.gate_row(engine, day)
    if row is None:
        raise PipelineError(f"no gate decision for {day}: run `recjobs promote --date {day}` first")
    if row.status not in ledger.CHAMPION_STATUSES:
        raise PipelineError(f"no champion for {day}: the gate recorded {row.status}: {row.reason}")
    return row


__all__ = ["GateDecision", "earlier_dates_in_flight", "gate_decision", "promote", "record_no_candidates"]
