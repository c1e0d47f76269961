"""Ranking metrics on a holdout, the same code for every model family.

Each evaluated user is one with both training interactions and held-out ones.
Items seen in training are excluded from the ranking; every held-out item counts
as relevant (implicit feedback), including items the model has never seen, which
it therefore can only miss.

Beyond accuracy: intra-list diversity (mean pairwise cosine distance of a list's
items, by item features when given, else by the model's item vectors) and novelty
(mean self-information of the listed items). Per-user values of the accuracy
metrics come back too (:class:`PerUser`), so that two models evaluated on the same
holdout can be compared by a paired test over users (:mod:`recjobs.evaluation.significance`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recjobs.data.ids import same_ids
from recjobs.data.interactions import Holdout, Interactions
from recjobs.errors import ModelError
from recjobs.files import atomic_file
from recjobs.models.base import Recommender

ACCURACY = ("precision", "recall", "ndcg", "map")


@dataclass(frozen=True)
class PerUser:
    """Per-user accuracy metrics of one evaluation: ``users`` are training user rows, sorted."""

    users: np.ndarray
    values: dict[str, np.ndarray]

    def save(self, path: Path | str, **meta: str) -> Path:
        """Write ``path`` (an ``.npz``) atomically; ``meta`` strings (e.g. the data fingerprint) ride along."""
        path = Path(path)
        with atomic_file(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, users=self.users, **{f"m_{k}": v for k, v in self.values.items()},
                     **{f"meta_{k}": np.asarray(v) for k, v in meta.items()})
        return path

    @classmethod
    def load(cls, path: Path | str) -> tuple[PerUser, dict[str, str]]:
        """Read what :meth:`save` wrote: the arrays and the ``meta`` strings."""
        with np.load(path, allow_pickle=False) as npz:
            values = {k[2:]: npz[k] for k in npz.files if k.startswith("m_")}
            meta = {k[5:]: str(npz[k]) for k in npz.files if k.startswith("meta_")}
            return cls(npz["users"], values), meta


@dataclass(frozen=True)
class Metrics:
    k: int
    precision: float
    recall: float
    ndcg: float
    map: float
    coverage: float
    users: int
    seconds: float
    # NaN when not measurable: no item features and no item vectors (diversity), or no list.
    diversity: float = math.nan
    novelty: float = math.nan
    # What diversity was measured on: "features", "embedding" or "none".
    diversity_basis: str = "none"
    per_user: PerUser | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The scalar metrics (the per-user arrays left out; NaN as None, so it is plain JSON)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "per_user"}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}


def ranking_metrics(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user metrics from a boolean ``hits`` matrix (users x k, best first).

    precision = hits/k; recall = hits/|relevant|; NDCG with binary gains and ideal
    DCG over min(|relevant|, k); MAP@k = sum of precision at each hit / min(|relevant|, k).
    """
    hits = hits.astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    n_hits = hits.sum(axis=1)
    ideal_len = np.minimum(n_relevant, k)
    idcg = np.cumsum(discounts)[np.maximum(ideal_len, 1) - 1]
    dcg = hits @ discounts
    precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    ap = (precision_at_i * hits).sum(axis=1) / np.maximum(ideal_len, 1)
    return {
        "precision": n_hits / k,
        "recall": n_hits / np.maximum(n_relevant, 1),
        "ndcg": dcg / idcg,
        "map": ap,
    }


def self_information(train: Interactions) -> np.ndarray:
    """Per training item, ``-log2`` of the share of training users who interacted with it (bits)."""
    users_per_item = np.bincount(train.matrix.indices, minlength=train.n_items).astype(np.float64)
    # Every training item has at least one user; the guard only keeps log2 finite.
    return -np.log2(np.maximum(users_per_item, 1.0) / max(train.n_users, 1))


def unit_rows(vectors: np.ndarray | sp.spmatrix) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray]:
    """Rows scaled to unit length, and which rows are usable (non-zero and finite)."""
    if sp.issparse(vectors):
        x = sp.csr_matrix(vectors, dtype=np.float64)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        valid = (norms > 0) & np.isfinite(norms)
        scale = np.where(valid, 1.0 / np.where(valid, norms, 1.0), 0.0)
        return sp.diags(scale).dot(x).tocsr(), valid
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    valid = (norms > 0) & np.isfinite(norms)
    return np.where(valid[:, None], x / np.where(valid, norms, 1.0)[:, None], 0.0), valid


