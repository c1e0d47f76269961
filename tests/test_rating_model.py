"""The rating model: neighbourhood similarities against an oracle, a taste no bias explains, no leak."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recjobs import columns as C
from recjobs.data.interactions import Holdout, Interactions
from recjobs.models.rating_model import (
    FEATURES,
    RatingModel,
    RatingParams,
    RatingStats,
    top_neighbours,
)
from recjobs.models.ratings import BiasBaseline, rmse_mae
from recjobs.models.stacking import label_cutoff

BASE = pd.Timestamp("2025-01-01", tz="UTC")
SMALL = RatingParams(trees=100, min_child_samples=20, similarity_users=10_000, pool_users=10_000)


def _oracle(x: np.ndarray, pool: np.ndarray, shrink: float) -> np.ndarray:
    """Dense similarity of every row to every pool row, written the slow obvious way."""
    out = np.zeros((len(x), len(pool)))
    for a in range(len(x)):
        for j, b in enumerate(pool):
            both = (x[a] != 0) & (x[b] != 0)
            if a == b or not both.any():
                continue
            den = np.sqrt((x[a, both] ** 2).sum() * (x[b, both] ** 2).sum())
            out[a, j] = (x[a] @ x[b]) / max(den, 1e-9) * (both.sum() / (both.sum() + shrink))
    return out


@settings(max_examples=40, derandomize=True, deadline=None)
@given(st.integers(1, 12), st.integers(1, 9), st.integers(1, 6), st.floats(0.0, 20.0), st.integers(0, 2**31))
def test_top_neighbours_are_the_oracles_most_similar(rows, cols, n, shrink, seed):
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((rows, cols)) < 0.5, rng.integers(-3, 4, (rows, cols)), 0).astype(np.float64)
    pool = np.sort(rng.choice(rows, rng.integers(1, rows + 1), replace=False))
    idx, sim = top_neighbours(sp.csr_matrix(dense), pool, n, shrink, block=5)
    want = _oracle(dense, pool, shrink)
    assert idx.shape == sim.shape == (rows, n)
    for a in range(rows):
        positive = np.sort(want[a][want[a] > 0])[::-1][:n]
        got = sim[a][idx[a] >= 0]
        # The same similarities (ties may pick different rows), each of a row that has it.
        np.testing.assert_allclose(np.sort(got)[::-1], positive[:len(got)], rtol=1e-4, atol=1e-6)
        assert len(got) == min(len(positive), n)
        for j, s in zip(idx[a][idx[a] >= 0], got, strict=True):
            assert s == pytest.approx(want[a][np.searchsorted(pool, j)], rel=1e-4, abs=1e-6)
            assert j != a


def _taste_data(seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two taste groups of users, two kinds of items, no side features: a rating is high where
    group and kind agree. Every user and item mean is about the same, so the bias baseline cannot
    tell; each user's last 3 ratings are held out."""
    rng = np.random.default_rng(seed)
    rows, later = [], []
    for u in range(240):
        items = rng.choice(60, 24, replace=False)
        for k, i in enumerate(items):
            rating = (4.5 if (i % 2 == 0) == (u % 2 == 0) else 1.5) + (0.5 if k % 3 == 0 else 0.0)
            (later if k >= 21 else rows).append((f"u{u:03d}", f"i{i:02d}", rating, BASE + pd.Timedelta(hours=k)))
    columns = list(C.INTERACTION_COLUMNS)
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(later, columns=columns)


def test_rating_model_learns_a_taste_no_bias_explains_and_reloads():
    frame, later = _taste_data()
    data = Interactions.from_frame(frame)
    info: dict = {}
    model = RatingModel.fit(data, "per_user", 1000, SMALL, seed=0, info=info)
    assert model is not None and info["rating_train_pairs"] > 1000
    holdout = Holdout.from_frame(later, data)
    truth = holdout.ratings
    base = rmse_mae(BiasBaseline.fit(data.matrix).predict(holdout.user_rows, holdout.item_cols), truth)[0]
    pred = model.predict(holdout.user_rows, holdout.item_cols)
    assert base > 1.2
    assert rmse_mae(pred, truth)[0] < 0.5 * base, (rmse_mae(pred, truth), base)
    assert pred.min() >= 1.5 and pred.max() <= 5.0
    # The neighbourhood residuals carry the taste: the most used feature is one of them.
    assert info["rating_top_features"][0].split()[0] in {"item_neighbour_residual", "user_neighbour_residual",
                                                          "mf_residual"}
    restored = RatingModel.restore(model.state("r__"), "r__")
    np.testing.assert_array_equal(restored.predict(holdout.user_rows, holdout.item_cols), pred)
    # Unknown users or items (rows the training data never had) get a prediction, not an error.
    odd = restored.predict(np.array([-1, 0, 10_000]), np.array([0, 10_000, -5]))
    assert np.isfinite(odd).all()


def test_a_folds_features_do_not_read_the_ratings_after_its_cutoff():
    frame, _ = _taste_data()
    data = Interactions.from_frame(frame)
    split = label_cutoff(data, "per_user", 0.2, 1000)
    rated = split.ratings.tocoo()
    before = RatingStats(split.inner, SMALL, 0).features(rated.row, rated.col)
    # Change every rating after the cutoff: the fold's features stay exactly the same.
    changed = frame.copy()
    labels = set(zip(data.user_ids[rated.row], data.item_ids[rated.col], strict=True))
    after = np.array([(u, i) in labels for u, i in zip(changed[C.USER], changed[C.ITEM], strict=True)])
    changed.loc[after, C.RATING] = 6.0 - changed.loc[after, C.RATING]
    other = label_cutoff(Interactions.from_frame(changed), "per_user", 0.2, 1000)
    assert (other.ratings.tocoo().data != rated.data).any()
    np.testing.assert_array_equal(RatingStats(other.inner, SMALL, 0).features(rated.row, rated.col), before)
    assert before.shape == (rated.nnz, len(FEATURES))


def test_bad_rating_folds_are_refused_with_one_line():
    from recjobs.settings import SettingsError, load_settings

    for folds in ([0.0], [1.5], []):
        with pytest.raises(SettingsError) as err:
            load_settings({"models": {"ranker": {"rating_folds": folds}}})
        # The settings error's header, then one line naming the setting and what is wrong.
        lines = str(err.value).strip().splitlines()
        assert len(lines) == 2 and "models.ranker.rating_folds" in lines[1], lines


def test_a_matrix_with_unsorted_columns_gives_the_same_features():
    frame, _ = _taste_data()
    data = Interactions.from_frame(frame)
    m = data.matrix
    # The same pairs with each row's columns reversed (pair times moved with them).
    order = np.concatenate([np.arange(m.indptr[u], m.indptr[u + 1])[::-1] for u in range(m.shape[0])])
    shuffled = sp.csr_matrix((m.data[order], m.indices[order], m.indptr), shape=m.shape)
    assert not shuffled.has_sorted_indices
    other = Interactions(data.user_ids, data.item_ids, shuffled, data.item_last_seen, data.pair_seconds[order])
    users, items = np.repeat(np.arange(40), 5), np.tile(np.arange(5), 40)
    np.testing.assert_allclose(RatingStats(other, SMALL, 0).features(users, items),
                               RatingStats(data, SMALL, 0).features(users, items), rtol=1e-5, atol=1e-6)
