"""Implicit-feedback matrix factorisation with implicit's ALS.

implicit runs its iterations inside ``fit``; its per-iteration callback is where
progress is logged and the ``max_seconds`` budget is checked (it stops the loop by
raising, which leaves the factors of the finished iterations in place). ALS is
deterministic with any number of threads: each user's (item's) solve depends only on
the other side's factors, so implicit uses every core.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions
from recjobs.models.vectors import VectorRecommender, Vectors
from recjobs.progress import EpochProgress
from recjobs.settings import ALSParams

log = logging.getLogger(__name__)


class _BudgetSpent(Exception):
    """Raised from implicit's iteration callback to end ``fit`` early."""


def confidence(data: Interactions, params: ALSParams) -> sp.csr_matrix:
    """The confidence matrix ALS fits: binary, rating- or BM25-weighted, times recency weights.

    ALS solves each user's factors from their confidences, so weighting recent
    interactions up is how its user vectors come to lean to recent taste.
    """
    if params.weighting == "rating":
        conf = data.matrix.astype(np.float32)
    elif params.weighting == "bm25":
        from implicit.nearest_neighbours import bm25_weight

        conf = bm25_weight(data.binary(), K1=params.bm25_k1, B=params.bm25_b).tocsr().astype(np.float32)
    else:
        conf = data.confidences()  # binary, or typed events' weights (settings.feedback)
    if params.recency_half_life is not None:
        conf = conf.tocsr()
        conf.sort_indices()  # aligned with data.matrix, whose indices are sorted
        conf.data *= data.recency_weights(params.recency_half_life)
    return conf


class ALSModel(VectorRecommender):
    family = "als"
    params_type = ALSParams

    def _fit(self, data: Interactions, features: SideFeatures | None) -> Vectors:
        from implicit.cpu.als import AlternatingLeastSquares

        p: ALSParams = self.params
        conf = confidence(data, p)
        # implicit parallelises over users itself; a multi-threaded BLAS underneath only
        # oversubscribes the cores (implicit warns about exactly this).
        with threadpool_limits(1, "blas"), EpochProgress(
                log, "als", p.iterations, conf.nnz, p.max_seconds) as progress:
            model = AlternatingLeastSquares(
                factors=p.factors,
                regularization=p.regularization,
                alpha=p.alpha,
                iterations=p.iterations,
                random_state=self.seed,
                calculate_training_loss=False,
            )

            def after_iteration(iteration: int, seconds: float, loss: float | None) -> None:
                if progress.end_epoch():
                    raise _BudgetSpent
                if iteration + 1 < p.iterations:
                    progress.start_epoch(iteration + 2)

            progress.start_epoch(1)
            try:
                model.fit(conf, show_progress=False, callback=after_iteration)
            except _BudgetSpent:
                pass
        self.info.update(progress.info())
        return Vectors(
            np.asarray(model.user_factors),
            np.asarray(model.item_factors),
            np.zeros(data.n_items, np.float32),
        )
