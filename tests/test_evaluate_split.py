"""Metrics against hand-computed answers; the temporal split's rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recjobs import columns as C
from recjobs.evaluate import evaluate_model, ranking_metrics
from recjobs.interactions import Interactions
from recjobs.models.base import VectorRecommender, Vectors
from recjobs.settings import PopularityParams, SplitSettings
from recjobs.split import temporal_split


def test_ranking_metrics_known_values():
    hits = np.array([[True, False, True], [False, False, False], [True, True, True]])
    n_rel = np.array([2, 1, 5])
    m = ranking_metrics(hits, n_rel, k=3)
    np.testing.assert_allclose(m["precision"], [2 / 3, 0, 1])
    np.testing.assert_allclose(m["recall"], [1.0, 0.0, 3 / 5])
    dcg0 = 1 + 1 / math.log2(4)
    idcg0 = 1 + 1 / math.log2(3)
    np.testing.assert_allclose(m["ndcg"], [dcg0 / idcg0, 0, 1])
    np.testing.assert_allclose(m["map"], [(1 + 2 / 3) / 2, 0, 1])


class Fixed(VectorRecommender):
    """A test double of *input*, not of our code: a model whose scores we dictate."""

    family = "popularity"
    params_type = PopularityParams

    def __init__(self, item_scores: np.ndarray) -> None:
        super().__init__()
        self._scores = item_scores

    def _fit(self, data, features):  # noqa: ANN001, ANN202
        return Vectors(np.zeros((data.n_users, 1)), np.zeros((data.n_items, 1)), self._scores)


def frame(rows):  # noqa: ANN001, ANN201
    return pd.DataFrame(
        [(u, i, 4.0, pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(days=t)) for u, i, t in rows],
        columns=list(C.INTERACTION_COLUMNS),
    )


def test_evaluate_excludes_seen_and_counts_unknown_items_as_misses():
    train = Interactions.from_frame(frame([("a", "x", 0), ("a", "y", 1), ("b", "y", 0), ("b", "z", 1)]))
    # Scores: x > y > z. User a has seen x,y so gets [z]; user b has seen y,z so gets [x].
    model = Fixed(np.array([3.0, 2.0, 1.0], np.float32)).fit(train)
    holdout = frame([("a", "z", 2), ("b", "q", 2)])  # q never seen in training: a sure miss
    m = evaluate_model(model, train, holdout, k=1)
    assert m.users == 2
    assert m.precision == pytest.approx(0.5) and m.ndcg == pytest.approx(0.5)
    assert m.coverage == pytest.approx(2 / 3)


def test_each_unseen_holdout_item_counts_as_its_own_relevant_item():
    # Regression (issue 8 item 12): unseen items used to collapse into one relevant item,
    # so 3 unseen + 1 hit gave recall 1/2 instead of 1/4.
    train = Interactions.from_frame(frame([("a", "x", 0), ("b", "y", 0), ("b", "z", 1)]))
    model = Fixed(np.array([3.0, 2.0, 1.0], np.float32)).fit(train)  # a gets y first
    holdout = frame([("a", "y", 2), ("a", "p", 3), ("a", "q", 4), ("a", "r", 5), ("a", "r", 6)])
    m = evaluate_model(model, train, holdout, k=1)
    assert m.users == 1
    assert m.recall == pytest.approx(1 / 4)  # r held out twice is still one item
    assert m.precision == pytest.approx(1.0) and m.ndcg == pytest.approx(1.0)
    m2 = evaluate_model(model, train, holdout, k=2)
    # Hits [y, -]: AP = 1 / min(4, 2); NDCG = 1 / (1 + 1/log2(3)).
    assert m2.map == pytest.approx(0.5)
    assert m2.ndcg == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_temporal_split_holds_out_latest_fifth_per_user_deterministically():
    rows = [("u1", f"i{t}", t) for t in range(10)] + [("u2", f"i{t}", t) for t in range(3)] + [("u3", "i0", 0)]
    data = frame(rows).sample(frac=1.0, random_state=5)
    train, hold = temporal_split(data, SplitSettings())
    assert sorted(hold[hold[C.USER] == "u1"][C.ITEM]) == ["i8", "i9"]
    assert hold[hold[C.USER] == "u2"][C.ITEM].tolist() == ["i2"]  # at least one
    assert "u3" not in set(hold[C.USER])  # a single interaction stays in training
    assert len(train) + len(hold) == len(rows)
    train2, hold2 = temporal_split(data.sample(frac=1.0, random_state=9), SplitSettings())
    pd.testing.assert_frame_equal(hold, hold2)
    pd.testing.assert_frame_equal(train, train2)
    last_train = train.groupby(C.USER)[C.TIMESTAMP].max()
    first_hold = hold.groupby(C.USER)[C.TIMESTAMP].min()
    assert (last_train[first_hold.index] <= first_hold).all()
