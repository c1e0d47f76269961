"""The ``guard_checks`` table: the only module that writes it.

Each run of a guard replaces its date's rows of that stage (``input`` or ``output``)
with one row per check, every row carrying the stage's decision. An operator's allow is
a row of its own (check ``operator_allow``) that reruns keep, so the rerun passes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recjobs.db.schema import guard_checks
from recjobs.guard.checks import Check

ALLOW = "operator_allow"
# Decisions: the stage passed, was held (nothing goes live), was let through by an operator,
# or failed where holding protects nothing (nothing is live yet, a newer date is live) or
# guard.enabled = false: recorded only.
PASSED, HELD, ALLOWED, NOT_HELD = "passed", "held", "allowed", "not_held"


def _day(day: dt.date | str) -> str:
    return day if isinstance(day, str) else day.isoformat()


def record_checks(engine: Engine, day: dt.date, stage: str, checks: Sequence[Check], decision: str) -> None:
    """Replace the date's rows of ``stage`` (an operator's allow stays) with ``checks``, in one transaction."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(guard_checks.delete().where(
            guard_checks.c.run_date == _day(day), guard_checks.c.stage == stage, guard_checks.c.check_name != ALLOW))
        for c in checks:
            conn.execute(guard_checks.insert().values(
                run_date=_day(day), stage=stage, check_name=c.name, value=c.value, threshold=c.threshold,
                passed=c.passed, decision=decision, note=c.note or None, created_at=now))


def record_allow(engine: Engine, day: dt.date, stages: Sequence[str], note: str) -> None:
    """An operator lets ``day`` through the guards of ``stages``: later runs of the date pass them."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for stage in stages:
            conn.execute(guard_checks.delete().where(
                guard_checks.c.run_date == _day(day), guard_checks.c.stage == stage,
                guard_checks.c.check_name == ALLOW))
            conn.execute(guard_checks.insert().values(
                run_date=_day(day), stage=stage, check_name=ALLOW, value=None, threshold=None, passed=True,
                decision=ALLOWED, note=note, created_at=now))


def allowed(engine: Engine, day: dt.date, stage: str) -> bool:
    """Whether an operator let ``day`` through the ``stage`` guard."""
    with engine.connect() as conn:
        return conn.execute(sa.select(guard_checks.c.id).where(
            guard_checks.c.run_date == _day(day), guard_checks.c.stage == stage,
            guard_checks.c.check_name == ALLOW)).first() is not None


def checks_of(engine: Engine, day: dt.date) -> list[sa.Row]:
    """The date's rows, input before output, in the order they were written."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(guard_checks).where(guard_checks.c.run_date == _day(day)).order_by(
            sa.case((guard_checks.c.stage == "input", 0), else_=1), guard_checks.c.id)).all())


__all__ = ["ALLOW", "ALLOWED", "HELD", "NOT_HELD", "PASSED", "allowed", "checks_of", "record_allow", "record_checks"]
