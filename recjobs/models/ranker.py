"""The learned ranker: LightGBM lambdarank over several families' candidates (two-stage ranking).

Fitting on a training matrix ``data``:

1. a label cutoff inside ``data`` (:func:`recjobs.models.stacking.label_cutoff`): the
   generators are fitted on the part before it, features are computed from that part
   only, and a candidate's label is whether the user interacted with it after it;
2. each labelled user's candidates (the union of every generator's top-K, seen items
   left out) become one query group; LightGBM's ``lambdarank`` (or ``binary``) learns to
   order them, with early stopping on a share of the users;
3. the generators are fitted again on all of ``data``, and the features' statistics
   recomputed on it, for serving: a user's scores are the booster's over their
   candidates, -inf elsewhere (non-candidates are never recommended); its lists are
   ranked among the candidates only;
4. where ratings are explicit, a rating model (:class:`recjobs.models.rating_model.RatingModel`)
   learns them on its own features, for ``predict_ratings``.

:class:`~recjobs.models.base.Peers` spare it one of the two fits of its generators: those
the night already fitted on ``data`` serve as they are; given a part of ``data`` before a
cutoff, generators fitted on it and the pairs after it (the final model: the split's
training part, the night's candidates and the holdout), it learns from those labels
instead of cutting ``data`` itself.

It implements the model contract like every family (score/recommend with seen items
excluded, similar_items and item_embedding from its first generator that has them,
save/load of the generators' states, the feature statistics and the booster in one
artifact), so the gate compares it with its own generators and publishing, re-ranking and
cold start treat it like any other family.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel

from recjobs.arrays import stored_values
from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions
from recjobs.errors import ArtifactError, ModelError
from recjobs.models import forest
from recjobs.models.base import Peers, Recommender
from recjobs.models.rating_model import RatingModel, RatingParams
from recjobs.models.ratings import explicit
from recjobs.models.registry import FAMILIES, get_family
from recjobs.models.stacking import (
    Candidates,
    FeatureBase,
    LabelSplit,
    candidate_features,
    feature_names,
    generate,
    given_split,
    label_cutoff,
)
from recjobs.models.topk import top_k_of_rows
from recjobs.progress import Heartbeat
from recjobs.settings import RankerParams

log = logging.getLogger(__name__)

# FeatureBase attributes saved in the artifact (dense arrays) and its sparse matrices.
_BASE_ARRAYS = ("item_count", "item_first", "item_last", "user_count", "user_last", "user_first", "item_rating",
                "user_rating", "_keys", "embedding", "unit")
_BASE_SPARSE = ("history", "latest", "item_side", "user_side")


def _lgb() -> Any:  # noqa: ANN401 - the lightgbm module, imported on first use
    import lightgbm

    return lightgbm


def sample_negatives(y: np.ndarray, sizes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Mask over consecutive groups of ``sizes`` rows: every positive, at most ``n`` random negatives each."""
    group = np.repeat(np.arange(len(sizes)), sizes)
    negative = np.flatnonzero(y == 0)
    # Negatives in random order within their group; the first n of each group are kept.
    order = negative[np.lexsort((rng.random(len(negative)), group[negative]))]
    first = np.searchsorted(group[order], np.arange(len(sizes)))
    rank = np.arange(len(order)) - first[group[order]]
    keep = y > 0
    keep[order[rank < n]] = True
    return keep


