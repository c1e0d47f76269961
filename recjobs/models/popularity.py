"""Popularity baseline: the same list for everyone, ordered by (recency-weighted) counts."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions
from recjobs.models.topk import top_k_of_rows
from recjobs.models.vectors import VectorRecommender, Vectors
from recjobs.settings import PopularityParams


class PopularityModel(VectorRecommender):
    family = "popularity"
    params_type = PopularityParams

    def _fit(self, data: Interactions, features: SideFeatures | None) -> Vectors:
        # Users per item; typed events: the sum of their weights (a purchase counts as settings.feedback says).
        counts = np.asarray(data.confidences().sum(axis=0)).ravel().astype(np.float64)
        half_life = self.params.half_life_days
        if half_life:
            # Weight each item by how recently it was last seen relative to the newest event.
            age_days = (data.item_last_seen.max() - data.item_last_seen) / 86400.0
            counts *= np.power(0.5, age_days / half_life)
        # Normalise so scores are comparable across runs of different size.
        bias = counts / max(counts.sum(), 1.0)
        return Vectors(
            np.zeros((data.n_users, 1), np.float32),
            np.zeros((data.n_items, 1), np.float32),
            bias.astype(np.float32),
        )

    def recommend(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The one list less each user's excluded items: ties by the lower item index, as
        :func:`~recjobs.models.topk.top_k_of_scores` breaks them (counts tie often), and
        only the head of the list a user can reach is ranked."""
        self._require_fitted()
        vec = self._vec()
        if np.any(vec.item_vectors):
            return super().recommend(user_rows, n, exclude)  # vectors set by hand: not one list
        bias = vec.item_bias
        user_rows = np.asarray(user_rows, np.int64)
        order = np.lexsort((np.arange(len(bias)), -bias))
        filt = exclude[user_rows].tocsr() if exclude is not None else None
        most = int(np.diff(filt.indptr).max()) if filt is not None and len(user_rows) else 0
        head = order[:min(len(order), n + most)]
        values = np.repeat(bias[head][None, :], len(user_rows), axis=0)
        if filt is not None and filt.nnz:
            position = np.full(len(bias), -1, np.int64)
            position[head] = np.arange(len(head))
            rows = np.repeat(np.arange(len(user_rows)), np.diff(filt.indptr))
            at = position[filt.indices]
            values[rows[at >= 0], at[at >= 0]] = -np.inf
        return top_k_of_rows(values, n, np.broadcast_to(head, values.shape))
