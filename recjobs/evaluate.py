"""Ranking metrics on a holdout, the same code for every model family.

Each evaluated user is one with both training interactions and held-out ones.
Items seen in training are excluded from the ranking; every held-out item counts
as relevant (implicit feedback), including items the model has never seen, which
it therefore can only miss.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from recjobs.interactions import Holdout, Interactions
from recjobs.models.base import Recommender


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

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


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


def evaluate_model(
    model: Recommender,
    train: Interactions,
    holdout: Holdout | pd.DataFrame,
    k: int = 10,
    chunk_users: int = 2048,
) -> Metrics:
    """Precision, recall, NDCG, MAP at ``k`` and catalogue coverage on ``holdout``.

    ``holdout`` is coded against ``train`` (:class:`Holdout`), or a frame of canonical
    columns that is coded here.
    """
    start = time.perf_counter()
    if model.user_ids is None or not np.array_equal(model.user_ids, train.user_ids):
        raise ValueError("model and training interactions disagree on user ids")
    if isinstance(holdout, pd.DataFrame):
        holdout = Holdout.from_frame(holdout, train)
    u = holdout.user_rows.astype(np.int64)
    i = holdout.item_cols.astype(np.int64)
    # Holdout pairs the user already interacted with in training are repeats, not
    # discoveries; seen items are excluded from rankings, so drop them from the truth too.
    seen = train.matrix
    known = i < train.n_items
    if len(u):
        in_train = np.zeros(len(u), dtype=bool)
        in_train[known] = np.asarray(seen[u[known], i[known]]).ravel() != 0
        u, i, known = u[~in_train], i[~in_train], known[~in_train]
    users, n_relevant = np.unique(u, return_counts=True)
    if len(users) == 0:
        raise ValueError("holdout has no users with training data to evaluate")
    # Known relevant items sorted by user, so each chunk's truth is one slice.
    order = np.argsort(u[known], kind="stable")
    ku, ki = u[known][order], i[known][order]
    sums = {m: 0.0 for m in ("precision", "recall", "ndcg", "map")}
    recommended = np.zeros(train.n_items, dtype=bool)
    for lo in range(0, len(users), chunk_users):
        batch = users[lo : lo + chunk_users]
        top, _ = model.recommend(batch, k, exclude=seen)
        recommended[top[top >= 0]] = True
        a, b = np.searchsorted(ku, [batch[0], batch[-1] + 1])
        pos = np.searchsorted(batch, ku[a:b])
        truth_mat = np.zeros((len(batch), train.n_items + 1), dtype=bool)
        truth_mat[pos, ki[a:b]] = True
        # Padding (-1) maps to the extra last column, which is never relevant.
        hits = np.take_along_axis(truth_mat, np.where(top >= 0, top, train.n_items), axis=1)
        per_user = ranking_metrics(hits, n_relevant[lo : lo + chunk_users], k)
        for name, values in per_user.items():
            sums[name] += float(values.sum())
    n = len(users)
    return Metrics(
        k=k,
        precision=sums["precision"] / n,
        recall=sums["recall"] / n,
        ndcg=sums["ndcg"] / n,
        map=sums["map"] / n,
        coverage=float(recommended.sum()) / max(train.n_items, 1),
        users=n,
        seconds=time.perf_counter() - start,
    )
