"""One contract suite run over every model family, on small data whose answer is known."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recjobs import columns as C
from recjobs.data import Interactions, SideFeatures, align_features, temporal_split
from recjobs.evaluation import evaluate_model
from recjobs.models import Recommender, families, get_family
from recjobs.settings import Settings

FAST = {
    "popularity": {},
    "als": {"factors": 8, "iterations": 10},
    # One thread: LightFM's Hogwild is bit-reproducible only so (the default uses two).
    "lightfm": {"no_components": 8, "epochs": 10, "num_threads": 1},
    "tfrs": {"embedding_dim": 8, "max_epochs": 8, "batch_size": 128, "patience": 2},
    "ease": {"l2": 10.0},
    "itemknn": {"neighbours": 20},
    "userknn": {"neighbours": 10},
    "ranker": {"generators": {"ease": 20, "itemknn": 20, "popularity": 10}, "trees": 40, "min_child_samples": 5,
               "learning_rate": 0.1,
               "validation_fraction": 0.0},
    "sequence": {"embedding_dim": 16, "max_epochs": 20, "batch_size": 128, "patience": 5, "validation_users": 20},
}
# Families with a recency setting, and the one that switches it on.
RECENCY = {"ease": "recency_half_life", "itemknn": "recency_half_life", "als": "recency_half_life",
           "userknn": "recency_half_life"}


def make(family: str, **extra) -> Recommender:  # noqa: ANN003
    cls = get_family(family)
    params = Settings().model_params(family).model_copy(update={**FAST[family], **extra})
    return cls(params, seed=1)


@pytest.fixture(scope="module")
def blocks() -> tuple[Interactions, SideFeatures]:
    """Two taste groups: users 0-29 like items 0-19, users 30-59 like items 20-39.

    Each user has seen 12 of their group's 20 items; the right answer for every user
    is the rest of their own group, which a popularity list cannot give both groups.
    """
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        group = range(0, 20) if u < 30 else range(20, 40)
        for k, i in enumerate(rng.choice(list(group), 12, replace=False)):
            rows.append((f"u{u:02d}", f"i{i:02d}", 4.0, pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(hours=k)))
    # Make group A's items globally more popular so popularity favours them for everyone.
    for u in range(60, 90):
        for k, i in enumerate(rng.choice(range(20), 12, replace=False)):
            rows.append((f"u{u:02d}", f"i{i:02d}", 4.0, pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(hours=k)))
    frame = pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS))
    data = Interactions.from_frame(frame)
    feats = pd.DataFrame({C.ITEM: [f"i{i:02d}" for i in range(40)],
                          C.FEATURE: ["g=a" if i < 20 else "g=b" for i in range(40)], C.WEIGHT: 1.0})
    item, names = align_features(feats, C.ITEM, data.item_ids)
    return data, SideFeatures(None, item, np.asarray([], dtype=object), names)


def group_precision(model: Recommender, data: Interactions) -> float:
    top, _ = model.recommend(np.arange(60), 5, exclude=data.matrix)
    items = data.item_ids[top]
    own = [(int(i[1:]) < 20) == (u < 30) for u, row in enumerate(items) for i in row]
    return float(np.mean(own))


@pytest.fixture(scope="module", params=families())
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def fitted(family: str, blocks: tuple[Interactions, SideFeatures]) -> Iterator[Recommender]:
    """``family`` fitted once on ``blocks``, shared by the contract tests that only read it.

    Fitting (TFRS and sequence above all) is most of this module's time, and scoring,
    ranking, neighbours, embeddings and saving leave a fitted model as it was. Teardown
    checks that: a test that changed the shared model fails here, naming the family.
    """
    data, feats = blocks
    model = make(family).fit(data, feats)
    rows = np.arange(data.n_users)
    before = model.score(rows).copy()
    yield model
    np.testing.assert_array_equal(model.score(rows), before, err_msg=f"{family}: a test changed the shared model")


class TestModelContract:
    def test_seen_items_are_never_recommended(self, fitted, blocks):
        data, _ = blocks
        top, scores = fitted.recommend(np.arange(data.n_users), 10, exclude=data.matrix)
        seen = data.matrix.toarray() > 0
        for u in range(data.n_users):
            valid = top[u][top[u] >= 0]
            assert not seen[u, valid].any()
            assert np.all(np.diff(scores[u][top[u] >= 0]) <= 0)  # best first

    def test_pair_scores_are_the_score_blocks_values(self, fitted, blocks):
        data, _ = blocks
        rng = np.random.default_rng(1)
        users = rng.integers(0, data.n_users, 500)
        items = rng.integers(0, data.n_items, 500)
        block = fitted.score(np.arange(data.n_users))
        # Vectors score a pair as one dot product, blocks as a matrix product: float32 rounding apart.
        np.testing.assert_allclose(fitted.score_pairs(users, items), block[users, items], rtol=1e-5, atol=1e-6)

    def test_recommend_scorer_gives_the_lists_and_the_pair_scores(self, fitted, blocks, monkeypatch):
        # Blocks of 16 users: a kind that keeps its products per block must find each pair's block.
        monkeypatch.setattr("recjobs.models.neighbourhood.RANK_BLOCK", 16)
        data, _ = blocks
        rng = np.random.default_rng(2)
        rows = rng.permutation(data.n_users)[:50]
        ids, scores, scorer = fitted.recommend_scorer(rows, 7, exclude=data.matrix)
        want_ids, want_scores = fitted.recommend(rows, 7, exclude=data.matrix)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)
        at = rng.integers(0, len(rows), 400)
        items = rng.integers(0, data.n_items, 400)
        unseen = np.asarray(data.matrix[rows[at], items]).ravel() == 0
        at, items = at[unseen], items[unseen]
        # The same products as score_pairs, not recomputed: equal bit for bit.
        np.testing.assert_array_equal(scorer(at, items), fitted.score_pairs(rows[at], items))

    def test_save_and_load_give_identical_scores(self, fitted, blocks, tmp_path):
        data, _ = blocks
        path = fitted.save(tmp_path / "artifact", model_version="v1")
        loaded = Recommender.load(path)
        assert type(loaded) is type(fitted) and loaded.params == fitted.params
        rows = np.arange(data.n_users)
        np.testing.assert_array_equal(loaded.score(rows), fitted.score(rows))
        assert list(loaded.item_ids) == list(fitted.item_ids)

    def test_same_seed_same_model(self, family, fitted, blocks):
        # A second, independent fit with the same seed (after other fits in this process).
        data, feats = blocks
        again = make(family).fit(data, feats).score(np.arange(10))
        np.testing.assert_allclose(again, fitted.score(np.arange(10)), rtol=1e-5, atol=1e-6)

    def test_similar_items_exclude_the_item_and_stay_in_its_group(self, family, fitted, blocks):
        data, _ = blocks
        if not fitted.has_similar_items():
            assert family == "popularity"
            return
        top, scores = fitted.similar_items(np.arange(40), 5)
        assert top.shape == (40, 5)
        for i in range(40):
            valid = top[i][top[i] >= 0]
            assert i not in valid and len(valid) > 0
            assert np.all(np.diff(scores[i][top[i] >= 0]) <= 0)
            same = [(int(data.item_ids[j][1:]) < 20) == (int(data.item_ids[i][1:]) < 20) for j in valid]
            assert np.mean(same) >= 0.8, (family, i, data.item_ids[valid])

    def test_item_embedding_is_one_row_per_item_or_none(self, family, fitted, blocks):
        data, _ = blocks
        emb = fitted.item_embedding()
        if family == "popularity":
            assert emb is None
        else:
            assert emb.shape[0] == data.n_items and emb.ndim == 2 and np.isfinite(emb).all()

    def test_learns_the_known_structure(self, family, fitted, blocks):
        data, _ = blocks
        precision = group_precision(fitted, data)
        if family == "popularity":
            # One list for all: right for one group, wrong for the other.
            assert precision < 0.75
        else:
            assert precision > 0.9, f"{family} recommends outside the user's taste group"


@pytest.mark.slow
def test_personalised_families_beat_popularity_on_generated_data(small_data):
    train, holdout = temporal_split(small_data["ratings"], Settings().split)
    data = Interactions.from_frame(train)
    feats_long = small_data["item_features"].assign(**{C.WEIGHT: 1.0})
    item, names = align_features(feats_long, C.ITEM, data.item_ids)
    feats = SideFeatures(None, item, np.asarray([], dtype=object), names)
    scores = {f: evaluate_model(make(f).fit(data, feats), data, holdout).ndcg for f in families()}
    for family in ("als", "lightfm", "tfrs", "ease", "itemknn"):
        assert scores[family] > scores["popularity"], scores


@pytest.mark.parametrize("family", sorted(RECENCY))
def test_recency_weighting_ranks_recent_taste_above_old_taste(family, blocks):
    """A user who liked group A long ago and group B lately: recency puts B first."""
    data, _ = blocks
    base = pd.Timestamp("2025-01-01", tz="UTC")
    rows = [(f"u{u:02d}", data.item_ids[i], 4.0, base) for u in range(data.n_users)
            for i in data.matrix[u].indices]
    old = [f"i{i:02d}" for i in range(0, 8)]
    new = [f"i{i:02d}" for i in range(20, 24)]
    rows += [("switcher", item, 4.0, base + pd.Timedelta(days=k)) for k, item in enumerate(old + new)]
    frame = pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS))
    mixed = Interactions.from_frame(frame)
    user = np.flatnonzero(mixed.user_ids == "switcher")

    def share_of_new_taste(half_life: float | None) -> float:
        model = make(family, **{RECENCY[family]: half_life}).fit(mixed)
        top, _ = model.recommend(user, 6, exclude=mixed.matrix)
        return float(np.mean([int(mixed.item_ids[i][1:]) >= 20 for i in top[0] if i >= 0]))

    assert share_of_new_taste(None) < 0.5  # by count, the old taste dominates (8 vs 4 items)
    assert share_of_new_taste(1.0) > 0.5


@pytest.mark.slow
def test_tensorflow_gets_keras_2_without_the_user_setting_anything():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = ("import recjobs.models.tfrs as m\n"
            "tf = m.import_tensorflow()\n"
            "import tensorflow_recommenders\n"
            "print(tf.keras.__version__ if hasattr(tf.keras, '__version__') else tf.keras.__name__)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith(("2.", "tf_keras")), out.stdout


def test_ease_above_its_size_limit_models_the_most_popular_items_and_says_so(blocks, caplog):
    data, _ = blocks
    counts = np.bincount(data.matrix.indices, minlength=data.n_items)
    with caplog.at_level("WARNING", logger="recjobs.models.ease"):
        model = make("ease", max_items=25).fit(data)
    assert "exceed models.ease.max_items=25" in caplog.text
    kept = np.sort(np.lexsort((np.arange(data.n_items), -counts))[:25])
    top, _ = model.recommend(np.arange(data.n_users), 10, exclude=data.matrix)
    assert set(top[top >= 0].tolist()) <= set(kept.tolist())
    sims, _ = model.similar_items(np.arange(data.n_items), 3)
    assert set(sims[sims >= 0].tolist()) <= set(kept.tolist())
    dropped = np.setdiff1d(np.arange(data.n_items), kept)
    assert (sims[dropped] == -1).all()  # an item EASE does not model has no neighbours


def test_ease_transition_counts_equal_a_per_user_count_in_bands_of_any_size(monkeypatch):
    """The counts, converted a band of cells at a time, are bit for bit a plain per-user count's."""
    from recjobs.models.ease import transitions

    rng = np.random.default_rng(5)
    base = pd.Timestamp("2025-01-01", tz="UTC")
    rows = [(f"u{u}", f"i{int(rng.integers(0, 30))}", 4.0, base + pd.Timedelta(minutes=int(t)))
            for u in range(50) for t in rng.choice(10_000, int(rng.integers(1, 25)), replace=False)]
    data = Interactions.from_frame(pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS)))
    items = np.arange(0, data.n_items, 2)  # a modelled subset, as above max_items
    window, m = 4, len(items)
    position = {int(i): k for k, i in enumerate(items)}
    # Oracle: each user's items in (time, item) order, counted step by step in plain Python.
    frame = pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS))
    frame = frame.sort_values([C.USER, C.TIMESTAMP]).drop_duplicates([C.USER, C.ITEM], keep="last")
    item_index = {name: k for k, name in enumerate(data.item_ids)}
    frame["col"] = frame[C.ITEM].map(item_index)
    want = np.zeros((m, m), np.float32)
    for step in range(1, window + 1):
        found = np.zeros(m * m, np.int64)
        for _, user in frame.sort_values([C.USER, C.TIMESTAMP, "col"]).groupby(C.USER):
            seq = [position.get(int(c), -1) for c in user["col"]]
            for a, b in zip(seq[:-step], seq[step:], strict=True):
                if a >= 0 and b >= 0:
                    found[a * m + b] += 1
        want += (found / step).astype(np.float32).reshape(m, m)
    sums = want.sum(axis=1)
    sums[sums == 0] = 1.0
    want /= sums[:, None]
    for band in (7, 1 << 22):
        monkeypatch.setattr("recjobs.models.ease._CELLS_AT_ONCE", band)
        np.testing.assert_array_equal(transitions(data, window, items), want)


