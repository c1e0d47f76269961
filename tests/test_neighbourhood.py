"""The neighbourhood families' fast ranking path gives exactly the lists of the generic one.

``NeighbourhoodRecommender.recommend`` ranks blocks of users over what can be listed
only (modelled items, stored entries of a sparse product) on threads; the generic path
(``Recommender.recommend``: ``score`` widened to all items, then ``top_k_of_scores``)
is the reference, and so is the documented rule written out as a full sort: the ``n``
best by (score descending, item index ascending), -inf and excluded items never listed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recjobs import columns as C
from recjobs.data import Interactions
from recjobs.errors import ModelError
from recjobs.models import Recommender, get_family
from recjobs.models import neighbourhood as nbmod
from recjobs.models.ease import EASEModel
from recjobs.models.itemknn import ItemKNNModel
from recjobs.models.neighbourhood import Neighbourhood
from recjobs.models.topk import top_k_of_rows, top_k_of_scores
from recjobs.settings import Settings


def rule_lists(block: np.ndarray, n: int, exclude: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
    """The documented ranking, one row at a time by a full sort (slow, obviously right)."""
    block = np.array(block, dtype=np.float32, copy=True)
    if exclude is not None:
        coo = exclude.tocoo()
        block[coo.row, coo.col] = -np.inf
    ids = np.full((len(block), n), -1, np.int64)
    scores = np.full((len(block), n), -np.inf, np.float32)
    for r, row in enumerate(block):
        listed = np.flatnonzero(row > -np.inf)
        best = listed[np.lexsort((listed, -row[listed]))][:n]
        ids[r, :len(best)], scores[r, :len(best)] = best, row[best]
    return ids, scores


def log(n_users: int = 700, n_items: int = 150, seed: int = 3) -> tuple[Interactions, sp.csr_matrix]:
    """A skewed log: Zipf-like items, a few heavy users, users of rare items only, one user with nothing.

    Returns the matrix and an exclusion matrix: the seen items, plus extra per-user
    exclusions as business rules add them (some stored as explicit zeros, some repeated).
    """
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    base = pd.Timestamp("2025-01-01", tz="UTC")
    rows = []
    for u in range(n_users):
        count = 300 if u % 97 == 0 else int(rng.integers(2, 40))  # heavy users above history_limit
        if u % 50 == 7:  # rare items only: outside EASE's modelled set below
            items = rng.choice(np.arange(n_items - 30, n_items), min(count, 10), replace=False)
        else:
            items = rng.choice(n_items, min(count, n_items), replace=False, p=popularity / popularity.sum())
        for k, i in enumerate(items):
            rows.append((f"u{u:04d}", f"i{i:04d}", 4.0, base + pd.Timedelta(minutes=int(rng.integers(0, 10**6)) + k)))
    frame = pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS))
    user_ids = np.asarray(sorted({*frame[C.USER], "u_nothing"}), dtype=object)
    data = Interactions.from_frame(frame, user_ids=user_ids)
    extra_rows = rng.integers(0, data.n_users, 2000)
    extra_cols = rng.integers(0, data.n_items, 2000)
    extra = sp.csr_matrix((np.where(np.arange(2000) % 3 == 0, 0.0, 1.0).astype(np.float32),
                           (extra_rows, extra_cols)), shape=data.matrix.shape)
    # Seen and extra entries side by side per row, not summed: duplicates and explicit
    # zeros stay stored, as a rule's exclusion matrix may hold them.
    coo_rows = np.concatenate([np.repeat(np.arange(data.n_users), np.diff(m.indptr)) for m in (data.matrix, extra)])
    coo_cols = np.concatenate([data.matrix.indices, extra.indices])
    coo_vals = np.concatenate([data.matrix.data, extra.data])
    order = np.argsort(coo_rows, kind="stable")
    folded = sp.csr_matrix((coo_vals[order], coo_cols[order],
                            np.concatenate([[0], np.cumsum(np.bincount(coo_rows, minlength=data.n_users))])),
                           shape=data.matrix.shape)
    assert not folded.has_canonical_format  # duplicates and explicit zeros stay stored
    return data, folded


@pytest.fixture(scope="module")
def skewed() -> tuple[Interactions, sp.csr_matrix]:
    return log()


def fit(family: str, data: Interactions, **params: object) -> Recommender:
    cls = get_family(family)
    return cls(Settings().model_params(family).model_copy(update=params), seed=1).fit(data)


# EASE modelling 100 of 150 items (the rare ones not: users of rare items only have an
# empty history), item-item with few neighbours (many items unreachable: -inf), both
# with a history limit below the heavy users' counts.
FAMILIES = {"ease": {"l2": 5.0, "max_items": 100, "history_limit": 120},
            "itemknn": {"neighbours": 8, "history_limit": 120}}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def fitted(request: pytest.FixtureRequest, skewed: tuple[Interactions, sp.csr_matrix]) -> Recommender:
    return fit(request.param, skewed[0], **FAMILIES[request.param])


@pytest.mark.parametrize("n", [0, 1, 7, 50, 400])
def test_fast_lists_equal_the_generic_path_for_every_user(fitted, skewed, n):
    data, exclude = skewed
    # Shuffled, with repeats, more users than one block: several blocks on threads.
    rows = np.concatenate([np.random.default_rng(n).permutation(data.n_users), [0, 0, 5]])
    ids, scores = fitted.recommend(rows, n, exclude=exclude)
    want_ids, want_scores = Recommender.recommend(fitted, rows, n, exclude=exclude)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    rule_ids, rule_scores = rule_lists(fitted.score(rows), n, exclude[rows])
    np.testing.assert_array_equal(ids, rule_ids)
    np.testing.assert_array_equal(scores, rule_scores)
    # The cases the data was made for do occur.
    nothing = rows == np.flatnonzero(data.user_ids == "u_nothing")[0]
    assert (ids[nothing] == -1).all()
    assert n == 0 or ((ids < 0).any() and (ids >= 0).any())


def test_fast_lists_equal_the_generic_path_without_exclusion_and_in_small_blocks(fitted, skewed, monkeypatch):
    data, _ = skewed
    monkeypatch.setattr(nbmod, "RANK_BLOCK", 5)
    rows = np.arange(data.n_users)
    for n in (3, 30):
        got = fitted.recommend(rows, n)
        want = Recommender.recommend(fitted, rows, n)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert fitted.recommend(np.zeros(0, np.int64), 4)[0].shape == (0, 4)


def handmade(family: str, similarity: np.ndarray, history: np.ndarray) -> Recommender:
    """A fitted model of ``family`` whose matrices are given: small integers give exact ties."""
    model = (EASEModel if family == "ease" else ItemKNNModel)()
    sim = similarity.astype(np.float32)
    model.neighbourhood = Neighbourhood(sim if family == "ease" else sp.csr_matrix(sim),
                                        sp.csr_matrix(history.astype(np.float32)))
    model.n_items = similarity.shape[0]
    model.user_ids = np.asarray([f"u{i}" for i in range(history.shape[0])], dtype=object)
    model.item_ids = np.asarray([f"i{i}" for i in range(similarity.shape[0])], dtype=object)
    return model


@pytest.mark.parametrize("family", ["ease", "itemknn"])
def test_ties_are_broken_by_the_lower_item_index_even_at_the_last_place(family):
    rng = np.random.default_rng(0)
    n_users, n_items = 300, 60
    # Scores are sums of small integers: exact, with many ties at every place of the list.
    sim = rng.integers(-2, 3, (n_items, n_items)) * (rng.random((n_items, n_items)) < 0.3)
    history = (rng.random((n_users, n_items)) < 0.1) * rng.integers(1, 3, (n_users, n_items))
    history[:5] = 0  # users with no history
    model = handmade(family, sim, history)
    exclude = sp.csr_matrix((rng.random((n_users, n_items)) < 0.2).astype(np.float32))
    rows = np.arange(n_users)
    for n in (1, 4, 10, 70):
        ids, scores = model.recommend(rows, n, exclude=exclude)
        want_ids, want_scores = rule_lists(model.score(rows), n, exclude)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.parametrize("family", ["ease", "itemknn"])
def test_rows_with_nan_or_infinite_scores_are_ranked_as_the_generic_path_ranks_them(family):
    sim = np.arange(1, 26, dtype=np.float32).reshape(5, 5)
    sim[1, 3] = np.inf
    sim[2, 0] = np.nan
    history = np.zeros((4, 5), np.float32)
    history[0, 0] = history[1, 1] = history[2, 2] = history[3, [0, 4]] = 1.0
    model = handmade(family, sim, history)
    rows = np.arange(4)
    for exclude in (None, sp.csr_matrix(np.eye(4, 5, dtype=np.float32))):
        ids, scores = model.recommend(rows, 3, exclude=exclude)
        want_ids, want_scores = Recommender.recommend(model, rows, 3, exclude=exclude)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)
    # +inf and NaN are no score: never listed, and the list has no hole where they were.
    assert 3 not in ids[1] and (ids[1] >= 0).all() and ids[0, 0] == 4


def test_a_subclass_that_scores_its_own_way_is_ranked_by_its_scores(skewed):
    data, exclude = skewed

    class Boosted(EASEModel):
        def score(self, user_rows: np.ndarray) -> np.ndarray:
            block = super().score(user_rows)
            block[:, 3] = 1e6
            return block

    model = Boosted(EASEModel.params_type(l2=5.0, max_items=100)).fit(data)
    ids, _ = model.recommend(np.arange(20), 5)
    assert (ids[:, 0] == 3).all()


def test_top_k_of_rows_matches_the_rule_on_packed_sparse_rows():
    rng = np.random.default_rng(5)
    values = rng.integers(0, 4, (200, 30)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = -np.inf
    columns = np.stack([rng.permutation(1000)[:30] for _ in range(200)])
    for n in (1, 5, 30, 40):
        ids, scores = top_k_of_rows(values, n, columns)
        dense = np.full((200, 1000), -np.inf, np.float32)
        np.put_along_axis(dense, columns, values, axis=1)
        want_ids, want_scores = rule_lists(dense, n, None)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)
    # Without ties at the last place, it is top_k_of_scores exactly.
    distinct = rng.permutation(200 * 30).reshape(200, 30).astype(np.float32)
    np.testing.assert_array_equal(top_k_of_rows(distinct, 7)[0], top_k_of_scores(distinct, 7)[0])


def test_an_exclusion_matrix_wider_than_the_catalogue_is_a_one_line_error(fitted, skewed):
    data, _ = skewed
    wide = sp.csr_matrix((data.n_users, data.n_items + 1), dtype=np.float32)
    with pytest.raises(ModelError, match="exclusion matrix of"):
        fitted.recommend(np.arange(3), 5, exclude=wide)


@pytest.mark.parametrize("family", ["ease", "itemknn"])
def test_histories_not_in_item_order_are_summed_in_their_own_order(family):
    """Float sums depend on their order: a history row in any order gets the generic path's bits."""
    rng = np.random.default_rng(9)
    n_users, n_items = 200, 80
    sim = rng.standard_normal((n_items, n_items)) * (rng.random((n_items, n_items)) < 0.5)
    dense = (rng.random((n_users, n_items)) < 0.3) * rng.random((n_users, n_items))
    model = handmade(family, sim, dense)
    h = model.neighbourhood.history
    # Each row's entries reversed: the same matrix, stored against item order.
    flipped = np.concatenate([np.arange(h.indptr[u + 1] - 1, h.indptr[u] - 1, -1) for u in range(n_users)])
    history = sp.csr_matrix((h.data[flipped], h.indices[flipped], h.indptr), shape=h.shape)
    assert not history.has_sorted_indices
    model.neighbourhood = Neighbourhood(model.neighbourhood.similarity, history)
    rows = np.arange(n_users)
    ids, scores = model.recommend(rows, 20)
    want_ids, want_scores = Recommender.recommend(model, rows, 20)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    assert not np.array_equal(model.score(rows), handmade(family, sim, dense).score(rows))  # order matters here
