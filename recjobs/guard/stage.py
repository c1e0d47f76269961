"""The guards as stages: gather a night's figures, run the checks, record them, hold or pass.

:func:`check_input` runs before the split: a night whose data is outside its thresholds
gets a ``guarded`` gate row and raises :class:`GuardedError`, so nothing of it is
trained or published and yesterday's lists stay live. :func:`check_output` runs before
the champion's lists go live: lists that collapsed are loaded as history only. An
operator who has looked lets a date through with :func:`allow` (``recjobs guard allow``,
the DAG's ``guard_allow`` param). The checks themselves are :mod:`recjobs.guard.checks`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recjobs import columns as C
from recjobs.data.interactions import Events
from recjobs.data.lake import DAY_MS, Lake
from recjobs.db import ledger
from recjobs.db.schema import publications
from recjobs.errors import GuardedError, UsageError
from recjobs.guard.checks import (
    INPUT,
    OUTPUT,
    STAGES,
    Check,
    ListStats,
    NightStats,
    input_checks,
    nightly_stats,
    output_checks,
    rating_edges,
    summary,
)
from recjobs.guard.record import (
    ALLOWED,
    HELD,
    NOT_HELD,
    PASSED,
    allowed,
    record_allow,
    record_checks,
)
from recjobs.ingest.ledger import quarantine_counts
from recjobs.runs import check_run_date, cutoff_of, future_horizon, parse_date
from recjobs.settings import Settings

log = logging.getLogger(__name__)
_EPOCH = dt.date(1970, 1, 1)
_IN_CHUNK = 500  # user ids per IN (...) when reading the live lists of sampled users


@dataclass(frozen=True)
class GuardOutcome:
    """A guard's verdict on a date: its checks, its decision and, when held, why."""

    stage: str
    checks: list[Check]
    decision: str
    reason: str

    @property
    def held(self) -> bool:
        return self.decision == HELD


def _decide(settings: Settings, engine: Engine, day: dt.date, stage: str, checks: list[Check],
            why_not: str) -> tuple[str, str]:
    """(decision, why it is not held) for ``checks``; ``why_not``: why holding would protect nothing."""
    if all(c.passed for c in checks):
        return PASSED, ""
    if allowed(engine, day, stage):
        return ALLOWED, ""
    if not settings.guard.enabled:
        return NOT_HELD, "guard.enabled = false"
    return (NOT_HELD, why_not) if why_not else (HELD, "")


def _live_date(engine: Engine) -> str | None:
    """The run date of the live recommendations; None while nothing was published."""
    with engine.connect() as conn:
        return conn.execute(sa.select(publications.c.run_date).where(
            publications.c.kind == "recommendations", publications.c.is_live.is_(True))).scalar()


def _reason(stage: str, day: dt.date, checks: list[Check], decision: str, why_not: str) -> str:
    failed = summary(checks)
    if decision == HELD:
        what = ("nothing of it is trained or published" if stage == INPUT
                else "its lists are kept as history only")
        return (f"{stage} guard held {day}: {failed}; {what} and the live lists stay. If the night is right, "
                f"let it through with `recjobs guard allow --date {day}` (or the DAG param guard_allow) and rerun it")
    if decision == ALLOWED:
        return f"{stage} guard: {day} let through by an operator despite: {failed}"
    if decision == NOT_HELD:
        return f"{stage} guard: {day} not held ({why_not}) despite: {failed}"
    return f"{stage} guard: {day} passed"


def _finish(settings: Settings, engine: Engine, day: dt.date, stage: str, checks: list[Check]) -> GuardOutcome:
    live = _live_date(engine)
    # Holding keeps yesterday's lists live: with nothing live (a first run) it protects
    # nothing, and a date older than the live one is kept as history only anyway.
    why_not = ("nothing is live yet: a first run is never held" if live is None else
               f"a newer date ({live}) is live: it is kept as history only anyway"
               if day.isoformat() < live <= future_horizon(settings.runs.max_future_days).isoformat() else "")
    decision, why_not = _decide(settings, engine, day, stage, checks, why_not)
    if why_not:
        checks = [*checks, Check("not_held", None, "-", True, why_not)]
    record_checks(engine, day, stage, checks, decision)
    outcome = GuardOutcome(stage, checks, decision, _reason(stage, day, checks, decision, why_not))
    (log.warning if decision != PASSED else log.info)("%s", outcome.reason)
    return outcome


def allow(settings: Settings, engine: Engine, run_date: str | dt.date, stages: Sequence[str] = STAGES,
          note: str = "") -> dt.date:
    """Let ``run_date`` through the guards of ``stages``: the next run of the date passes them.

    Recorded in ``guard_checks`` (check ``operator_allow``, with ``note``); a held input
    also loses its ``guarded`` gate row when the rerun's input guard passes.
    """
    day = check_run_date(parse_date(run_date), settings.runs.max_future_days)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        raise UsageError(f"unknown guard stage(s) {unknown}; known: {list(STAGES)}")
    record_allow(engine, day, list(stages), note or "let through by an operator")
    log.warning("guards %s: %s let through by an operator%s", ", ".join(stages), day, f" ({note})" if note else "")
    return day


# -- input --------------------------------------------------------------------------------
def night_figures(settings: Settings, day: dt.date, events: Events | None = None) -> tuple[NightStats, list[NightStats]]:
    """The night's :class:`NightStats` and the trailing nights' that have data (oldest first), from the lake.

    Reads every row before the night's end (not only the training window): a user is new
    only if no earlier row has it. ``events``: those rows, already read (the split task's
    read, :func:`recjobs.pipeline.split.shared_window`), so the lake is not read twice.
    """
    g, ingest = settings.guard, settings.ingest
    edges = rating_edges(ingest.rating_min, ingest.rating_max, g.rating_bins)
    target = (day - _EPOCH).days
    if events is None:
        events = Lake.of(settings).read_events(cutoff_of(day))
    if events is None:
        return NightStats.empty(target, g.rating_bins), []
    stats = nightly_stats(events.users, events.items, events.ratings, events.millis, edges, unit=DAY_MS)
    trailing = [stats[d] for d in sorted(stats) if d < target][-g.trailing_nights:]
    return stats.get(target, NightStats.empty(target, g.rating_bins)), trailing


