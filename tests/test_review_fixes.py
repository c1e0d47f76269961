"""Regression checks from the review of the clustered ranking and the split's matrix build."""

from __future__ import annotations

import numpy as np
import pytest

from recjobs.data import Events, Interactions, interactions, ordered_by_user_time_item

USERS, ITEMS = np.array(["a", "b", "c"], dtype=object), np.array(["w", "x", "y", "z"], dtype=object)


def _latest_by_pair(users: np.ndarray, items: np.ndarray, millis: np.ndarray,
                    ratings: np.ndarray) -> dict[tuple[str, str], tuple[float, int]]:
    """Per (user, item) id: the rating of its latest row (the later row on equal times) and its seconds."""
    out: dict[tuple[str, str], tuple[float, int]] = {}
    for i in np.argsort(millis, kind="stable"):
        out[USERS[users[i]], ITEMS[items[i]]] = (float(ratings[i]), int(millis[i]) // 1000)
    return out


@pytest.mark.parametrize("block", [None, 3])
def test_matrix_keeps_each_pairs_latest_row_in_any_input_order(block: int | None, monkeypatch) -> None:  # noqa: ANN001
    if block is not None:
        # Rows grouped by user are deduplicated a block of whole users at a time: blocks of
        # a few rows make every input span several blocks.
        monkeypatch.setattr(interactions, "_PAIR_BLOCK", block)
    rng = np.random.default_rng(7)
    user_ids, item_ids = USERS, ITEMS
    for trial in range(300):
        n = int(rng.integers(0, 25))
        users, items = rng.integers(0, 3, n), rng.integers(0, 4, n)
        # Few distinct times (many equal), some apart by less than a second, some negative.
        millis = (rng.integers(-2, 3, n) * 1000 + rng.integers(0, 2, n) * 400).astype(np.int64)
        ratings = rng.integers(1, 6, n).astype(np.float32)
        data = Interactions.from_events(Events(user_ids, item_ids, users, items, ratings, millis))
        want = _latest_by_pair(users, items, millis, ratings)
        coo = data.matrix.tocoo()
        got = {(data.user_ids[r], data.item_ids[c]): (float(v), int(s))
               for r, c, v, s in zip(coo.row, coo.col, coo.data, data.pair_seconds, strict=True)}
        assert got == want, trial
        last = np.full(4, np.iinfo(np.int64).min)
        np.maximum.at(last, items, np.floor_divide(millis, 1000))
        np.testing.assert_array_equal(data.item_last_seen, last[np.searchsorted(ITEMS, data.item_ids)])
        # The split's (user, time, item) order with time_ordered=True: the same matrices.
        order = ordered_by_user_time_item(users, millis, items)
        split = Interactions.from_events(Events(user_ids, item_ids, users[order], items[order], ratings[order],
                                                millis[order]), time_ordered=True)
        assert (split.matrix != data.matrix).nnz == 0
        np.testing.assert_array_equal(split.matrix.indices, data.matrix.indices)
        np.testing.assert_array_equal(split.pair_seconds, data.pair_seconds)
        np.testing.assert_array_equal(split.item_last_seen, data.item_last_seen)
