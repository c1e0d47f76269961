"""recjobs.ranking.ann: faster top-N for vector families, checked against exact scoring."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recjobs.models.popularity import PopularityModel
from recjobs.models.topk import top_k
from recjobs.models.vectors import Vectors
from recjobs.ranking.ann import (
    AnnIndex,
    ClusteredIndex,
    NormPrunedIndex,
    ann_recommend,
    augmented_items,
    with_ann,
)
from recjobs.settings import Settings

pytest.importorskip("faiss")

N_USERS, N_ITEMS, DIM, TOP = 600, 1500, 16, 20


@pytest.fixture(scope="module")
def case() -> tuple[Vectors, sp.csr_matrix]:
    """Clustered vectors with popularity-like item norms, a bias, and seen items (some users heavy)."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((12, DIM)).astype(np.float32)
    items = centres[rng.integers(0, 12, N_ITEMS)] + 0.4 * rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
    items *= rng.lognormal(0.0, 0.6, N_ITEMS).astype(np.float32)[:, None]
    users = centres[rng.integers(0, 12, N_USERS)] + 0.5 * rng.standard_normal((N_USERS, DIM)).astype(np.float32)
    bias = (0.3 * rng.standard_normal(N_ITEMS)).astype(np.float32)
    counts = rng.integers(0, 60, N_USERS)
    picks = [rng.choice(N_ITEMS, c, replace=False) for c in counts]
    # Heavy users have seen their 900 best-scored items (as a fitted model scores what users
    # saw highest): every candidate the index retrieves within max_depth is seen.
    for u in range(10):
        picks[u] = np.argsort(-(items @ users[u] + bias))[:900]
        counts[u] = 900
    rows = np.repeat(np.arange(N_USERS), counts)
    cols = np.concatenate(picks)
    seen = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))
    return Vectors(users, items, bias), seen


def _exact(vectors: Vectors, seen: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    query = np.hstack([vectors.user_vectors[rows], np.ones((len(rows), 1), np.float32)])
    return top_k(augmented_items(vectors), query, TOP, seen[rows])


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return sum(len(np.intersect1d(g[g >= 0], w[w >= 0])) for g, w in zip(got, want, strict=True)) / (want >= 0).sum()


@pytest.mark.parametrize("kind, knobs", [("ivf", {"lists": 32, "probe": 12}), ("hnsw", {"hnsw_m": 16, "ef_search": 64})])
def test_index_excludes_seen_and_recalls_exact(case: tuple[Vectors, sp.csr_matrix], kind: str,
                                               knobs: dict[str, int]) -> None:
    vectors, seen = case
    rows = np.arange(N_USERS)
    index = AnnIndex(augmented_items(vectors), kind, **knobs)  # type: ignore[arg-type]
    ids, scores = ann_recommend(vectors, index, rows, TOP, seen, depth=40, max_depth=200)
    want, _ = _exact(vectors, seen, rows)
    assert (ids >= 0).all(), "every list is full (the catalogue has enough unseen items)"
    assert not seen[np.repeat(rows, TOP), ids.ravel()].any(), "a seen item was recommended"
    assert _recall(ids, want) >= 0.95
    # Scores are the exact u.v + b of the returned items, best first.
    query = np.hstack([vectors.user_vectors, np.ones((N_USERS, 1), np.float32)])
    np.testing.assert_allclose(scores, np.einsum("ud,ukd->uk", query, augmented_items(vectors)[ids]), rtol=1e-4,
                               atol=1e-4)
    assert (np.diff(scores, axis=1) <= 0).all()
    # Users left without enough unseen candidates at max_depth are ranked exactly.
    np.testing.assert_array_equal(ids[:10], want[:10])
    # Rebuilding the index gives the same lists (seeded k-means, single-threaded graph).
    again = AnnIndex(augmented_items(vectors), kind, **knobs)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ann_recommend(vectors, again, rows, TOP, seen, depth=40, max_depth=200)[0], ids)


