"""Metrics against hand-computed answers (accuracy, diversity, novelty); both split protocols' rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recjobs import columns as C
from recjobs.data import Events, Interactions, plan_split, split_events, temporal_split
from recjobs.evaluation import (
    evaluate_model,
    list_diversity,
    ranking_metrics,
    self_information,
    unit_rows,
)
from recjobs.models.vectors import VectorRecommender, Vectors
from recjobs.settings import PopularityParams, SplitSettings


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
    per_user = SplitSettings(protocol="per_user")
    train, hold = temporal_split(data, per_user)
    assert sorted(hold[hold[C.USER] == "u1"][C.ITEM]) == ["i8", "i9"]
    assert hold[hold[C.USER] == "u2"][C.ITEM].tolist() == ["i2"]  # at least one
    assert "u3" not in set(hold[C.USER])  # a single interaction stays in training
    assert len(train) + len(hold) == len(rows)
    train2, hold2 = temporal_split(data.sample(frac=1.0, random_state=9), per_user)
    pd.testing.assert_frame_equal(hold, hold2)
    pd.testing.assert_frame_equal(train, train2)
    last_train = train.groupby(C.USER)[C.TIMESTAMP].max()
    first_hold = hold.groupby(C.USER)[C.TIMESTAMP].min()
    assert (last_train[first_hold.index] <= first_hold).all()


class FixedVectors(VectorRecommender):
    """A test double of *input*: scores are the item bias; item vectors are given (for diversity)."""

    family = "popularity"
    params_type = PopularityParams

    def __init__(self, item_scores: np.ndarray, item_vectors: np.ndarray) -> None:
        super().__init__()
        self._scores, self._vectors = item_scores, item_vectors

    def _fit(self, data, features):  # noqa: ANN001, ANN202
        return Vectors(np.zeros((data.n_users, self._vectors.shape[1])), self._vectors, self._scores)


def genre_case():  # noqa: ANN201
    """Items h (everyone saw it), x1, x2 (genre A), y1 (genre B); scores x1 > x2 > y1 > h; k=2.

    Lists: a [x1, x2] (one genre), b [x2, y1], c [x1, y1], d [x1, x2] (one genre).
    """
    train = Interactions.from_frame(frame([("a", "h", 0), ("b", "h", 0), ("b", "x1", 1), ("c", "h", 0),
                                           ("c", "x2", 1), ("d", "h", 0), ("d", "y1", 1)]))
    assert list(train.item_ids) == ["h", "x1", "x2", "y1"]
    holdout = frame([("a", "x1", 5), ("b", "y1", 5), ("c", "x1", 5), ("d", "x2", 5)])
    scores = np.array([0.0, 3.0, 2.0, 1.0], np.float32)
    genres = sp.csr_matrix(np.array([[0.5, 0.5], [1, 0], [1, 0], [0, 1]], np.float32))  # columns: A, B
    return train, holdout, scores, genres


def test_diversity_and_novelty_on_a_hand_made_case():
    train, holdout, scores, genres = genre_case()
    model = Fixed(scores).fit(train)
    m = evaluate_model(model, train, holdout, k=2, item_features=genres)
    # Two one-genre lists (diversity 0) and two mixed ones (orthogonal genres: 1).
    assert m.diversity_basis == "features" and m.diversity == pytest.approx(0.5)
    # x1, x2, y1 were each seen by 1 of 4 training users: log2(4) = 2 bits each.
    assert m.novelty == pytest.approx(2.0)
    info = self_information(train)
    assert info[0] == 0.0  # h: every training user saw it, no information
    assert m.per_user is not None and list(m.per_user.users) == [0, 1, 2, 3]
    np.testing.assert_allclose(m.per_user.values["precision"], [0.5, 0.5, 0.5, 0.5])
    assert m.per_user.values["ndcg"].mean() == pytest.approx(m.ndcg)
    # Without features, the model's item vectors; with neither, not measurable.
    by_vectors = evaluate_model(FixedVectors(scores, genres.toarray()).fit(train), train, holdout, k=2)
    assert by_vectors.diversity_basis == "embedding" and by_vectors.diversity == pytest.approx(0.5)
    none = evaluate_model(model, train, holdout, k=2)
    assert none.diversity_basis == "none" and math.isnan(none.diversity)
    assert none.as_dict()["diversity"] is None and "per_user" not in none.as_dict()


def test_list_diversity_equals_the_mean_pairwise_cosine_distance():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 5))
    vectors[7] = 0.0  # no usable vector: left out of the pairs
    top = rng.permutation(30)[:24].reshape(4, 6)
    top[1, 4:] = -1  # padding
    top[2, :] = [7, 3, -1, -1, -1, -1]  # one usable item only: NaN
    unit, valid = unit_rows(vectors)
    got = list_diversity(top, unit, valid)
    for row, value in zip(top, got, strict=True):
        items = [i for i in row if i >= 0 and valid[i]]
        if len(items) < 2:
            assert math.isnan(value)
            continue
        u = vectors[items] / np.linalg.norm(vectors[items], axis=1, keepdims=True)
        sims = u @ u.T
        expected = 1 - (sims.sum() - len(items)) / (len(items) * (len(items) - 1))
        assert value == pytest.approx(expected)
    sparse_unit, sparse_valid = unit_rows(sp.csr_matrix(vectors))
    np.testing.assert_allclose(list_diversity(top, sparse_unit, sparse_valid), got)


def test_global_time_split_on_a_known_timeline():
    # u1 active on days 0..9, u2 on days 0-1, u3 only on days 8-9 (new after the cutoff).
    rows = ([("u1", f"i{t}", t) for t in range(10)] + [("u2", "i0", 0), ("u2", "i1", 1)]
            + [("u3", "i8", 8), ("u3", "i9", 9)])
    data = frame(rows).sample(frac=1.0, random_state=3)
    settings = SplitSettings(protocol="global_time")
    # 14 rows; the latest 20% start at sorted position floor(14 * 0.8) = 11: day 8.
    train, hold = temporal_split(data, settings)
    assert sorted(hold[C.ITEM]) == ["i8", "i9"] and set(hold[C.USER]) == {"u1"}  # u3 unseen before: dropped
    assert train[C.TIMESTAMP].max() < hold[C.TIMESTAMP].min()  # one cutoff for everyone
    assert len(train) == 10 and "u3" not in set(train[C.USER])  # nothing at/after the cutoff trains
    train2, hold2 = temporal_split(data.sample(frac=1.0, random_state=8), settings)
    pd.testing.assert_frame_equal(train, train2)
    pd.testing.assert_frame_equal(hold, hold2)
    # holdout_days: the cutoff is that long before the run's end (day 10), here day 8.5.
    events = Events.from_frame(data)
    end = int((pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(days=10)).value // 1_000_000)
    by_days = SplitSettings(protocol="global_time", holdout_days=1.5)
    plan = plan_split(events, by_days, end)
    assert plan.cutoff_millis == end - int(1.5 * 86_400_000)
    tr, ho = split_events(events, by_days, end)
    # Day 9 of u1 and of u3, who is now seen before the cutoff (day 8).
    assert sorted(zip(events.user_ids[ho.users], events.item_ids[ho.items], strict=True)) == [
        ("u1", "i9"), ("u3", "i9")]
    assert len(tr) == 12
    with pytest.raises(ValueError, match="no interaction before the cutoff"):
        plan_split(events, SplitSettings(protocol="global_time", holdout_days=30.0), end)
