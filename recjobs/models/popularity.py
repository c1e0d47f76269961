"""Popularity baseline: the same list for everyone, ordered by (recency-weighted) counts."""

from __future__ import annotations

import numpy as np

from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions
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
