"""The rating model: explicit ratings predicted as the bias baseline plus what boosted trees learn.

Fitting on a training matrix of ratings (README 'Ratings'):

1. several label cutoffs inside the data (:func:`recjobs.models.stacking.label_cutoff`,
   the ranker's protocol, each ``fold`` a share of the pairs after its cutoff): for each,
   :class:`RatingStats` are computed from the part before the cutoff only, and every
   rating after it becomes a training row of features computed before it. Pooling the
   cutoffs gives the trees several times the rows one cutoff would (on MovieLens 100k's
   global-time protocol, 13,514 rows instead of 2,840), the same way rolling-origin
   backtesting pools its folds;
2. LightGBM regression, started from the bias baseline's prediction (its initial score),
   so the trees learn only what the baseline misses;
3. the statistics are recomputed on all of the data, for serving.

The features of a (user, item) pair: the baseline's prediction and both biases, a
biased-MF residual, user and item counts, spreads, recency and their latest residuals,
and two neighbourhood residuals (as Koren's KNN-baseline): the user's residuals on the
items most similar to the item, and the residuals of the users most similar to the user
on the item. Similarities are shrunk cosines of the residuals, computed in blocks over a
bounded sample of users (``similarity_users``) and a bounded pool of neighbour users
(``pool_users``), so the cost stays bounded at any size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recjobs.data.interactions import Interactions
from recjobs.errors import ArtifactError
from recjobs.models.ratings import BiasBaseline, BiasedMF

log = logging.getLogger(__name__)

DAY = 86_400.0
FEATURES = ["baseline_rating", "user_bias", "item_bias", "mf_residual",
            "user_recent5", "user_recent20", "user_rating_std", "user_log_count", "user_idle_days",
            "item_recent20", "item_rating_std", "item_log_count", "item_age_days",
            "item_neighbour_residual", "item_neighbour_weight", "user_neighbour_residual", "user_neighbour_weight"]


@dataclass(frozen=True)
class RatingParams:
    """How the rating model learns (from ``models.ranker.rating_*``)."""

    folds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    trees: int = 300
    learning_rate: float = 0.03
    leaves: int = 7
    min_child_samples: int = 100
    feature_fraction: float = 0.8
    neighbours: int = 40
    candidates: int = 100
    shrink: float = 100.0
    similarity_users: int = 20_000
    pool_users: int = 2_000
    history: int = 200
    max_train_pairs: int = 2_000_000
    threads: int = 2


def _recent_mean(owner: np.ndarray, when: np.ndarray, other: np.ndarray, values: np.ndarray, n_owner: int,
                 last: int, prior: float) -> np.ndarray:
    """Each owner's mean of ``values`` over its ``last`` latest rows, shrunk toward 0 by ``prior`` rows."""
    order = np.lexsort((other, when, owner))
    sizes = np.bincount(owner, minlength=n_owner)
    from_end = np.cumsum(sizes)[owner[order]] - 1 - np.arange(len(order))
    keep = order[from_end < last]
    sums = np.bincount(owner[keep], weights=values[keep], minlength=n_owner)
    return sums / (np.bincount(owner[keep], minlength=n_owner) + prior)


def _spread(owner: np.ndarray, values: np.ndarray, n_owner: int) -> np.ndarray:
    n = np.maximum(np.bincount(owner, minlength=n_owner), 1)
    mean = np.bincount(owner, weights=values, minlength=n_owner) / n
    return np.sqrt(np.maximum(np.bincount(owner, weights=values * values, minlength=n_owner) / n - mean**2, 0.0))


def _latest(m: sp.csr_matrix, seconds: np.ndarray, limit: int) -> sp.csr_matrix:
    """Each row's ``limit`` latest stored entries (ties by column), the rest dropped."""
    sizes = np.diff(m.indptr)
    if not len(sizes) or sizes.max() <= limit:
        return m
    rows = np.repeat(np.arange(m.shape[0]), sizes)
    order = np.lexsort((m.indices, seconds, rows))
    from_end = np.cumsum(sizes)[rows[order]] - 1 - np.arange(len(order))
    keep = np.sort(order[from_end < limit])
    return sp.csr_matrix((m.data[keep], m.indices[keep], np.concatenate(
        [[0], np.cumsum(np.bincount(rows[keep], minlength=m.shape[0]))])), shape=m.shape)


