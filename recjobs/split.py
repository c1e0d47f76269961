"""Deterministic temporal holdout: each user's most recent interactions are held out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recjobs import columns as C
from recjobs.settings import SplitSettings


def temporal_split(frame: pd.DataFrame, settings: SplitSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into (train, holdout).

    For each user with at least ``min_user_interactions`` interactions, the most
    recent ``holdout_fraction`` of them (at least one) by time go to the holdout.
    Ties in time are broken by item id, so the split depends only on the data.
    """
    ordered = frame.sort_values([C.USER, C.TIMESTAMP, C.ITEM], kind="stable").reset_index(drop=True)
    sizes = ordered.groupby(C.USER, sort=False)[C.ITEM].transform("size").to_numpy()
    # Position of each row from the end of its user's history: 0 is the most recent.
    from_end = ordered.groupby(C.USER, sort=False).cumcount(ascending=False).to_numpy()
    n_hold = np.maximum(1, np.floor(sizes * settings.holdout_fraction)).astype(np.int64)
    n_hold[sizes < settings.min_user_interactions] = 0
    is_holdout = from_end < n_hold
    return ordered[~is_holdout].reset_index(drop=True), ordered[is_holdout].reset_index(drop=True)
