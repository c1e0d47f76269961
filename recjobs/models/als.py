"""Implicit-feedback matrix factorisation with implicit's ALS."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recjobs.interactions import Interactions, SideFeatures
from recjobs.models.base import Recommender, Vectors
from recjobs.settings import ALSParams


def confidence(data: Interactions, params: ALSParams) -> sp.csr_matrix:
    """The confidence matrix ALS fits: binary, rating-weighted or BM25-weighted."""
    if params.weighting == "rating":
        return data.matrix.astype(np.float32)
    if params.weighting == "bm25":
        from implicit.nearest_neighbours import bm25_weight

        return bm25_weight(data.binary(), K1=params.bm25_k1, B=params.bm25_b).tocsr().astype(np.float32)
    return data.binary()


class ALSModel(Recommender):
    family = "als"
    params_type = ALSParams

    def _fit(self, data: Interactions, features: SideFeatures | None) -> Vectors:
        from implicit.cpu.als import AlternatingLeastSquares

        p: ALSParams = self.params
        # implicit parallelises over users itself; a multi-threaded BLAS underneath only
        # oversubscribes the cores (implicit warns about exactly this).
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=p.factors,
                regularization=p.regularization,
                alpha=p.alpha,
                iterations=p.iterations,
                random_state=self.seed,
                calculate_training_loss=False,
            )
            model.fit(confidence(data, p), show_progress=False)
        return Vectors(
            np.asarray(model.user_factors),
            np.asarray(model.item_factors),
            np.zeros(data.n_items, np.float32),
        )