def test_pruned_is_exact(case: tuple[Vectors, sp.csr_matrix]) -> None:
    vectors, seen = case
    rows = np.arange(N_USERS)
    index = NormPrunedIndex(vectors, TOP, seen, sample_users=300)
    assert index.head < N_ITEMS, "the norm bound prunes part of the catalogue on these vectors"
    ids, scores = index.recommend(vectors, rows, TOP, seen, augmented_items(vectors))
    want, want_scores = _exact(vectors, seen, rows)
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_clustered_recalls_exact_and_lists_do_not_depend_on_batches(case: tuple[Vectors, sp.csr_matrix]) -> None:
    vectors, seen = case
    rows = np.arange(N_USERS)
    index = ClusteredIndex(vectors, TOP, seen, clusters=12, recall=0.95)
    assert index.candidates < N_ITEMS // 2, "users score a short candidate list, not the catalogue"
    ids, scores = index.recommend(vectors.user_vectors, rows, TOP, seen)
    want, _ = _exact(vectors, seen, rows)
    assert (ids >= 0).all(), "every list is full (the catalogue has enough unseen items)"
    assert not seen[np.repeat(rows, TOP), ids.ravel()].any(), "a seen item was recommended"
    # Calibrated on every user here (fewer than the sample size): the target holds overall.
    assert _recall(ids, want) >= 0.95
    # Heavy users (900 seen) are calibrated at their own activity level: their unseen
    # best items lie deeper, and their lists recall them as well as everyone's.
    assert _recall(ids[:10], want[:10]) >= 0.9
    query = np.hstack([vectors.user_vectors, np.ones((N_USERS, 1), np.float32)])
    np.testing.assert_allclose(scores, np.einsum("ud,ukd->uk", query, augmented_items(vectors)[ids]), rtol=1e-4,
                               atol=1e-4)
    assert (np.diff(scores, axis=1) <= 0).all()
    # A user's list depends on its cluster only: any batching (shards, chunks) gives the same.
    shuffled = np.random.default_rng(0).permutation(rows)
    for part in np.array_split(shuffled, 7):
        np.testing.assert_array_equal(index.recommend(vectors.user_vectors, part, TOP, seen)[0], ids[part])
    order = index.order(rows)
    assert sorted(order) == list(rows) and (np.diff(index.assign[order]) >= 0).all()
    # Deeper lists (re-ranking asks for more) take proportionally more candidates.
    deep, _ = index.recommend(vectors.user_vectors, rows, 3 * TOP, seen)
    assert _recall(deep[:, :TOP], want) >= _recall(ids, want)
    # Rebuilding gives the same clusters and lists (seeded k-means on one thread).
    again = ClusteredIndex(vectors, TOP, seen, clusters=12, recall=0.95)
    assert again.candidates == index.candidates
    np.testing.assert_array_equal(again.recommend(vectors.user_vectors, rows, TOP, seen)[0], ids)


def test_clustered_ranks_exactly_when_no_short_list_reaches_the_target(case: tuple[Vectors, sp.csr_matrix]) -> None:
    vectors, seen = case
    index = ClusteredIndex(vectors, TOP, seen, clusters=12, recall=1.0)
    if index.candidates < N_ITEMS:  # a perfect recall within half the catalogue is exact anyway
        assert index.recall == 1.0
    ids, _ = index.recommend(vectors.user_vectors, np.arange(N_USERS), TOP, seen)
    np.testing.assert_array_equal(ids, _exact(vectors, seen, np.arange(N_USERS))[0])


def test_ranker_wraps_vector_families_only(case: tuple[Vectors, sp.csr_matrix]) -> None:
    vectors, seen = case
    model = PopularityModel()
    model.user_ids = np.asarray([f"u{i}" for i in range(N_USERS)], dtype=object)
    model.item_ids = np.asarray([f"i{i}" for i in range(N_ITEMS)], dtype=object)
    model.vectors = vectors
    assert with_ann(model, "off") is model
    ranker = with_ann(model, "ivf", TOP, seen, depth=40, max_depth=200, lists=32, probe=32)
    ids, _ = ranker.recommend(np.arange(50), TOP, exclude=seen)
    want, _ = model.recommend(np.arange(50), TOP, exclude=seen)
    assert _recall(ids, want) >= 0.99  # every list probed: only the passes differ from exact
    assert ranker.user_ids is model.user_ids and ranker.info is model.info
    clustered = with_ann(model, "clustered", TOP, seen, lists=12)
    assert sorted(clustered.ranking_order(np.arange(N_USERS))) == list(range(N_USERS))
    ids, _ = clustered.recommend(np.arange(50), TOP, exclude=seen)
    assert _recall(ids, want) >= 0.9


