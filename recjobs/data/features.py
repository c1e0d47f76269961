"""Side features (user and item features from the lake's side tables) aligned to a matrix's ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recjobs import columns as C
from recjobs.data.ids import positions
from recjobs.data.interactions import Interactions
from recjobs.data.lake import Lake


@dataclass(frozen=True)
class SideFeatures:
    """Feature matrices aligned to an :class:`Interactions`' users and items.

    Rows are L1-normalised and do not include the identity features; models that
    want per-id embeddings add them themselves.
    """

    user: sp.csr_matrix | None
    item: sp.csr_matrix | None
    user_names: np.ndarray
    item_names: np.ndarray


def align_features(long: pd.DataFrame | None, key: str, ids: np.ndarray) -> tuple[sp.csr_matrix | None, np.ndarray]:
    """Long (id, feature, weight) rows to a row-normalised matrix over ``ids``."""
    if long is None or long.empty:
        return None, np.asarray([], dtype=object)
    names = np.asarray(sorted(long[C.FEATURE].unique()), dtype=object)
    rows = positions(ids, long[key])
    cols = positions(names, long[C.FEATURE])
    keep = rows >= 0
    weights = long[C.WEIGHT].to_numpy(dtype=np.float32)[keep]
    mat = sp.csr_matrix((weights, (rows[keep], cols[keep])), shape=(len(ids), len(names)), dtype=np.float32)
    sums = np.asarray(mat.sum(axis=1)).ravel()
    sums[sums == 0] = 1.0
    mat = sp.diags(1.0 / sums).dot(mat).tocsr().astype(np.float32)
    return mat, names


def load_side_features(lake: Lake, data: Interactions) -> SideFeatures | None:
    """Feature matrices aligned to ``data``, or None when no feature tables were ingested."""
    found = {kind: lake.read_side(kind) for kind in ("user_features", "item_features")}
    if all(v is None for v in found.values()):
        return None
    user, user_names = align_features(found["user_features"], C.USER, data.user_ids)
    item, item_names = align_features(found["item_features"], C.ITEM, data.item_ids)
    return SideFeatures(user, item, user_names, item_names)