def test_ease_transitions_propose_the_usual_successor():
    """Every user watches a -> b -> c in order; co-occurrence alone cannot tell b from c after a."""
    base = pd.Timestamp("2025-01-01", tz="UTC")
    rows = []
    for u in range(40):
        chain = ["a", "b", "c"] if u < 20 else ["a", "c", "b"]
        chain = chain if u < 30 else ["a", "b", "c"]  # 30 users: a->b->c, 10: a->c->b
        rows += [(f"u{u}", item, 4.0, base + pd.Timedelta(hours=k)) for k, item in enumerate(chain)]
    rows += [("new", "a", 4.0, base)]
    data = Interactions.from_frame(pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS)))
    user = np.flatnonzero(data.user_ids == "new")
    plain = make("ease", transition_weight=0.0).fit(data).score(user)[0]
    seq = make("ease", transition_weight=1.0, transition_window=1).fit(data).score(user)[0]
    b, c = (int(np.flatnonzero(data.item_ids == x)[0]) for x in ("b", "c"))
    assert plain[b] == pytest.approx(plain[c])
    assert seq[b] > seq[c]


@pytest.mark.parametrize("family", ["itemknn", "ease"])
def test_neighbourhood_lists_hold_only_items_the_history_reaches(family):
    """A user whose items reach few others gets a short list, not arbitrary items at score 0."""
    base = pd.Timestamp("2025-01-01", tz="UTC")
    rows = [(f"u{u:02d}", f"p{i}", 4.0, base + pd.Timedelta(hours=i)) for u in range(30) for i in range(10)
            if (u + i) % 3]
    rows += [("zz", "r0", 4.0, base), ("zz", "r1", 4.0, base), ("yy", "r0", 4.0, base), ("yy", "r2", 4.0, base)]
    data = Interactions.from_frame(pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS)))
    # EASE capped at the ten p-items models none of zz's items; item-item has 2 neighbours per item.
    model = make(family, **({"neighbours": 2} if family == "itemknn" else {"max_items": 10})).fit(data)
    top, scores = model.recommend(np.flatnonzero(data.user_ids == "zz"), 5, exclude=data.matrix)
    listed = set(data.item_ids[top[0][top[0] >= 0]])
    assert listed <= {"r2"}, listed
    assert np.isneginf(scores[0][top[0] < 0]).all()