def top_neighbours(x: sp.csr_matrix, pool: np.ndarray, n: int, shrink: float,
                   block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``x``, its ``n`` most similar rows among ``pool`` (shrunk cosine, itself left out).

    Similarity of rows a and b: ``a . b`` over the norms of a and b on the columns both
    store, times ``c / (c + shrink)``, ``c`` the number of those columns. Returns (row
    indices, similarities), each rows x ``n``; where fewer than ``n`` rows are similar at
    all, the rest are -1 and 0.
    """
    x = x.tocsr().astype(np.float32)
    ones = x.copy()
    ones.data[:] = 1.0
    squares = x.multiply(x).tocsr()
    xp, op, sp_ = x[pool].T.tocsc(), ones[pool].T.tocsc(), squares[pool].T.tocsc()
    k = min(n, len(pool))
    idx = np.full((x.shape[0], n), -1, np.int32)
    sim = np.zeros((x.shape[0], n), np.float32)
    if k == 0:
        return idx, sim
    for lo in range(0, x.shape[0], block):
        hi = min(lo + block, x.shape[0])
        dot = (x[lo:hi] @ xp).toarray()
        both = (ones[lo:hi] @ op).toarray()
        # Norms over the columns both rows store (a Pearson-baseline similarity of residuals).
        norm = np.sqrt((squares[lo:hi] @ op).toarray() * (ones[lo:hi] @ sp_).toarray())
        s = dot / np.maximum(norm, 1e-9) * (both / np.maximum(both + shrink, 1e-9))
        s[pool[None, :] == np.arange(lo, hi)[:, None]] = 0.0
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(k), (hi - lo, 1))
        vals = np.take_along_axis(s, top, axis=1)
        good = vals > 0
        idx[lo:hi, :k] = np.where(good, pool[top], -1)
        sim[lo:hi, :k] = np.where(good, vals, 0.0)
    return idx, sim


class RatingStats:
    """Everything the features of a pair are computed from, measured on one training matrix."""

    ARRAYS = ("user_values", "item_values", "item_nb", "item_nb_sim", "user_nb", "user_nb_sim", "keys",
              "residual")

    def __init__(self, data: Interactions, params: RatingParams, seed: int) -> None:
        m = data.matrix.tocsr()
        n_u, n_i = m.shape
        if data.pair_seconds is None:
            raise ValueError("the rating model needs per-pair times; rerun `recjobs split` for the date")
        rows = np.repeat(np.arange(n_u), np.diff(m.indptr))
        cols, r = m.indices.astype(np.int64), m.data.astype(np.float64)
        seconds = data.pair_seconds.astype(np.int64)
        self.baseline = BiasBaseline.fit(m)
        self.mf = BiasedMF.fit(m, self.baseline, seed=seed)
        b = self.baseline
        end = int(seconds.max()) if len(seconds) else 0
        res = r - b.mu - b.user_bias[rows] - b.item_bias[cols]
        user_side = r - b.mu - b.item_bias[cols]
        item_side = r - b.mu - b.user_bias[rows]
        counts_u, counts_i = np.bincount(rows, minlength=n_u), np.bincount(cols, minlength=n_i)
        latest_u = np.full(n_u, np.iinfo(np.int64).min, np.int64)
        np.maximum.at(latest_u, rows, seconds)
        first_i = np.full(n_i, end, np.int64)
        np.minimum.at(first_i, cols, seconds)
        self.user_values = np.column_stack([
            _recent_mean(rows, seconds, cols, user_side, n_u, 5, 2.0),
            _recent_mean(rows, seconds, cols, user_side, n_u, 20, 2.0),
            _spread(rows, r, n_u), np.log1p(counts_u),
            np.where(counts_u > 0, (end - latest_u) / DAY, 0.0)]).astype(np.float32)
        self.item_values = np.column_stack([
            _recent_mean(cols, seconds, rows, item_side, n_i, 20, 5.0),
            _spread(cols, r, n_i), np.log1p(counts_i), (end - first_i) / DAY]).astype(np.float32)
        self.residual = res.astype(np.float32)
        # Sorted (user, item) keys of the stored pairs: a pair's residual by binary search.
        self.keys = rows.astype(np.int64) * n_i + cols
        if len(self.keys) > 1 and not bool(np.all(self.keys[1:] > self.keys[:-1])):
            order = np.argsort(self.keys, kind="stable")  # a matrix whose rows' columns are unsorted
            self.keys, self.residual = self.keys[order], self.residual[order]
        self.n_items = n_i
        resid = sp.csr_matrix((res.astype(np.float32), m.indices, m.indptr), shape=m.shape)
        recent = _latest(resid, seconds, params.history)
        rng = np.random.default_rng(seed)
        active = np.flatnonzero(counts_u > 0)
        sample = active if len(active) <= params.similarity_users else np.sort(
            rng.choice(active, params.similarity_users, replace=False))
        by_item = recent[sample].T.tocsr()
        self.item_nb, self.item_nb_sim = top_neighbours(by_item, np.arange(n_i), params.candidates, params.shrink)
        pool = active if len(active) <= params.pool_users else np.sort(
            rng.choice(active, params.pool_users, replace=False))
        self.user_nb, self.user_nb_sim = top_neighbours(recent, pool, params.candidates, params.shrink)
        self.neighbours = params.neighbours

    def _lookup(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residuals of (user, item) pairs and whether each pair is stored (0 where not)."""
        q = users.astype(np.int64) * self.n_items + items
        at = np.minimum(np.searchsorted(self.keys, q), max(len(self.keys) - 1, 0))
        found = (users >= 0) & (items >= 0) & (self.keys[at] == q) if len(self.keys) else np.zeros(len(q), bool)
        return np.where(found, self.residual[at] if len(self.keys) else 0.0, 0.0), found

    def _neighbour_residual(self, nb: np.ndarray, nb_sim: np.ndarray, fixed: np.ndarray,
                            over: np.ndarray, users_vary: bool) -> tuple[np.ndarray, np.ndarray]:
        """Similarity-weighted residuals of the ``neighbours`` most similar neighbours that rated."""
        cand, s = nb[over], nb_sim[over]
        fixed2 = np.broadcast_to(fixed[:, None], cand.shape)
        users, items = (cand, fixed2) if users_vary else (fixed2, cand)
        vals, found = self._lookup(users.ravel(), items.ravel())
        vals, found = vals.reshape(cand.shape), found.reshape(cand.shape) & (cand >= 0)
        s = np.where(found, s, 0.0)
        if s.shape[1] > self.neighbours:
            top = np.argpartition(-s, self.neighbours - 1, axis=1)[:, :self.neighbours]
            s, vals = np.take_along_axis(s, top, axis=1), np.take_along_axis(vals, top, axis=1)
        weight = s.sum(axis=1)
        return (s * vals).sum(axis=1) / (weight + 1.0), weight

    def features(self, users: np.ndarray, items: np.ndarray, chunk: int = 50_000) -> np.ndarray:
        """The rating features (:data:`FEATURES`) of (user row, item column) pairs."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        out = np.zeros((len(users), len(FEATURES)), np.float32)
        n_u, n_i = len(self.user_values), len(self.item_values)
        for lo in range(0, len(users), chunk):
            u, i = users[lo:lo + chunk], items[lo:lo + chunk]
            known_u, known_i = (u >= 0) & (u < n_u), (i >= 0) & (i < n_i)
            uc, ic = np.clip(u, 0, max(n_u - 1, 0)), np.clip(i, 0, max(n_i - 1, 0))
            b = self.baseline
            cols = [b.predict(u, i), np.where(known_u, b.user_bias[uc], 0.0), np.where(known_i, b.item_bias[ic], 0.0),
                    self.mf.predict(u, i)]
            cols += [np.where(known_u, v, 0.0) for v in self.user_values[uc].T]
            cols += [np.where(known_i, v, 0.0) for v in self.item_values[ic].T]
            neighbourly = np.zeros((4, len(u)))  # item residual and weight, user residual and weight
            both = known_u & known_i
            if both.any():
                neighbourly[:2, both] = self._neighbour_residual(self.item_nb, self.item_nb_sim, u[both], i[both],
                                                                 users_vary=False)
                neighbourly[2:, both] = self._neighbour_residual(self.user_nb, self.user_nb_sim, i[both], u[both],
                                                                 users_vary=True)
            cols += list(neighbourly)
            out[lo:lo + len(u)] = np.column_stack(cols)
        return out

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays that :meth:`restore` reads back."""
        out = {f"{prefix}{name}": getattr(self, name) for name in self.ARRAYS}
        out[f"{prefix}scalars"] = np.asarray([self.n_items, self.neighbours], np.int64)
        out.update(self.baseline.state(f"{prefix}baseline__"))
        out.update(self.mf.state(f"{prefix}mf__"))
        return out

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], prefix: str) -> RatingStats:
        stats = cls.__new__(cls)
        for name in cls.ARRAYS:
            setattr(stats, name, arrays[f"{prefix}{name}"])
        stats.n_items, stats.neighbours = (int(v) for v in arrays[f"{prefix}scalars"])
        stats.baseline = BiasBaseline.restore(arrays, f"{prefix}baseline__")
        stats.mf = BiasedMF.restore(arrays, f"{prefix}mf__")
        return stats


