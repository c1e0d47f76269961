"""Deterministic temporal holdouts, by one of two protocols (``split.protocol``).

* ``per_user``: each user's most recent interactions are held out. Every user with
  enough history is evaluated, but a model trains on other users' interactions that
  happen after a user's holdout (tomorrow's popularity, later co-occurrences): a leak.
* ``global_time``: one time cutoff for the whole window. Training is everything
  strictly before it; the truth is everything at or after it, for users seen before
  it. This is what the nightly job faces: fit on the past, rank for the future.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from recjobs.data.interactions import Events, ordered_by_user_time_item
from recjobs.errors import SettingsError
from recjobs.settings import SplitSettings

MILLIS_PER_DAY = 86_400_000


@dataclass(frozen=True)
class SplitPlan:
    """Rows in (user, time, item) order and which of them go where.

    ``order`` orders the rows (None: they came in that order, :func:`plan_ordered`).
    ``train`` and ``held`` are masks over the ordered rows; a row in neither is dropped
    (``global_time``: an interaction after the cutoff of a user not seen before it).
    ``cutoff_millis`` is the ``global_time`` cutoff (Unix ms), None for ``per_user``.
    ``protocol`` is the protocol applied (``auto`` resolved) and ``reason`` why, for the record.
    """

    order: np.ndarray | None
    train: np.ndarray
    held: np.ndarray
    cutoff_millis: int | None = None
    protocol: str = "per_user"
    reason: str = ""


def global_cutoff(millis: np.ndarray, settings: SplitSettings, end_millis: int | None = None) -> int:
    """The ``global_time`` cutoff (Unix ms): rows at or after it are the holdout period.

    With ``holdout_days`` set: that many days before ``end_millis`` (the run's cutoff;
    default just after the latest row). Otherwise the time of the row at the
    ``1 - holdout_fraction`` quantile of all rows by time, so the latest
    ``holdout_fraction`` of rows (ties at the cutoff included) fall after it.
    """
    if len(millis) == 0:
        raise ValueError("cannot split an empty window")
    if settings.holdout_days is not None:
        end = int(millis.max()) + 1 if end_millis is None else int(end_millis)
        return end - round(settings.holdout_days * MILLIS_PER_DAY)
    position = int(np.floor(len(millis) * (1.0 - settings.holdout_fraction)))
    return int(np.partition(millis, position)[position])


def plan_split(events: Events, settings: SplitSettings, end_millis: int | None = None) -> SplitPlan:
    """Where each row goes under ``settings.protocol``; depends only on the data.

    ``per_user``: for each user with at least ``min_user_interactions`` interactions,
    the most recent ``holdout_fraction`` of them (at least one) by time. Ties in time
    are broken by item id (codes are in id order), then by input order.
    ``global_time``: see :func:`global_cutoff`; ``end_millis`` is the run's cutoff.
    ``auto``: ``global_time`` when its holdout has at least ``min_eval_users`` users, else
    ``per_user`` (every user with enough history is evaluated), so the gate's evidence is
    never a few returning users.
    """
    order = ordered_by_user_time_item(events.users, events.millis, events.items)
    plan = plan_ordered(events.users[order], events.millis[order], len(events.user_ids), settings, end_millis)
    return replace(plan, order=order)


# Rows looked at a time where a whole-window temporary would be gigabytes at 200M rows.
_CHUNK = 8_000_000


def _chunks(n: int) -> list[slice]:
    return [slice(lo, min(lo + _CHUNK, n)) for lo in range(0, n, _CHUNK)]


def plan_ordered(users: np.ndarray, millis: np.ndarray, n_users: int, settings: SplitSettings,
                 end_millis: int | None = None) -> SplitPlan:
    """:func:`plan_split` of rows already in (user, time, item) order (user codes below
    ``n_users``): the masks are over the rows as given, and ``order`` is None."""
    if settings.protocol in ("global_time", "auto"):
        cutoff = global_cutoff(millis, settings, end_millis)
        before = millis < cutoff
        seen = np.zeros(n_users, dtype=bool)
        for part in _chunks(len(users)):
            seen[users[part][before[part]]] = True
        held = ~before
        returns = np.zeros(n_users, dtype=bool)
        for part in _chunks(len(users)):
            held[part] &= seen[users[part]]
            returns[users[part][held[part]]] = True
        if not before.any() and settings.protocol == "global_time":
            raise SettingsError(f"global_time split: no interaction before the cutoff "
                                f"{pd.Timestamp(cutoff, unit='ms', tz='UTC')} (split.holdout_days / "
                                f"split.holdout_fraction leave nothing to train on)")
        returning = int(np.count_nonzero(returns))
        when = pd.Timestamp(cutoff, unit="ms", tz="UTC").isoformat()
        if settings.protocol == "global_time":
            return SplitPlan(None, before, held, cutoff, "global_time",
                             f"split.protocol=global_time: cutoff {when}, {returning} users evaluated")
        if before.any() and returning >= settings.min_eval_users:
            return SplitPlan(None, before, held, cutoff, "global_time",
                             f"split.protocol=auto: global_time (cutoff {when}) evaluates {returning} users, "
                             f"at least split.min_eval_users={settings.min_eval_users}")
        del before, held
        reason = (f"split.protocol=auto: per_user, because global_time (cutoff {when}) would evaluate only "
                  f"{returning} users, under split.min_eval_users={settings.min_eval_users}")
        return replace(_per_user_plan(users, n_users, settings), reason=reason)
    return _per_user_plan(users, n_users, settings)


def _per_user_plan(users: np.ndarray, n_users: int, settings: SplitSettings) -> SplitPlan:
    """The ``per_user`` plan of rows already in (user, time, item) order."""
    sizes = np.bincount(users, minlength=n_users)
    n_hold = np.maximum(1, np.floor(sizes * settings.holdout_fraction)).astype(np.int64)
    n_hold[sizes < settings.min_user_interactions] = 0
    # A user's rows from this position on are its latest n_hold.
    first_held = np.cumsum(sizes) - n_hold
    held = np.empty(len(users), dtype=bool)
    for part in _chunks(len(users)):
        held[part] = np.arange(part.start, part.stop) >= first_held[users[part]]
    evaluated = int(np.count_nonzero(n_hold))
    return SplitPlan(None, ~held, held, None, "per_user",
                     f"per_user: latest {settings.holdout_fraction:.0%} of each user's interactions, "
                     f"{evaluated} users evaluated")


def holdout_order(events: Events, settings: SplitSettings) -> tuple[np.ndarray, np.ndarray]:
    """Rows in (user, time, item) order, and which of them are held out (``per_user`` only).

    Kept for callers of the per-user rule; :func:`plan_split` covers both protocols.
    """
    plan = plan_split(events, settings.model_copy(update={"protocol": "per_user"}))
    return plan.order, plan.held


def split_events(events: Events, settings: SplitSettings, end_millis: int | None = None) -> tuple[Events, Events]:
    """Split coded events into (train, holdout) by ``settings.protocol``; both keep the whole's id arrays."""
    plan = plan_split(events, settings, end_millis)
    return events.take(plan.order[plan.train]), events.take(plan.order[plan.held])


def temporal_split(frame: pd.DataFrame, settings: SplitSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a frame of canonical columns into (train, holdout), as :func:`split_events` does."""
    plan = plan_split(Events.from_frame(frame), settings)
    ordered = frame.iloc[plan.order].reset_index(drop=True)
    return ordered[plan.train].reset_index(drop=True), ordered[plan.held].reset_index(drop=True)