def test_setting_is_validated() -> None:
    assert Settings.model_validate({"publish": {"ann": "hnsw"}}).publish.ann == "hnsw"
    assert Settings.model_validate({"publish": {"ann": "clustered", "ann_recall": 0.98}}).publish.ann_recall == 0.98
    with pytest.raises(ValueError, match="ann_recall"):
        Settings.model_validate({"publish": {"ann_recall": 1.5}})
    with pytest.raises(ValueError, match="ann"):
        Settings.model_validate({"publish": {"ann": "annoy"}})


@pytest.mark.slow
def test_clustered_scores_do_not_depend_on_batches_to_the_bit(case: tuple[Vectors, sp.csr_matrix]) -> None:
    # Shards and chunks split clusters differently; BLAS picks its kernel by the product's
    # shape (one row: a matrix-vector product), and kernels round differently. Published
    # scores (and the order of near-ties) must not change with the sharding.
    vectors, seen = case
    index = ClusteredIndex(vectors, TOP, seen, clusters=40, recall=0.95)
    rows = index.order(np.arange(N_USERS))
    ids, scores = index.recommend(vectors.user_vectors, rows, TOP, seen)
    for size in (1, 2, 3, 37):
        for lo in range(0, N_USERS, size):
            got_ids, got = index.recommend(vectors.user_vectors, rows[lo:lo + size], TOP, seen)
            np.testing.assert_array_equal(got_ids, ids[lo:lo + size])
            assert (got.view(np.int32) == scores[lo:lo + size].view(np.int32)).all(), f"batch {lo}+{size}"


def test_clustered_edge_cases() -> None:
    rng = np.random.default_rng(5)

    def vectors(users: int, items: int) -> Vectors:
        return Vectors(rng.standard_normal((users, 8)).astype(np.float32),
                       rng.standard_normal((items, 8)).astype(np.float32), rng.standard_normal(items).astype(np.float32))

    # No users (nothing to cluster): the index builds and ranks nobody.
    empty = ClusteredIndex(vectors(0, 30), 5)
    ids, scores = empty.recommend(np.zeros((0, 8), np.float32), np.arange(0), 5, None)
    assert ids.shape == (0, 5) and scores.shape == (0, 5)
    # Fewer users than clusters asked for, a catalogue smaller than n, no seen matrix: exact lists.
    for v, n in ((vectors(3, 40), 10), (vectors(50, 7), 10)):
        index = ClusteredIndex(v, n, clusters=12)
        query = np.hstack([v.user_vectors, np.ones((len(v.user_vectors), 1), np.float32)])
        want, _ = top_k(augmented_items(v), query, n)
        np.testing.assert_array_equal(index.recommend(v.user_vectors, np.arange(len(query)), n, None)[0], want)


@pytest.mark.slow
@pytest.mark.parametrize("core", ["Haswell", "Sandybridge"])
def test_scores_are_bit_identical_under_each_blas_kernel(core: str) -> None:
    # OpenBLAS picks its kernel by CPU (Haswell on AVX2 machines, which made these scores
    # differ by batch in float32); force each kernel for a child run of the batch tests.
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tests = ["tests/test_ann.py::test_clustered_scores_do_not_depend_on_batches_to_the_bit"]
    if core == "Haswell":  # the pipeline-level check once: it trains and publishes three times
        tests.append("tests/test_sharded_publish.py::"
                     "test_sharded_publish_through_the_clustered_index_gives_the_unsharded_rows")
    env = {**os.environ, "OPENBLAS_CORETYPE": core}
    # OPENBLAS_VERBOSE=2 prints the core OpenBLAS loads: the variable really forces it here.
    chosen = subprocess.run([sys.executable, "-c", "import numpy"], env={**env, "OPENBLAS_VERBOSE": "2"},
                            capture_output=True, text=True, timeout=120)
    assert f"Core: {core}" in chosen.stdout + chosen.stderr, chosen.stdout + chosen.stderr
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
