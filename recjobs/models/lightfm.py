"""LightFM: a hybrid factorisation model (WARP loss by default) over ids and side features.

Training runs one ``fit_partial`` epoch at a time (the same random stream, so the
same result, as ``fit(epochs=n)``), which lets it log progress and stop on the
``max_seconds`` budget at an epoch boundary.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions
from recjobs.models.vectors import VectorRecommender, Vectors
from recjobs.progress import EpochProgress
from recjobs.settings import LightFMParams

log = logging.getLogger(__name__)


def _with_identity(features: sp.csr_matrix | None, n: int, use: bool) -> sp.csr_matrix | None:
    # LightFM's hybrid mode needs the per-id indicator alongside the side features so that
    # well-known ids keep their own embedding while rare ones lean on shared features.
    if not use or features is None:
        return None
    identity = sp.identity(n, dtype=np.float32, format="csr")
    stacked = sp.hstack([identity, features], format="csr", dtype=np.float32)
    sums = np.asarray(stacked.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.maximum(sums, 1e-12)).dot(stacked).tocsr().astype(np.float32)


def _sample_pairs(pairs: sp.coo_matrix, n: int, rng: np.random.Generator) -> sp.coo_matrix:
    """``n`` of the matrix's pairs drawn without replacement (seeded), in their original order; all if ``n`` covers them."""
    if n >= pairs.nnz:
        return pairs
    keep = np.sort(rng.choice(pairs.nnz, n, replace=False))
    return sp.coo_matrix((pairs.data[keep], (pairs.row[keep], pairs.col[keep])), shape=pairs.shape)


def _ones(pairs: sp.coo_matrix) -> sp.coo_matrix:
    """``pairs`` with every value 1, in the same order (LightFM pairs sample weights with entries by position)."""
    return sp.coo_matrix((np.ones(pairs.nnz, np.float32), (pairs.row, pairs.col)), shape=pairs.shape)


class LightFMModel(VectorRecommender):
    family = "lightfm"
    params_type = LightFMParams
    # Cold items (recjobs.ranking.coldstart.ColdItemProjection): set by a fit with item features.
    item_feature_names: np.ndarray | None = None
    _feature_part: tuple[np.ndarray, np.ndarray] | None = None

    def project_item_features(self, features: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and biases of items from L1-normalised features alone (no identity feature).

        The features keep the weights a trained item's features have next to its identity
        (see :func:`_with_identity`), so a new item is a trained item with the same features
        minus its own identity term. A new item still sits at the centre of its features,
        so it ranks high for their fans (generated test data, one new item of one of six
        genres: rank 1 for 33 of 120 users, 47 with the features at full weight).
        """
        if self._feature_part is None:
            raise RuntimeError("lightfm: not fitted with item features in this process")
        embeddings, biases = self._feature_part
        sums = np.asarray(features.sum(axis=1)).ravel()
        weighted = sp.diags(1.0 / (1.0 + sums)).dot(features).tocsr()
        return np.asarray(weighted @ embeddings, np.float32), np.asarray(weighted @ biases, np.float32)

    def _fit(self, data: Interactions, features: SideFeatures | None) -> Vectors:
        from lightfm import LightFM

        p: LightFMParams = self.params
        item_features = _with_identity(features.item if features else None, data.n_items, p.use_item_features)
        user_features = _with_identity(features.user if features else None, data.n_users, p.use_user_features)
        model = LightFM(
            no_components=p.no_components,
            loss=p.loss,
            learning_rate=p.learning_rate,
            item_alpha=p.item_alpha,
            user_alpha=p.user_alpha,
            max_sampled=p.max_sampled,
            random_state=np.random.RandomState(self.seed),
        )
        # Converted once here so that each fit_partial call's own conversions are no-ops. The
        # pairs carry their confidences (typed events' weights), given to LightFM as sample
        # weights; untyped pairs all weigh 1, LightFM's own default, so they are left out.
        interactions = data.confidences().tocoo()
        weighted = data.typed
        per_epoch = interactions.nnz if p.examples_per_epoch is None else min(p.examples_per_epoch, interactions.nnz)
        rng = np.random.default_rng(self.seed)
        if per_epoch < interactions.nnz:
            log.info("lightfm: %s of %s training pairs per epoch, a fresh sample each (models.lightfm."
                     "examples_per_epoch)", f"{per_epoch:,}", f"{interactions.nnz:,}")
        with EpochProgress(log, "lightfm", p.epochs, per_epoch, p.max_seconds) as progress:
            for epoch in range(1, p.epochs + 1):
                progress.start_epoch(epoch)
                pairs = _sample_pairs(interactions, per_epoch, rng)
                model.fit_partial(
                    _ones(pairs) if weighted else pairs,
                    sample_weight=pairs if weighted else None,
                    user_features=user_features,
                    item_features=item_features,
                    epochs=1,
                    num_threads=p.num_threads,
                )
                if progress.end_epoch():
                    break
        self.info.update(progress.info(), num_threads=p.num_threads, examples_per_epoch=per_epoch)
        user_bias, user_emb = model.get_user_representations(user_features)
        item_bias, item_emb = model.get_item_representations(item_features)
        self.info["hybrid"] = {"items": item_features is not None, "users": user_features is not None}
        if item_features is not None:
            # Rows after the identity rows embed the side features themselves: a new item is
            # represented by them alone, as its own identity feature was never trained.
            self.item_feature_names = features.item_names
            self._feature_part = (model.item_embeddings[data.n_items:].astype(np.float32),
                                  model.item_biases[data.n_items:].astype(np.float32))
        # The user bias shifts all of a user's scores equally, so it is dropped: rankings are
        # unchanged and the score stays a pure matrix product plus item bias.
        del user_bias
        return Vectors(user_emb, item_emb, item_bias)