def check_input(settings: Settings, engine: Engine, run_date: str | dt.date, allow_night: bool = False,
                events: Events | None = None) -> GuardOutcome:
    """The input guard of ``run_date``; raises :class:`GuardedError` when it holds the night.

    ``allow_night`` (the DAG's ``guard_allow``) first records an operator's allow for the
    date's guards. A held night gets a ``guarded`` gate row (so later gates, the dashboard
    and the promote task see it); a night that passes withdraws an earlier one. ``events``:
    every row before the night's end, already read (see :func:`night_figures`).
    """
    day = check_run_date(parse_date(run_date), settings.runs.max_future_days)
    if allow_night:
        allow(settings, engine, day, STAGES, "let through by the run's guard_allow param")
    night, trailing = night_figures(settings, day, events)
    read, quarantined = quarantine_counts(engine, day.isoformat())
    # A manual run for today computes a day that is not over: a short night is expected then.
    day_over = cutoff_of(day) <= dt.datetime.now(dt.UTC)
    checks = input_checks(night, trailing, quarantined / read if read else None, settings.guard, day_over)
    outcome = _finish(settings, engine, day, INPUT, checks)
    if outcome.held:
        ledger.record_guarded(engine, day, outcome.reason)
        raise GuardedError(outcome.reason)
    ledger.clear_guarded(engine, day)
    return outcome


# -- output -------------------------------------------------------------------------------
def _listed(paths: Sequence[Path], sample: int) -> tuple[int, int, dict[str, set[str]]]:
    """Distinct items and users in the staged recommendations, and the lists of up to ``sample`` users.

    Reads one column at a time per shard (shards hold disjoint users), never the whole list.
    """
    items: pa.Array | None = None
    users = 0
    user_arrays = []
    for path in paths:
        shard_items = pc.unique(pq.read_table(path, columns=[C.ITEM]).column(C.ITEM).combine_chunks())
        items = shard_items if items is None else pc.unique(pa.concat_arrays([items, shard_items]))
        shard_users = pc.unique(pq.read_table(path, columns=[C.USER]).column(C.USER).combine_chunks())
        users += len(shard_users)
        user_arrays.append(shard_users)
    every = pa.concat_arrays(user_arrays) if user_arrays else pa.array([], pa.string())
    step = max(1, len(every) // sample)
    chosen = every.take(pa.array(np.arange(0, len(every), step)[:sample]))
    lists: dict[str, set[str]] = {}
    for path in paths:
        table = pq.read_table(path, columns=[C.USER, C.ITEM], filters=[(C.USER, "in", chosen.to_pylist())])
        for user, item in zip(table.column(C.USER).to_pylist(), table.column(C.ITEM).to_pylist(), strict=True):
            lists.setdefault(user, set()).add(item)
    return (0 if items is None else len(items)), users, lists


def _live_lists(engine: Engine, users: Sequence[str]) -> tuple[int | None, dict[str, set[str]]]:
    """Distinct items in the live recommendations (None when empty), and the live lists of ``users``."""
    with engine.connect() as conn:
        live_items = conn.execute(sa.text(f"SELECT COUNT(DISTINCT {C.ITEM}) FROM recommendations")).scalar() or None
        lists: dict[str, set[str]] = {}
        if live_items:
            for start in range(0, len(users), _IN_CHUNK):
                rows = conn.execute(sa.text(f"SELECT {C.USER}, {C.ITEM} FROM recommendations WHERE {C.USER} IN "
                                            ":users").bindparams(sa.bindparam("users", expanding=True)),
                                    {"users": list(users[start:start + _IN_CHUNK])}).all()
                for user, item in rows:
                    lists.setdefault(user, set()).add(item)
    return live_items, lists


def list_stats(settings: Settings, engine: Engine, paths: Sequence[Path], catalogue: int, users: int) -> ListStats:
    """:class:`ListStats` of the staged recommendations at ``paths`` against the live lists."""
    listed_items, users_with_list, sampled = _listed(paths, settings.guard.overlap_users)
    live_items, live = _live_lists(engine, sorted(sampled))
    shares = [len(sampled[u] & items) / len(items) for u, items in live.items() if items]
    return ListStats(listed_items, catalogue, users, users_with_list, live_items,
                     float(np.mean(shares)) if shares else None)


def check_output(settings: Settings, engine: Engine, day: dt.date, paths: Sequence[Path], catalogue: int,
                 users: int) -> GuardOutcome:
    """The output guard of ``day``'s staged recommendations (``paths``); held: publish them as history only.

    ``catalogue``: the items the champion knows; ``users``: the users it lists.
    """
    lists = list_stats(settings, engine, paths, catalogue, users)
    column = ledger.METRIC_COLUMN[settings.gate.metric]
    gate = ledger.gate_row(engine, day)
    metric = getattr(gate, column) if gate is not None and gate.status in ledger.CHAMPION_STATUSES else None
    trailing = ledger.champion_metrics_before(engine, day, column, settings.guard.trailing_nights)
    checks = output_checks(lists, metric, trailing, settings.gate.metric, settings.guard)
    return _finish(settings, engine, day, OUTPUT, checks)


__all__ = ["GuardOutcome", "allow", "check_input", "check_output", "list_stats", "night_figures"]
