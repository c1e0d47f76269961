"""Faster top-N for vector families: a faiss index, or exact scoring pruned by vector norms.

A vector family scores ``u . v_i + b_i``: a maximum-inner-product search. Three ways
to rank with less work than scoring every item (``publish.ann``):

* ``ivf``, ``hnsw``: a faiss index (IndexIVFFlat / IndexHNSWFlat, inner product) over the
  items as ``[v_i, b_i]`` (the bias as one more factor against a constant 1 in the
  query, as :meth:`VectorRecommender.recommend` does). Approximate. The MIPS-to-L2
  transform (an extra coordinate ``sqrt(R^2 - |x|^2)``) was measured too: on ALS vectors
  it put the query at almost the same distance from every k-means list, and recall fell
  to 0.15, so the index uses inner product directly.
  Seen items are excluded by retrieving deeper and filtering, in passes: first
  ``min(n + seen, ann_depth)`` candidates, then for users left with fewer than ``n``
  unseen items ``n + seen`` (at most ``ann_max_depth``); users still short (very heavy
  users, or too few items in the probed lists) are ranked exactly, so every list is as
  full as exact scoring's. The scores returned are the exact ``u . v + b`` of the
  returned items, re-sorted, so only which items make the list is approximate.
* ``pruned`` (:class:`NormPrunedIndex`): exact. Most users are scored against the items
  with the longest vectors only, and a Cauchy-Schwarz bound proves that no other item
  could enter their list; the others are scored against every item.

Only :class:`~recjobs.models.base.VectorRecommender` families can use them; neighbourhood
families (EASE, item-item) are not dot products and keep exact scoring.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions
from recjobs.models.base import Recommender
from recjobs.models.topk import top_k, top_k_of_scores
from recjobs.models.vectors import VectorRecommender, Vectors
from recjobs.settings import PublishSettings

log = logging.getLogger(__name__)

AnnKind = Literal["ivf", "hnsw"]


class AnnIndex:
    """A faiss index over augmented item vectors ``[v, b]`` for maximum inner product search.

    ``kind`` "ivf": IndexIVFFlat with ``lists`` k-means lists (None: about 1.5 sqrt(items)),
    ``probe`` of them searched per query; k-means is seeded, so a rebuild gives the same
    index. "hnsw": IndexHNSWFlat with ``hnsw_m`` links per node, built single-threaded
    so the graph (and so every result) is the same on every rerun, searched with
    ``ef_search`` (raised to the retrieval depth where that is larger).
    """

    def __init__(self, items: np.ndarray, kind: AnnKind = "ivf", lists: int | None = None, probe: int = 32,
                 hnsw_m: int = 32, ef_search: int = 128, threads: int = 2, seed: int = 1) -> None:
        import faiss

        started = time.perf_counter()
        items = np.ascontiguousarray(items, dtype=np.float32)
        n_items, dim = items.shape
        self.kind, self.n_items, self.threads = kind, n_items, threads
        self.ef_search = ef_search
        if kind == "ivf":
            n_lists = max(1, min(lists or round(1.5 * np.sqrt(n_items)), n_items))
            quantizer = faiss.IndexFlat(dim, faiss.METRIC_INNER_PRODUCT)
            index = faiss.IndexIVFFlat(quantizer, dim, n_lists, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.cp.min_points_per_centroid = 1  # small catalogues: no warning, no subsampling
            index.nprobe = max(1, min(probe, n_lists))
            with _threads(threads):
                index.train(items)
                index.add(items)
            self.lists, self.probe = n_lists, index.nprobe
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(2 * hnsw_m, 80)
            # Parallel insertion makes the graph depend on thread timing; one thread keeps reruns identical.
            with _threads(1):
                index.add(items)
            self.lists, self.probe = 0, 0
        else:
            raise ValueError(f"publish.ann: unknown index kind {kind!r} (ivf or hnsw)")
        self.index = index
        self.dim = dim
        self.build_seconds = time.perf_counter() - started
        log.info("built %s index over %d items (%d dims) in %.1fs", kind, n_items, dim, self.build_seconds)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Item indices of the (approximately) ``k`` largest inner products per query, -1 padded."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.n_items)
        with _threads(self.threads):
            if self.kind == "hnsw":
                import faiss

                params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
                _, ids = self.index.search(queries, k, params=params)
            else:
                _, ids = self.index.search(queries, k)
        return ids.astype(np.int64, copy=False)


class _threads:
    """faiss's OpenMP thread count for a block (its global setting otherwise uses every core)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        import faiss

        self.before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import faiss

        faiss.omp_set_num_threads(self.before)


