"""The sequence family: time-ordered histories and a next-item answer it must learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recjobs import columns as C
from recjobs.data import Interactions
from recjobs.models import get_family
from recjobs.models.sequence import Histories
from recjobs.settings import SequenceParams

BASE = pd.Timestamp("2025-01-01", tz="UTC")


def walks(n_users: int = 240, n_items: int = 40, steps: int = 8, seed: int = 0) -> tuple[Interactions, np.ndarray]:
    """Users walk a fixed cycle of items: the next item is determined by the previous one.

    The cycle visits items in a shuffled order, so item index carries no hint, and every
    item is equally popular. Returns the data and each user's true next item (index).
    """
    rng = np.random.default_rng(seed)
    successor = np.empty(n_items, np.int64)
    cycle = rng.permutation(n_items)
    successor[cycle] = np.roll(cycle, -1)
    rows, last = [], []
    for u in range(n_users):
        item = int(rng.integers(n_items))
        # Written in shuffled row order: only the timestamps give the sequence.
        walk = []
        for k in range(steps):
            walk.append((f"u{u:03d}", f"i{item:02d}", 4.0, BASE + pd.Timedelta(hours=k)))
            item = int(successor[item])
        rows += [walk[j] for j in rng.permutation(steps)]
        last.append(item)
    data = Interactions.from_frame(pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS)))
    truth = np.searchsorted(data.item_ids.astype(str), [f"i{i:02d}" for i in last])
    return data, truth


def test_histories_are_in_time_order_and_windows_stay_inside_each_user():
    rows = [("a", "i1", 4.0, BASE + pd.Timedelta(hours=2)), ("a", "i2", 4.0, BASE),
            ("a", "i3", 4.0, BASE + pd.Timedelta(hours=1)), ("b", "i4", 4.0, BASE)]
    data = Interactions.from_frame(pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS)))
    hist = Histories(data)
    names = data.item_ids[hist.items]
    assert list(names[:3]) == ["i2", "i3", "i1"] and list(names[3:]) == ["i4"]
    # Windows hold item index + 1, 0-padded on the left, and never reach into user a.
    assert hist.windows(np.array([3]), 2).tolist() == [[hist.items[1] + 1, hist.items[2] + 1]]  # a's latest two
    assert hist.windows(np.array([4]), 2, starts=np.array([3])).tolist() == [[0, hist.items[3] + 1]]
    assert hist.windows(np.array([2]), 4).tolist() == [[0, 0, hist.items[0] + 1, hist.items[1] + 1]]


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.integers(1, 40), st.integers(1, 30), st.floats(0.0, 1.0), st.integers(1, 25), st.booleans(),
       st.integers(0, 2**31))
def test_histories_built_in_blocks_of_users_equal_one_sort_of_the_whole_matrix(n_users, n_items, density, block,
                                                                               typed, seed):
    import recjobs.models.sequence as sequence
    from recjobs.data.interactions import ordered_by_user_time_item

    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density) * rng.integers(1, 5, (n_users, n_items))
    m = sp.csr_matrix(dense.astype(np.float32))
    seconds = rng.integers(0, 4, m.nnz).astype(np.int64)  # few distinct times: many ties, broken by item
    data = Interactions(np.asarray([f"u{u}" for u in range(n_users)], object),
                        np.asarray([f"i{i}" for i in range(n_items)], object), m, np.zeros(n_items, np.int64),
                        seconds, typed)
    saved = sequence._ORDER_BLOCK
    try:
        sequence._ORDER_BLOCK = block
        hist = Histories(data)
    finally:
        sequence._ORDER_BLOCK = saved
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(m.indptr))
    order = ordered_by_user_time_item(rows, seconds, m.indices.astype(np.int64))
    np.testing.assert_array_equal(hist.items, m.indices[order])
    if typed:
        np.testing.assert_array_equal(hist.weights, m.data[order])
    else:
        assert hist.weights is None


def test_a_matrix_without_pair_times_is_refused_with_a_clear_message():
    data, _ = walks(n_users=10)
    stripped = Interactions(data.user_ids, data.item_ids, data.matrix, data.item_last_seen, None)
    with pytest.raises(ValueError, match="per-pair times"):
        get_family("sequence")(SequenceParams()).fit(stripped)


def test_learns_which_item_comes_next():
    """Known answer: the top recommendation is the successor of the user's latest item."""
    data, truth = walks()
    params = SequenceParams(embedding_dim=16, batch_size=128, max_epochs=30, patience=5, validation_users=40)
    model = get_family("sequence")(params, seed=3).fit(data)
    top, _ = model.recommend(np.arange(data.n_users), 1, exclude=data.matrix)
    accuracy = float(np.mean(top[:, 0] == truth))
    # Popularity (all items equally popular) would be right 1 time in 40.
    assert accuracy > 0.9, (accuracy, model.info)
    assert model.info["encoder"] == "pool" and model.info["epochs_run"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["gru", "attention"])
def test_other_encoders_train_and_stop_at_the_budget(encoder):
    data, _ = walks(n_users=60)
    params = SequenceParams(encoder=encoder, embedding_dim=8, batch_size=64, max_epochs=50, max_seconds=0.5,
                            validation_users=20)
    model = get_family("sequence")(params, seed=1).fit(data)
    assert model.info["stopped_by_budget"] and model.info["epochs_run"] < 50
    assert model.vectors.user_vectors.shape == (data.n_users, 8) and np.isfinite(model.vectors.user_vectors).all()