class RatingModel:
    """Predicts explicit ratings: :class:`RatingStats` features, LightGBM boosted from the bias baseline."""

    def __init__(self, booster: Any, stats: RatingStats) -> None:  # noqa: ANN401 - a lightgbm Booster
        self.booster = booster
        self.stats = stats

    @classmethod
    def fit(cls, data: Interactions, protocol: str, min_label_users: int, params: RatingParams, seed: int,
            info: dict[str, Any] | None = None) -> RatingModel | None:
        """Learn from ``data``'s ratings after each fold's cutoff (None when no fold has any)."""
        import lightgbm as lgb

        from recjobs.models.stacking import label_cutoff

        xs, ys = [], []
        for fraction in params.folds:
            split = label_cutoff(data, protocol, fraction, min_label_users)
            rated = split.ratings.tocoo()
            if not rated.nnz:
                continue
            log.info("rating model: %s fold %.2f: %s ratings after the cutoff, features from %s before it",
                     split.protocol, fraction, f"{rated.nnz:,}", f"{split.inner.nnz:,}")
            stats = RatingStats(split.inner, params, seed)
            xs.append(stats.features(rated.row, rated.col))
            ys.append(rated.data.astype(np.float32))
            del stats, split
        if not xs:
            return None
        x, y = np.vstack(xs), np.concatenate(ys)
        if len(y) > params.max_train_pairs:
            keep = np.sort(np.random.default_rng(seed).choice(len(y), params.max_train_pairs, replace=False))
            x, y = x[keep], y[keep]
        start = x[:, 0]
        lgb_params = {"objective": "regression", "learning_rate": params.learning_rate, "num_leaves": params.leaves,
                      "min_child_samples": params.min_child_samples, "feature_fraction": params.feature_fraction,
                      "num_threads": params.threads, "seed": seed, "deterministic": True, "force_row_wise": True,
                      "verbosity": -1}
        booster = lgb.train(lgb_params, lgb.Dataset(x, y, init_score=start, feature_name=FEATURES), params.trees)
        fitted = booster.predict(x, num_threads=params.threads) + start
        if info is not None:
            gains = booster.feature_importance("gain")
            top = sorted(zip(FEATURES, gains, strict=True), key=lambda ng: -ng[1])[:6]
            info.update(rating_train_pairs=int(len(y)),
                        rating_train_rmse=round(float(np.sqrt(np.mean((fitted - y) ** 2))), 4),
                        rating_top_features=[f"{n} {g:.0f}" for n, g in top])
        log.info("rating model: %s ratings from %d folds; statistics on all of the data, for serving",
                 f"{len(y):,}", len(xs))
        return cls(booster, RatingStats(data, params, seed))

    def predict(self, users: np.ndarray, items: np.ndarray, threads: int = 2) -> np.ndarray:
        """Predicted ratings of (user row, item column) pairs, within the training ratings' range."""
        x = self.stats.features(users, items)
        b = self.stats.baseline
        return np.clip(self.booster.predict(x, num_threads=threads) + x[:, 0], b.low, b.high).astype(np.float32)

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays that :meth:`restore` reads back."""
        out = self.stats.state(f"{prefix}stats__")
        out[f"{prefix}booster"] = np.frombuffer(self.booster.model_to_string().encode(), np.uint8)
        return out

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], prefix: str) -> RatingModel:
        import lightgbm as lgb

        booster = lgb.Booster(model_str=arrays[f"{prefix}booster"].tobytes().decode())
        if booster.num_feature() != len(FEATURES):
            raise ArtifactError(f"rating model has {booster.num_feature()} features, this recjobs computes "
                                f"{len(FEATURES)}: it was trained by another version; retrain it")
        return cls(booster, RatingStats.restore(arrays, f"{prefix}stats__"))


__all__ = ["FEATURES", "RatingModel", "RatingParams", "RatingStats", "top_neighbours"]