class RankerModel(Recommender):
    family = "ranker"
    params_type = RankerParams
    kind = "ranker"

    def __init__(self, params: BaseModel | None = None, seed: int = 42) -> None:
        super().__init__(params, seed)
        self.generators: list[Recommender] = []
        self.base: FeatureBase | None = None
        self.booster: Any = None
        self.rating_model: RatingModel | None = None
        self._forest: forest.ForestPredictor | None = None

    # -- fitting -------------------------------------------------------------------
    def _generator(self, name: str, data: Interactions, features: SideFeatures | None) -> Recommender:
        return get_family(name)(self.peer_params()[name], seed=self.seed).fit(data, features)

    def _names(self) -> list[str]:
        # Registry order, whatever order the settings (or a saved artifact's sorted JSON) list them in.
        return [f for f in FAMILIES if f in self.params.generators]

    def _ks(self) -> list[int]:
        return [self.params.generators[g] for g in self._names()]

    def peer_params(self) -> dict[str, BaseModel]:
        """Its generators, with their parameters: the night's models of those families can serve,
        or (fitted on the part before its labels) propose its training candidates."""
        p: RankerParams = self.params
        return {g: get_family(g).params_type.model_validate(p.generator_params.get(g, {})) for g in self._names()}

    def _labelled(self, data: Interactions, features: SideFeatures | None, peers: Peers,
                  beat: Heartbeat) -> tuple[LabelSplit, list[Recommender], SideFeatures | None, str]:
        """The label split, the generators fitted before it (the peers' where given, else fitted
        here) and the side features aligned to the split's ``inner`` data."""
        p: RankerParams = self.params
        names = self._names()
        if peers.before is not None and peers.after is not None:
            fitted = [g for g in names if g in peers.before_fitted]
            beat.phase(f"labels: the {peers.after.nnz:,} pairs after the given cutoff; generators on the "
                       f"{peers.before.nnz:,} pairs before it ({', '.join(fitted) or 'none'} already fitted)")
            before, before_features = peers.before, peers.before_features
            return (given_split(before, peers.after),
                    [peers.before_fitted[g] if g in fitted else self._generator(g, before, before_features)
                     for g in names], before_features, "given")
        split = label_cutoff(data, p.label_split, p.label_fraction, p.min_label_users)
        beat.phase(f"generators {', '.join(names)} on the data before the {split.protocol} label "
                   f"cutoff ({split.inner.nnz:,} pairs; {split.labels.nnz:,} labels after it)")
        return split, [self._generator(g, split.inner, features) for g in names], features, split.protocol

    def _learn(self, data: Interactions, features: SideFeatures | None, peers: Peers) -> None:
        p: RankerParams = self.params
        lgb = _lgb()
        started = time.perf_counter()
        with Heartbeat(log, "ranker") as beat:
            split, inner, inner_features, protocol = self._labelled(data, features, peers, beat)
            base = FeatureBase(split.inner, inner_features, self.seed)
            has_label = np.diff(split.labels.indptr) > 0
            has_history = np.diff(split.inner.matrix.indptr) > 0
            users = np.flatnonzero(has_label & has_history)
            rng = np.random.default_rng(self.seed)
            if p.max_train_users is not None and len(users) > p.max_train_users:
                users = np.sort(rng.choice(users, p.max_train_users, replace=False))
            beat.phase(f"candidates and features of {len(users):,} labelled users")
            xs, ys, groups, found = [], [], [], 0
            for lo in range(0, len(users), p.chunk_users):
                rows = users[lo:lo + p.chunk_users]
                cands = generate(inner, self._ks(), rows, split.inner.matrix)
                x = candidate_features(base, cands, rows)
                y = np.asarray(split.labels[rows[cands.user], cands.item]).ravel().astype(np.float32)
                found += int(y.sum())
                xs.append(x)
                ys.append(y)
                groups.append(np.bincount(cands.user, minlength=len(rows)))
            x, y, sizes = np.vstack(xs), np.concatenate(ys), np.concatenate(groups)
            del xs, ys
            total = int(split.labels[users].sum())
            # Groups without a positive teach lambdarank nothing (every order has NDCG 0).
            starts = np.concatenate([[0], np.cumsum(sizes)])
            pos = np.add.reduceat(y, starts[:-1]) if len(y) else np.zeros(0)
            pos = np.where(sizes > 0, pos, 0)
            keep_group = pos > 0
            keep_rows = np.repeat(keep_group, sizes)
            x, y, sizes = x[keep_rows], y[keep_rows], sizes[keep_group]
            if p.negatives_per_user is not None:
                kept = sample_negatives(y, sizes, p.negatives_per_user, rng)
                x, y = x[kept], y[kept]
                sizes = np.bincount(np.repeat(np.arange(len(sizes)), sizes)[kept], minlength=len(sizes))
            n_groups = len(sizes)
            if n_groups < 2 or y.sum() == 0:
                raise ModelError(f"ranker: only {n_groups} users have a label among their candidates; "
                                 "too little data to learn a ranking (fewer generators' misses: raise their K)")
            n_valid = int(round(n_groups * p.validation_fraction)) if n_groups >= 20 else 0
            valid_group = np.zeros(n_groups, bool)
            if n_valid:
                valid_group[rng.choice(n_groups, n_valid, replace=False)] = True
            valid_rows = np.repeat(valid_group, sizes)
            names = feature_names(self._names(), base, *self._side_names(inner_features))
            params = {
                "objective": p.objective, "learning_rate": p.learning_rate, "num_leaves": p.leaves,
                "min_child_samples": p.min_child_samples, "feature_fraction": p.feature_fraction,
                "num_threads": p.threads, "seed": self.seed, "deterministic": True, "force_row_wise": True,
                "verbosity": -1, "metric": "ndcg", "eval_at": [10],
            }
            beat.phase(f"LightGBM {p.objective} on {len(y):,} candidates of {n_groups:,} users "
                       f"({int(y.sum()):,} positives, {x.shape[1]} features)")
            train_set = lgb.Dataset(x[~valid_rows], y[~valid_rows], group=sizes[~valid_group],
                                    feature_name=names, free_raw_data=True)
            callbacks, valid_sets = [], []
            if n_valid:
                valid_sets = [lgb.Dataset(x[valid_rows], y[valid_rows], group=sizes[valid_group],
                                          reference=train_set)]
                callbacks = [lgb.early_stopping(p.early_stopping, verbose=False)]
            booster = lgb.train(params, train_set, num_boost_round=p.trees, valid_sets=valid_sets,
                                callbacks=callbacks)
            fit_s = time.perf_counter() - started
            gains = booster.feature_importance("gain")
            top = sorted(zip(names, gains, strict=True), key=lambda ng: -ng[1])[:10]
            self.info.update(
                label_protocol=protocol, train_users=int(n_groups), train_candidates=int(len(y)),
                candidate_recall=round(found / max(total, 1), 4), trees=int(booster.best_iteration or p.trees),
                top_features=[f"{n} {g:.0f}" for n, g in top], fit_seconds_ranker=round(fit_s, 1))
            log.info("ranker: %s labels; candidates hold %.1f%% of them; %d trees; top features %s",
                     protocol, 100 * found / max(total, 1), self.info["trees"], ", ".join(
                         self.info["top_features"][:5]))
            del x, y, inner, base, split
            rating_model = None
            auto = p.ratings == "auto" and explicit(data.matrix.data)
            if auto and data.nnz > p.rating_auto_max_pairs:
                log.info("ranker: no rating model: %s training pairs are more than models.ranker."
                         "rating_auto_max_pairs=%s (models.ranker.ratings=on fits it anyway)",
                         f"{data.nnz:,}", f"{p.rating_auto_max_pairs:,}")
                auto = False
            if p.ratings == "on" or auto:
                # Given labels say nothing of how its own folds should be cut: the settings' rule.
                folds = p.label_split if protocol == "given" else protocol
                beat.phase(f"the rating model ({len(p.rating_folds)} {folds} folds of ratings after their cutoffs)")
                rating_model = RatingModel.fit(data, folds, p.min_label_users, self._rating_params(), self.seed,
                                               self.info)
            reused = [g for g in self._names() if g in peers.fitted]
            beat.phase("generators and feature statistics on all of the data, for serving"
                       + (f" ({', '.join(reused)} already fitted on it)" if reused else ""))
            self.generators = [peers.fitted[g] if g in peers.fitted else self._generator(g, data, features)
                               for g in self._names()]
            self.base = FeatureBase(data, features, self.seed)
            self.booster = booster
            self.rating_model = rating_model

    def _rating_params(self) -> RatingParams:
        p: RankerParams = self.params
        return RatingParams(
            folds=tuple(p.rating_folds), trees=p.rating_trees, learning_rate=p.rating_learning_rate,
            leaves=p.rating_leaves, min_child_samples=p.min_child_samples, feature_fraction=p.feature_fraction,
            neighbours=p.rating_neighbours, candidates=p.rating_candidates, shrink=p.rating_shrink,
            similarity_users=p.rating_similarity_users, pool_users=p.rating_pool_users,
            history=p.rating_history, max_train_pairs=p.rating_max_train_pairs, threads=p.threads)

    def predicts_ratings(self) -> bool:
        """Whether :meth:`predict_ratings` has a rating model (explicit ratings were learned)."""
        return self.rating_model is not None

    def predict_ratings(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """Predicted ratings of (user row, item column) pairs, within the training ratings' range."""
        self._parts()
        if self.rating_model is None:
            raise ModelError("ranker: no rating model (ratings are not explicit, or models.ranker.ratings=off)")
        return self.rating_model.predict(user_rows, item_rows, self.params.threads)

    @staticmethod
    def _side_names(features: SideFeatures | None) -> tuple[np.ndarray, np.ndarray]:
        empty = np.asarray([], dtype=object)
        if features is None:
            return empty, empty
        return features.item_names, features.user_names

    # -- scoring -------------------------------------------------------------------
    def _parts(self) -> tuple[list[Recommender], FeatureBase, Any]:
        if self.base is None or self.booster is None or not self.generators:
            raise ModelError(f"{self.family}: model is not fitted")
        return self.generators, self.base, self.booster

    def _predicted(self, rows: np.ndarray) -> Iterator[tuple[int, Candidates, np.ndarray]]:
        """Per block of ``rows``: its offset, its users' candidates and the booster's scores of them."""
        gens, base, booster = self._parts()
        for lo in range(0, len(rows), self.params.chunk_users):
            part = rows[lo:lo + self.params.chunk_users]
            cands = generate(gens, self._ks(), part, base.history)
            if len(cands.item):
                if self._forest is None or self._forest.booster is not booster:
                    self._forest = forest.ForestPredictor(booster, self.params.threads, forest.COMPILE_AFTER_ROWS)
                yield lo, cands, self._forest.predict(candidate_features(base, cands, part))

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """The booster's scores of each user's candidates; -inf for every other item."""
        rows = np.asarray(user_rows, np.int64)
        out = np.full((len(rows), self._parts()[1].n_items), -np.inf, np.float32)
        for lo, cands, pred in self._predicted(rows):
            out[lo + cands.user, cands.item] = pred
        return out

    def recommend(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score`'s top-``n`` lists, ranked among each user's candidates only (no users x items block)."""
        self._require_fitted()
        rows = np.asarray(user_rows, np.int64)
        ids = np.full((len(rows), n), -1, np.int64)
        scores = np.full((len(rows), n), -np.inf, np.float32)
        for lo, cands, pred in self._predicted(rows):
            m = int(np.bincount(cands.user).max())
            # Candidates come in (user, item) order: pack each user's into one row of a block.
            first = np.searchsorted(cands.user, np.arange(int(cands.user.max()) + 1))
            slot = np.arange(len(cands.user)) - first[cands.user]
            values = np.full((int(cands.user.max()) + 1, m), -np.inf, np.float32)
            columns = np.zeros(values.shape, np.int64)
            kept = np.isfinite(pred)
            if exclude is not None:
                kept &= ~stored_values(exclude[rows[lo:lo + len(values)]], cands.user, cands.item)[1]
            values[cands.user[kept], slot[kept]] = pred[kept]
            columns[cands.user, slot] = cands.item
            top, best = top_k_of_rows(values, n, columns)
            ids[lo:lo + len(top)], scores[lo:lo + len(top)] = top, best
        return ids, scores

    def _neighbour_source(self) -> Recommender | None:
        return next((g for g in self._parts()[0] if g.has_similar_items()), None)

    def similar_items(self, item_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Its first generator's item neighbours (the ranker learns a user-item order, not item-item)."""
        source = self._neighbour_source()
        if source is None:
            return (np.full((len(item_rows), n), -1, np.int64), np.full((len(item_rows), n), -np.inf, np.float32))
        return source.similar_items(item_rows, n)

    def has_similar_items(self) -> bool:
        return self._neighbour_source() is not None

    def item_embedding(self) -> np.ndarray | None:
        return self._parts()[1].embedding

    # -- artifact ------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        gens, base, booster = self._parts()
        out: dict[str, np.ndarray] = {"booster": np.frombuffer(booster.model_to_string().encode(), np.uint8),
                                      "base_scalars": np.asarray([base.end, base.origin, base.n_items,
                                                                  base._span], np.int64)}
        for j, g in enumerate(gens):
            out.update({f"g{j}__{k}": v for k, v in g._state().items()})
        if self.rating_model is not None:
            out.update(self.rating_model.state("rating__"))
        for name in _BASE_ARRAYS:
            out[f"base__{name}"] = getattr(base, name)
        for name in _BASE_SPARSE:
            m = getattr(base, name)
            if m is not None:
                out.update({f"sp__{name}__data": m.data, f"sp__{name}__indices": m.indices,
                            f"sp__{name}__indptr": m.indptr, f"sp__{name}__shape": np.asarray(m.shape, np.int64)})
        return out

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        lgb = _lgb()
        self.booster = lgb.Booster(model_str=arrays["booster"].tobytes().decode())
        if "rating_booster" in arrays:
            raise ArtifactError("ranker artifact holds a rating model from another version; retrain it")
        self.rating_model = RatingModel.restore(arrays, "rating__") if "rating__booster" in arrays else None
        base = FeatureBase.__new__(FeatureBase)
        base.end, base.origin, base.n_items, base._span = (int(v) for v in arrays["base_scalars"])
        for name in _BASE_ARRAYS:
            setattr(base, name, arrays[f"base__{name}"])
        for name in _BASE_SPARSE:
            if f"sp__{name}__data" in arrays:
                shape = tuple(int(v) for v in arrays[f"sp__{name}__shape"])
                setattr(base, name, sp.csr_matrix((arrays[f"sp__{name}__data"], arrays[f"sp__{name}__indices"],
                                                   arrays[f"sp__{name}__indptr"]), shape=shape))
            else:
                setattr(base, name, None)
        # A booster trained on another feature set (an artifact from before a feature change)
        # would score garbage or fail deep in LightGBM: refuse it here, by name.
        widths = [0 if m is None else m.shape[1] for m in (base.item_side, base.user_side)]
        expected = len(feature_names(self._names(), base, *(np.asarray([""] * w, object) for w in widths)))
        if self.booster.num_feature() != expected:
            raise ArtifactError(f"ranker artifact has {self.booster.num_feature()} features, this recjobs computes "
                             f"{expected}: it was trained by another version; retrain it")
        self.base = base
        self.generators = []
        for j, (name, params) in enumerate(self.peer_params().items()):
            g = get_family(name)(params, seed=self.seed)
            prefix = f"g{j}__"
            g._restore({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
            # Fitted on the ranker's own data: the same users and items.
            g.user_ids, g.item_ids = self.user_ids, self.item_ids
            self.generators.append(g)


__all__ = ["RankerModel", "sample_negatives"]
