"""Deterministic temporal holdout: each user's most recent interactions are held out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recjobs.interactions import Events, ordered_by_user_time_item
from recjobs.settings import SplitSettings


def holdout_order(events: Events, settings: SplitSettings) -> tuple[np.ndarray, np.ndarray]:
    """Rows in (user, time, item) order, and which of them are held out.

    For each user with at least ``min_user_interactions`` interactions, the most
    recent ``holdout_fraction`` of them (at least one) by time go to the holdout.
    Ties in time are broken by item id (codes are in id order), then by input order,
    so the split depends only on the data.
    """
    order = ordered_by_user_time_item(events.users, events.millis, events.items)
    users = events.users[order]
    sizes = np.bincount(users, minlength=len(events.user_ids))
    # Position of each row from the end of its user's history: 0 is the most recent.
    from_end = np.cumsum(sizes)[users] - 1 - np.arange(len(users))
    n_hold = np.maximum(1, np.floor(sizes * settings.holdout_fraction)).astype(np.int64)
    n_hold[sizes < settings.min_user_interactions] = 0
    return order, from_end < n_hold[users]


def split_events(events: Events, settings: SplitSettings) -> tuple[Events, Events]:
    """Split coded events into (train, holdout); both keep the whole's id arrays."""
    order, held = holdout_order(events, settings)
    return events.take(order[~held]), events.take(order[held])


def temporal_split(frame: pd.DataFrame, settings: SplitSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a frame of canonical columns into (train, holdout), as :func:`split_events` does."""
    order, held = holdout_order(Events.from_frame(frame), settings)
    ordered = frame.iloc[order].reset_index(drop=True)
    return ordered[~held].reset_index(drop=True), ordered[held].reset_index(drop=True)