def list_diversity(top: np.ndarray, unit: np.ndarray | sp.csr_matrix, valid: np.ndarray) -> np.ndarray:
    """Per list (row of ``top``, -1 padded): mean pairwise cosine distance of its items.

    With unit vectors u_i, the sum of pairwise similarities is (|sum u_i|^2 - m) / 2,
    so one (lists x d) sum per chunk replaces the (lists x k x k) Gram blocks; exact,
    and it works for sparse feature rows too. Items without a usable vector are left
    out of the pairs; a list with fewer than two such items is NaN.
    """
    ok = top >= 0
    ok[ok] = valid[top[ok]]
    m = ok.sum(axis=1).astype(np.float64)
    rows, cols = np.nonzero(ok)
    pick = sp.csr_matrix((np.ones(len(rows)), (rows, top[rows, cols])), shape=(len(top), unit.shape[0]))
    summed = pick @ unit
    if sp.issparse(summed):
        sq = np.asarray(summed.multiply(summed).sum(axis=1)).ravel()
    else:
        sq = np.einsum("ij,ij->i", summed, summed)
    pairs = m * (m - 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_sim = (sq - m) / pairs
    return np.where(m >= 2, 1.0 - mean_sim, np.nan)


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def evaluate_model(
    model: Recommender,
    train: Interactions,
    holdout: Holdout | pd.DataFrame,
    k: int = 10,
    chunk_users: int = 2048,
    *,
    item_features: np.ndarray | sp.spmatrix | None = None,
    rank: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Metrics:
    """Precision, recall, NDCG, MAP at ``k``, coverage, diversity and novelty on ``holdout``.

    ``holdout`` is coded against ``train`` (:class:`Holdout`), or a frame of canonical
    columns that is coded here. ``item_features`` (training items x features, e.g.
    ``SideFeatures.item``) is what diversity is measured on; without it, the model's
    ``item_embedding()``; with neither, diversity is NaN. The result carries per-user
    accuracy arrays (``per_user``) for paired comparisons.
    """
    start = time.perf_counter()
    if model.user_ids is None or not same_ids(model.user_ids, train.user_ids):
        raise ModelError("model and training interactions disagree on user ids")
    if isinstance(holdout, pd.DataFrame):
        holdout = Holdout.from_frame(holdout, train)
    u = holdout.user_rows.astype(np.int64)
    i = holdout.item_cols.astype(np.int64)
    # Holdout pairs the user already interacted with in training are repeats, not
    # discoveries; seen items are excluded from rankings, so drop them from the truth too.
    seen = train.exclusions()  # and pairs of negative events (typed feedback), which are never listed
    known = i < train.n_items
    if len(u):
        in_train = np.zeros(len(u), dtype=bool)
        in_train[known] = np.asarray(seen[u[known], i[known]]).ravel() != 0
        u, i, known = u[~in_train], i[~in_train], known[~in_train]
    users, n_relevant = np.unique(u, return_counts=True)
    if len(users) == 0:
        raise ValueError("holdout has no users with training data to evaluate")
    basis, vectors = "none", None
    if item_features is not None:
        if item_features.shape[0] != train.n_items:
            raise ValueError(f"item_features has {item_features.shape[0]} rows for {train.n_items} training items")
        basis, vectors = "features", item_features
    else:
        vectors = model.item_embedding()
        basis = "embedding" if vectors is not None else "none"
    unit, usable = unit_rows(vectors) if vectors is not None else (None, None)
    info = self_information(train)
    # Known relevant items sorted by user, so each chunk's truth is one slice.
    order = np.argsort(u[known], kind="stable")
    ku, ki = u[known][order], i[known][order]
    per_user = {m: np.empty(len(users), np.float64) for m in ACCURACY}
    diversity = np.full(len(users), np.nan)
    novelty = np.full(len(users), np.nan)
    recommended = np.zeros(train.n_items, dtype=bool)
    for lo in range(0, len(users), chunk_users):
        batch = users[lo : lo + chunk_users]
        part = slice(lo, lo + len(batch))
        # ``rank`` (recjobs.ranking.rerank): the lists as published, after business rules and
        # re-ranking, k columns best first; default: the model's own top-k.
        top, _ = rank(batch) if rank is not None else model.recommend(batch, k, exclude=seen)
        valid = top >= 0
        recommended[top[valid]] = True
        a, b = np.searchsorted(ku, [batch[0], batch[-1] + 1])
        pos = np.searchsorted(batch, ku[a:b])
        truth_mat = np.zeros((len(batch), train.n_items + 1), dtype=bool)
        truth_mat[pos, ki[a:b]] = True
        # Padding (-1) maps to the extra last column, which is never relevant.
        hits = np.take_along_axis(truth_mat, np.where(valid, top, train.n_items), axis=1)
        for name, values in ranking_metrics(hits, n_relevant[part], k).items():
            per_user[name][part] = values
        n_listed = valid.sum(axis=1)
        bits = np.where(valid, info[np.maximum(top, 0)], 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            novelty[part] = np.where(n_listed > 0, bits / n_listed, np.nan)
        if unit is not None:
            diversity[part] = list_diversity(top, unit, usable)
    n = len(users)
    return Metrics(
        k=k,
        precision=float(per_user["precision"].mean()),
        recall=float(per_user["recall"].mean()),
        ndcg=float(per_user["ndcg"].mean()),
        map=float(per_user["map"].mean()),
        coverage=float(recommended.sum()) / max(train.n_items, 1),
        users=n,
        seconds=time.perf_counter() - start,
        diversity=_nanmean(diversity),
        novelty=_nanmean(novelty),
        diversity_basis=basis,
        per_user=PerUser(users.astype(np.int64), per_user),
    )


__all__ = ["ACCURACY", "Metrics", "PerUser", "evaluate_model", "list_diversity", "ranking_metrics",
           "self_information", "unit_rows"]