def test_userknn_neighbours_are_users_of_the_same_taste_never_the_user(blocks):
    """"People like you": users 0-29 and 30-59 are two taste groups; 60-89 share group A's taste."""
    data, _ = blocks
    model = make("userknn").fit(data)
    rows = np.arange(data.n_users)
    top, scores = model.similar_users(rows, 5)
    assert top.shape == (data.n_users, 5)
    for u in rows:
        valid = top[u][top[u] >= 0]
        assert u not in valid and len(valid) == 5
        assert np.all(np.diff(scores[u][top[u] >= 0]) <= 0)
        group_b = 30 <= u < 60
        assert all((30 <= v < 60) == group_b for v in valid), (u, valid)
    # Neighbours' unseen items are what a user is recommended: their own group's.
    assert group_precision(model, data) > 0.9


def test_popularity_lists_break_ties_by_the_lower_item_like_the_generic_top_k():
    """Counts tie often: the one list is ranked as top_k_of_scores ranks the score block."""
    from recjobs.models.topk import top_k_of_scores

    rng = np.random.default_rng(4)
    rows = [(f"u{u:02d}", f"i{i:02d}", 1.0, pd.Timestamp("2025-01-01", tz="UTC"))
            for u in range(40) for i in rng.choice(30, 6, replace=False)]
    data = Interactions.from_frame(pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS)))
    model = make("popularity").fit(data)
    users = np.arange(data.n_users)
    extra = sp.random(data.n_users, data.n_items, density=0.3, random_state=2, format="csr")
    for exclude in (None, data.matrix, (data.matrix + extra).tocsr()):
        for n in (1, 7, 40):
            got = model.recommend(users, n, exclude=exclude)
            want = top_k_of_scores(model.score(users), n, None if exclude is None else exclude[users])
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