def augmented_items(vectors: Vectors) -> np.ndarray:
    """Items as ``[v, b]``: a query ``[u, 1]`` then scores ``u . v + b``."""
    return np.ascontiguousarray(np.hstack([vectors.item_vectors, vectors.item_bias[:, None]]), dtype=np.float32)


def build_index(model: VectorRecommender, kind: AnnKind = "ivf", **knobs: Any) -> AnnIndex:
    """An :class:`AnnIndex` over a fitted vector model's items (``knobs``: AnnIndex's)."""
    return AnnIndex(augmented_items(model._vec()), kind, **knobs)


def _unseen_first(cand: np.ndarray, seen: sp.csr_matrix, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` candidates per row that are not in ``seen`` (-1 padded) and how many there were."""
    n_rows, n_items = seen.shape
    if seen.nnz:
        # Sorted (row, item) keys of the seen pairs; a candidate is seen if its key is among them.
        keys = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(seen.indptr)) * n_items + seen.indices
        keys.sort()
        probe = np.arange(n_rows, dtype=np.int64)[:, None] * n_items + cand
        pos = np.minimum(np.searchsorted(keys, probe), len(keys) - 1)
        bad = (keys[pos] == probe) | (cand < 0)
    else:
        bad = cand < 0
    order = np.argsort(bad, axis=1, kind="stable")[:, :n]
    out = np.take_along_axis(cand, order, axis=1)
    out[np.take_along_axis(bad, order, axis=1)] = -1
    if out.shape[1] < n:
        out = np.pad(out, ((0, 0), (0, n - out.shape[1])), constant_values=-1)
    return out, (~bad).sum(axis=1)


def ann_recommend(
    vectors: Vectors, index: AnnIndex, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None,
    depth: int = 128, max_depth: int = 512, items: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``n`` (indices, exact scores) of ``user_rows``, items in ``exclude`` left out.

    The same contract as :meth:`Recommender.recommend`: best first, -1 / -inf padding
    only where the catalogue runs out. See the module docstring for the passes;
    ``items`` is :func:`augmented_items` of ``vectors`` (computed if not given).
    """
    user_rows = np.asarray(user_rows, dtype=np.int64)
    if items is None:
        items = augmented_items(vectors)
    n_rows, n_items = len(user_rows), items.shape[0]
    query = np.hstack([vectors.user_vectors[user_rows], np.ones((n_rows, 1), np.float32)])
    seen = (exclude[user_rows].tocsr() if exclude is not None
            else sp.csr_matrix((n_rows, n_items), dtype=np.float32))
    seen.sort_indices()
    n_seen = np.diff(seen.indptr)
    want = np.minimum(n, n_items - n_seen)  # what exact scoring would return
    top = np.full((n_rows, n), -1, np.int64)
    done = np.zeros(n_rows, bool)
    # Pass 1 goes a little past n for everyone (most users' seen items crowd only the first
    # few dozen places); pass 2 as deep as each remaining user could need, within max_depth.
    for limit in sorted({max(depth, n), max(max_depth, n)}):
        todo = np.flatnonzero(~done)
        if not len(todo):
            break
        k_user = np.minimum(n + n_seen[todo], limit)
        k_user = np.minimum(-(-k_user // 32) * 32, limit)  # a few distinct depths: fewer searches
        for k in np.unique(k_user):
            rows = todo[k_user == k]
            got, found = _unseen_first(index.search(query[rows], int(k)), seen[rows], n)
            full = found >= want[rows]
            top[rows[full]] = got[full]
            done[rows[full]] = True
    scores = np.full((n_rows, n), -np.inf, np.float32)
    valid = top >= 0
    if valid.any():
        r, c = np.nonzero(valid)
        scores[r, c] = np.einsum("ij,ij->i", query[r], items[top[r, c]])
    # Exact scores, best first; equal scores by item index, so results depend only on the index.
    order = np.lexsort((np.where(valid, top, np.iinfo(np.int64).max), -scores), axis=1)
    top, scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(scores, order, axis=1)
    rest = np.flatnonzero(~done)
    if len(rest):
        top[rest], scores[rest] = top_k(items, query[rest], n, seen[rest])
    return top, scores


class AnnRanker(VectorRecommender):
    """A ranking view of a fitted vector model whose ``recommend`` goes through an :class:`AnnIndex`.

    Everything else (ids, info, vectors, ``score``, ``similar_items``) is the model's.
    Users the model ranks by something other than ``u . v + b`` (thin users of
    :class:`recjobs.ranking.coldstart.ThinUserNeighbourhood`) are ranked by the model itself.
    """

    def __init__(self, model: VectorRecommender, index: AnnIndex | NormPrunedIndex | ClusteredIndex, depth: int = 128,
                 max_depth: int = 512) -> None:
        super().__init__(model.params, model.seed)
        self.family = model.family  # type: ignore[misc]
        self.params_type = model.params_type  # type: ignore[misc]
        self.user_ids, self.item_ids, self.info = model.user_ids, model.item_ids, model.info
        self.vectors = model._vec()
        self.model, self.index, self.depth, self.max_depth = model, index, depth, max_depth
        self._items = augmented_items(self.vectors)
        self._own: np.ndarray | None = getattr(model, "_thin", None)

    def _fit(self, data: Interactions, features: SideFeatures | None) -> Vectors:
        raise TypeError("a ranking view of a fitted model cannot be fitted")

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        return self.model.score(user_rows)

    def similar_items(self, item_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.model.similar_items(item_rows, n)

    def ranking_order(self, user_rows: np.ndarray) -> np.ndarray:
        if isinstance(self.index, ClusteredIndex):
            return self.index.order(user_rows)
        return super().ranking_order(user_rows)

    def recommend(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        user_rows = np.asarray(user_rows, dtype=np.int64)
        own = self._own[user_rows] if self._own is not None else np.zeros(len(user_rows), bool)
        ids = np.full((len(user_rows), n), -1, np.int64)
        scores = np.full((len(user_rows), n), -np.inf, np.float32)
        if (~own).any():
            rows = user_rows[~own]
            if isinstance(self.index, NormPrunedIndex):
                ids[~own], scores[~own] = self.index.recommend(self.vectors, rows, n, exclude, self._items)
            elif isinstance(self.index, ClusteredIndex):
                ids[~own], scores[~own] = self.index.recommend(self.vectors.user_vectors, rows, n, exclude)
            else:
                ids[~own], scores[~own] = ann_recommend(self.vectors, self.index, rows, n, exclude,
                                                        self.depth, self.max_depth, self._items)
        if own.any():
            ids[own], scores[own] = self.model.recommend(user_rows[own], n, exclude)
        return ids, scores


class NormPrunedIndex:
    """Exact top-N that scores most users against only the longest item vectors.

    Items are ordered by ``|v|``; a user is scored against the first ``head`` items. Any
    other item scores at most ``|u| * |v_head| + max(b_rest)`` (Cauchy-Schwarz), so
    when the user's ``n``-th best unseen head score beats that bound the head's top-``n``
    is the exact top-``n`` (certified); other users are scored against every item.
    ``head`` is chosen at build time from a sample of users, minimising the items scored
    per user (``head`` plus the whole catalogue for uncertified users).
    """

    def __init__(self, vectors: Vectors, n: int, exclude: sp.csr_matrix | None = None,
                 sample_users: int = 2048, seed: int = 1) -> None:
        started = time.perf_counter()
        items = augmented_items(vectors)
        norms = np.linalg.norm(vectors.item_vectors, axis=1)
        self.order = np.argsort(-norms, kind="stable")
        self.position = np.empty_like(self.order)
        self.position[self.order] = np.arange(len(self.order))
        self.sorted_items = np.ascontiguousarray(items[self.order])
        sorted_norms = norms[self.order]
        bias = vectors.item_bias[self.order].astype(np.float64)
        # tail_norm[m], tail_bias[m]: the largest |v| and b among sorted items m and later.
        self.tail_norm = np.append(sorted_norms, 0.0)
        self.tail_bias = np.append(np.maximum.accumulate(bias[::-1])[::-1], -np.inf)
        n_items = len(norms)
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(len(vectors.user_vectors), min(sample_users, len(vectors.user_vectors)),
                                   replace=False))
        best, chosen = 1.0, n_items
        for share in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6):
            m = max(n, int(share * n_items))
            if m >= n_items:
                break
            self.head = m
            certified = self._head_top(vectors, users, n, exclude)[2]
            # Scoring m items costs m / n_items of exact; uncertified users pay exact again.
            cost = m / n_items + (1 - certified.mean())
            if cost < best:
                best, chosen = cost, m
        self.head = chosen
        self.expected_cost = best
        self.build_seconds = time.perf_counter() - started
        log.info("norm-pruned scoring: %d of %d items in the head, about %.0f%% of exact's work (%.1fs)",
                 self.head, n_items, 100 * best, self.build_seconds)

    def _head_top(self, vectors: Vectors, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None) -> tuple[
            np.ndarray, np.ndarray, np.ndarray, np.ndarray, sp.csr_matrix | None]:
        """Top-``n`` unseen of the head (item indices, scores), which users it is exact for, queries, seen rows."""
        n_rows, m = len(user_rows), self.head
        query = np.hstack([vectors.user_vectors[user_rows], np.ones((n_rows, 1), np.float32)])
        seen = exclude[user_rows].tocsr() if exclude is not None else None
        filt = None
        if seen is not None:
            # The seen items as head positions (columns of the sorted head).
            pos = self.position[seen.indices]
            keep = pos < m
            row = np.repeat(np.arange(n_rows), np.diff(seen.indptr))
            filt = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (row[keep], pos[keep])), shape=(n_rows, m))
        ids, scores = top_k(self.sorted_items[:m], query, n, filt)
        unorm = np.linalg.norm(vectors.user_vectors[user_rows], axis=1)
        # Strictly above the bound: an item outside the head can then neither beat nor tie the list.
        certified = scores[:, n - 1] > unorm * self.tail_norm[m] + self.tail_bias[m]
        ids = np.where(ids >= 0, self.order[np.maximum(ids, 0)], -1)
        return ids, scores, certified, query, seen

    def recommend(self, vectors: Vectors, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None,
                  items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``n`` (indices, scores) of ``user_rows`` with ``exclude``'s items left out."""
        user_rows = np.asarray(user_rows, dtype=np.int64)
        ids, scores, certified, query, seen = self._head_top(vectors, user_rows, n, exclude)
        rest = np.flatnonzero(~certified)
        if len(rest):
            ids[rest], scores[rest] = top_k(items, query[rest], n, seen[rest] if seen is not None else None)
        return ids, scores


class ClusteredIndex:
    """Approximate top-N for users grouped by taste: each group ranks a short shared candidate list.

    Users are clustered by k-means on their vectors (seeded, on a sample, one thread, so
    every shard builds the same clusters). A user ``u = c + d`` of cluster ``c`` scores
    item ``i`` at most ``c . a_i + |d| |v_i|`` (Cauchy-Schwarz, ``a_i = [v_i, b_i]``), so
    the items with the largest ``c . a_i + R_c |v_i|`` (``R_c`` the cluster's radius) are
    the ones any member can rank high. Each member is scored exactly against the first
    ``candidates`` items of that order they have not seen: one small matrix product per
    cluster instead of the whole catalogue. ``candidates`` is calibrated at build time so
    that the recall of the exact top-``n`` on a sample of users reaches ``recall``. A
    user's candidates depend on their cluster and history only, never on which users share
    a batch, so sharded and unsharded ranking return the same lists.
    """

    def __init__(self, vectors: Vectors, n: int, exclude: sp.csr_matrix | None = None, clusters: int | None = None,
                 recall: float = 0.99, sample_users: int = 2048, seed: int = 1) -> None:
        import faiss

        started = time.perf_counter()
        users = np.ascontiguousarray(vectors.user_vectors, dtype=np.float32)
        self.items = augmented_items(vectors)
        self.items64 = self.items.astype(np.float64)  # the exact scores' sums (_fixed_shape_scores)
        self.item_norms = np.linalg.norm(vectors.item_vectors, axis=1).astype(np.float32)
        n_users, dim = users.shape
        n_items = len(self.items)
        # About 256 users a cluster: enough to make each cluster's product a real matrix
        # product, few enough that the candidates fit the cluster tightly.
        k = max(1, min(clusters or round(n_users / 256), 4096, n_users))
        rng = np.random.default_rng(seed)
        train = users[np.sort(rng.choice(n_users, min(n_users, 64 * k), replace=False))]
        if not n_users:  # nothing to cluster (k-means needs a point): one cluster that ranks nobody
            train = np.zeros((1, dim), np.float32)
        with _threads(1):
            kmeans = faiss.Kmeans(dim, k, niter=10, seed=seed, min_points_per_centroid=1, max_points_per_centroid=64)
            kmeans.train(train)
            _, assign = kmeans.index.search(users, 1)
        self.assign = assign.ravel().astype(np.int64)
        self.centroids = np.hstack([kmeans.centroids, np.ones((k, 1), np.float32)])
        distance = np.linalg.norm(users - kmeans.centroids[self.assign], axis=1)
        self.radius = np.zeros(k, np.float32)
        np.maximum.at(self.radius, self.assign, distance)
        self.n, self.n_clusters = n, k
        sample = np.sort(rng.choice(n_users, min(n_users, sample_users), replace=False))
        self.recall = self._calibrate(users, sample, n, exclude, recall)
        self.build_seconds = time.perf_counter() - started
        log.info("clustered ranking: %d user clusters, %d of %d items scored per user (recall %.4f of exact "
                 "top-%d on %d sampled users), built in %.1fs", k, self.candidates, n_items, self.recall, n,
                 len(sample), self.build_seconds)

    def _calibrate(self, users: np.ndarray, sample: np.ndarray, n: int, exclude: sp.csr_matrix | None,
                   target: float) -> float:
        """Set the candidate depth so that ``target`` of the sample's exact top-``n`` items are candidates.

        A user's candidates are the first ``m`` items they have not seen in their cluster's
        bound order, so an item of their exact top-``n`` makes their list exactly when its
        rank among those unseen items is below ``m`` (the candidates hold no better item):
        one pass over the sample gives the ``m`` for any target. Returns the sample's recall.
        """
        n_items = len(self.items)
        query = np.hstack([users[sample], np.ones((len(sample), 1), np.float32)])
        want, _ = top_k(self.items, query, n, exclude[sample] if exclude is not None else None)
        found, levels = [], []
        for cluster in np.unique(self.assign[sample]):
            _, rank = self._ranks(cluster)
            for u in np.flatnonzero(self.assign[sample] == cluster):
                best = rank[want[u][want[u] >= 0]]
                seen = np.sort(rank[exclude.indices[exclude.indptr[sample[u]]:exclude.indptr[sample[u] + 1]]]) \
                    if exclude is not None else np.zeros(0, np.int64)
                found.append(best - np.searchsorted(seen, best))
                levels.append(np.full(len(best), self._level(np.asarray([len(seen)]))[0]))
        ranks = np.concatenate(found) if found else np.zeros(0, np.int64)
        level = np.concatenate(levels) if levels else np.zeros(0, np.int64)
        # Past half the catalogue a per-cluster product saves little: rank exactly instead.
        exact = n_items
        # Heavier users' best unseen items lie deeper: one depth per activity level, and
        # exact ranking for a level the sample has too few of to calibrate.
        self.depths = np.full(len(_SEEN_LEVELS) + 1, exact, np.int64)
        for lv in range(len(self.depths)):
            mine = ranks[level == lv]
            if len(mine) >= 10 * n:
                m = max(n, int(np.quantile(mine, target, method="higher")) + 1)
                self.depths[lv] = m if m < n_items // 2 else exact
        self.candidates = int(self.depths[0]) if len(ranks) else min(n_items, n)
        if not len(ranks):
            self.depths[:] = self.candidates
            return 1.0
        return float((ranks < self.depths[level]).mean())

    @staticmethod
    def _level(n_seen: np.ndarray) -> np.ndarray:
        """Activity level of users who have seen ``n_seen`` items (see ``_SEEN_LEVELS``)."""
        return np.searchsorted(_SEEN_LEVELS, n_seen, side="right")

    def _ranks(self, cluster: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``cluster``'s bound order (items, largest bound first) and each item's place in it.

        With ``width``, only the first ``width`` places are ordered; every other item gets
        place ``len(items)`` (a partial sort instead of a full one).
        """
        bound = self.items @ self.centroids[cluster] + self.radius[cluster] * self.item_norms
        n_items = len(bound)
        if width is None or width >= n_items:
            order = np.argsort(-bound, kind="stable")
        else:
            head = np.argpartition(-bound, width - 1)[:width]
            order = head[np.lexsort((head, -bound[head]))]
        rank = np.full(n_items, n_items, np.int64)
        rank[order] = np.arange(len(order))
        return order, rank

    def order(self, user_rows: np.ndarray) -> np.ndarray:
        """``user_rows`` grouped by cluster (stable): batches of them share candidate lists."""
        user_rows = np.asarray(user_rows, dtype=np.int64)
        return user_rows[np.argsort(self.assign[user_rows], kind="stable")]

    def recommend(self, user_vectors: np.ndarray, user_rows: np.ndarray, n: int,
                  exclude: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` (item indices, exact scores) of ``user_rows``, ``exclude``'s items left out.

        Each user is scored against the first ``candidates`` items they have not seen, in
        their cluster's bound order. Users whose seen items would push that past four times
        as deep, or whose candidates cannot fill the list exact scoring would, are ranked
        against every item (very heavy users).
        """
        user_rows = np.asarray(user_rows, dtype=np.int64)
        n_rows, n_items = len(user_rows), len(self.items)
        ids = np.full((n_rows, n), -1, np.int64)
        scores = np.full((n_rows, n), -np.inf, np.float32)
        if n_rows == 0:
            return ids, scores
        # Deeper lists (re-ranking asks for more) need proportionally more candidates.
        depths = np.minimum(n_items, -(-self.depths * max(n, self.n) // self.n))
        widest = int(4 * depths[depths < n_items].max() + 64) if (depths < n_items).any() else None
        cluster = self.assign[user_rows]
        by_cluster = np.argsort(cluster, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(cluster[by_cluster]) != 0])
        short = np.zeros(n_rows, bool)
        with threadpool_limits(1, "blas"):
            for group in np.split(by_cluster, starts[1:]):
                rows = user_rows[group]
                # Nobody ranked by candidates looks deeper than four times the largest depth.
                by_bound, rank = self._ranks(int(cluster[group[0]]), widest)
                if exclude is not None:
                    indptr = exclude.indptr
                    lens = (indptr[rows + 1] - indptr[rows]).astype(np.int64)
                    flat = np.repeat(indptr[rows] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
                    owner = np.repeat(np.arange(len(rows)), lens)
                    seen_rank = rank[exclude.indices[flat]]
                    # Each user's depth: m plus the seen items inside it. Sorted per user, the
                    # j-th seen rank (0-based) lies inside exactly when rank - j < m.
                    key = np.sort(owner * (n_items + 1) + seen_rank)  # by user, then rank
                    owner, seen_rank = key // (n_items + 1), key % (n_items + 1)
                    j = np.arange(len(owner)) - np.repeat(np.cumsum(lens) - lens, lens)
                    n_seen = lens
                    m = depths[self._level(n_seen)]
                    depth = m + np.bincount(owner, weights=(seen_rank - j) < m[owner],
                                            minlength=len(rows)).astype(np.int64)
                else:
                    owner = seen_rank = np.zeros(0, np.int64)
                    n_seen = np.zeros(len(rows), np.int64)
                    m = depth = np.full(len(rows), depths[0], np.int64)
                # A user needs m unseen candidates: users whose level is ranked exactly, or
                # whose seen items push that past four times as deep, rank against every item.
                heavy = (m >= n_items) | (depth > 4 * m + 64)
                depth = np.minimum(depth, n_items)
                width = int(depth[~heavy].max()) if (~heavy).any() else 0
                if width == 0:
                    short[group] = True
                    continue
                # The candidates in bound order; a user sees only the first `depth` of them, so
                # their list depends on their cluster and history, never on their batch.
                cand = by_bound[:width]
                block = _fixed_shape_scores(user_vectors[rows], self.items64[cand])
                block[np.arange(width)[None, :] >= depth[:, None]] = -np.inf
                inside = seen_rank < width
                block[owner[inside], seen_rank[inside]] = -np.inf
                k = min(n, width)
                top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < width else np.tile(
                    np.arange(width), (len(rows), 1))
                top_scores = np.take_along_axis(block, top, axis=1)
                # Best first; equal scores by item index, so lists depend only on the scores.
                order = np.lexsort((cand[top], -top_scores), axis=1)
                top, top_scores = np.take_along_axis(top, order, 1), np.take_along_axis(top_scores, order, 1)
                valid = np.isfinite(top_scores)
                ids[group, :k] = np.where(valid, cand[top], -1)
                scores[group, :k] = np.where(valid, top_scores, -np.inf)
                short[group] = heavy | (valid.sum(axis=1) < np.minimum(n, n_items - n_seen))
        # Against every item, _TILE users at a time (so each one's scores are bit-identical
        # in any batch); ties by item index, as above.
        rest = np.flatnonzero(short)
        with threadpool_limits(1, "blas"):
            for lo in range(0, len(rest), _TILE):
                part = rest[lo:lo + _TILE]
                rows = user_rows[part]
                ids[part], scores[part] = top_k_of_scores(_fixed_shape_scores(user_vectors[rows], self.items64), n,
                                                          exclude[rows] if exclude is not None else None)
        return ids, scores


# Activity levels of ClusteredIndex (items seen: under 64, under 256, under 1024, more),
# each calibrated to its own candidate depth.
_SEEN_LEVELS = np.array([64, 256, 1024])

# Rows per matrix product in ClusteredIndex: a product of exactly _TILE rows (zero
# padded) takes one BLAS path whatever rows fill it.
_TILE = 64


def _fixed_shape_scores(user_vectors: np.ndarray, items64: np.ndarray) -> np.ndarray:
    """``[u, 1] . items`` for each row ``u``, each row bit-identical whatever rows come with it.

    BLAS picks its kernel by the product's shape and by the CPU (OpenBLAS's Haswell kernel
    on AVX2 machines splits the sums differently from its generic one), and float32 sums
    in another order differ in the last bits: a user's scores, and the order of near-ties,
    would change with the users that share its batch, i.e. with the sharding. So the sums
    run in float64 (``items64``) and are rounded to float32 once: the orders still differ,
    but by far less than a float32 step, so the rounded scores agree.
    """
    n_rows = len(user_vectors)
    query = np.zeros((-(-n_rows // _TILE) * _TILE, items64.shape[1]), np.float64)
    query[:n_rows, :-1], query[:n_rows, -1] = user_vectors, 1.0
    out = np.empty((len(query), len(items64)), np.float32)
    items_t = np.ascontiguousarray(items64).T
    for lo in range(0, len(query), _TILE):  # callers hold BLAS to one thread
        out[lo:lo + _TILE] = query[lo:lo + _TILE] @ items_t
    return out[:n_rows]


def with_ann(model: Recommender, kind: Literal["off", "ivf", "hnsw", "pruned", "clustered"], n: int = 50,
             exclude: sp.csr_matrix | None = None, depth: int = 128, max_depth: int = 512,
             recall: float = 0.99, **knobs: Any) -> Recommender:
    """``model`` ranked through an index of ``kind``, or ``model`` itself when off or not a vector family.

    Builds the index once (per shard task; its cost is logged). ``n`` and ``exclude``
    (the seen matrix) let ``pruned`` size its head and ``clustered`` calibrate its
    candidates (to ``recall``) for the lists it will rank; ``knobs`` go to :class:`AnnIndex`
    (``lists`` is ``clustered``'s user cluster count).
    """
    if kind == "off" or not isinstance(model, VectorRecommender):
        if kind != "off":
            log.info("publish.ann=%s: %s is not a vector family, ranked exactly", kind, model.family)
        return model
    with threadpool_limits(1, "blas"):
        if kind == "pruned":
            index: AnnIndex | NormPrunedIndex | ClusteredIndex = NormPrunedIndex(model._vec(), n, exclude)
        elif kind == "clustered":
            index = ClusteredIndex(model._vec(), n, exclude, clusters=knobs.get("lists"), recall=recall)
        else:
            index = build_index(model, kind, **knobs)
    return AnnRanker(model, index, depth, max_depth)


def for_publish(model: Recommender, publish: PublishSettings, seen: sp.csr_matrix | None) -> Recommender:
    """``model`` ranked as ``publish.ann`` says (see :func:`with_ann`); ``seen``: the publish seen matrix."""
    return with_ann(model, publish.ann, publish.top_n, seen, publish.ann_depth, publish.ann_max_depth,
                    publish.ann_recall, lists=publish.ann_lists, probe=publish.ann_probe, hnsw_m=publish.ann_hnsw_m,
                    ef_search=publish.ann_ef_search)
