"""Neighbourhood families: an item x item matrix ``S``; a user's score is their history times ``S``.

Scoring is sparse (history x S), never a dense users x items x items product. Ranking
(``recommend``) scores blocks of users on two threads by the same product and ranks only
what can be listed (the modelled items, or the product's stored entries): the same lists
and scores as ranking :meth:`NeighbourhoodRecommender.score`'s full block, about 3-5x faster.
"""

from __future__ import annotations

from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel

from recjobs.arrays import stored_values
from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions
from recjobs.errors import ModelError
from recjobs.models.base import PAIR_BLOCK, PairScorer, Peers, Recommender
from recjobs.models.topk import top_k_of_rows, top_k_of_scores

# Users per task of the fast ranking path: a task's score block (users x modelled items,
# plus argpartition's indices) stays within a few tens of MB, near the caches.
RANK_BLOCK = 256
# Threads of the fast ranking path: scipy's products and numpy's partitions release the GIL.
RANK_THREADS = 2
# Largest users x items exclusion bitmap a block of sparse scores uses (bytes).
_MASK_LIMIT = 64 << 20


@dataclass(frozen=True)
class Neighbourhood:
    """What a neighbourhood family learns.

    ``similarity`` is an item x item matrix over the items at ``items`` (positions in
    the training items; None: all of them), dense for EASE, sparse with a few
    neighbours per row for item-item. A user's score is ``history[u] @ similarity``;
    items outside ``items`` are not scored (never recommended). ``history`` (users x
    ``items``) is what scoring multiplies, already weighted (binary, rating or recency:
    the family decides). ``item_embedding`` is a small dense representation of every
    training item (for diversity and maps), or None.
    """

    similarity: np.ndarray | sp.csr_matrix
    history: sp.csr_matrix
    items: np.ndarray | None = None
    item_embedding: np.ndarray | None = None


class NeighbourhoodRecommender(Recommender):
    """A family that learns an item x item matrix: ``_fit`` returns :class:`Neighbourhood`."""

    kind = "neighbourhood"

    def __init__(self, params: BaseModel | None = None, seed: int = 42) -> None:
        super().__init__(params, seed)
        self.neighbourhood: Neighbourhood | None = None
        self.n_items = 0
        self._prepared: tuple[Neighbourhood, np.ndarray | None, bool] | None = None

    @abstractmethod
    def _fit(self, data: Interactions, features: SideFeatures | None) -> Neighbourhood:
        """Learn the item x item matrix (and the weighted history) for ``data``."""

    def _learn(self, data: Interactions, features: SideFeatures | None, peers: Peers) -> None:
        nb = self._fit(data, features)
        m = data.n_items if nb.items is None else len(nb.items)
        if nb.similarity.shape != (m, m) or nb.history.shape != (data.n_users, m):
            raise ModelError(f"{self.family}: matrices of the wrong shape {nb.similarity.shape} "
                                 f"{nb.history.shape} for {m} items")
        sim = nb.similarity
        sim = sim.astype(np.float32).tocsr() if sp.issparse(sim) else np.ascontiguousarray(sim, dtype=np.float32)
        emb = None if nb.item_embedding is None else np.ascontiguousarray(nb.item_embedding, dtype=np.float32)
        items = None if nb.items is None else np.asarray(nb.items, np.int64)
        self.neighbourhood = Neighbourhood(sim, nb.history.astype(np.float32).tocsr(), items, emb)
        self.n_items = data.n_items

    def _nb(self) -> Neighbourhood:
        if self.neighbourhood is None:
            raise ModelError(f"{self.family}: model is not fitted")
        return self.neighbourhood

    def _widen(self, block: np.ndarray) -> np.ndarray:
        """A block over the modelled items as a block over all items (-inf where not modelled)."""
        items = self._nb().items
        if items is None:
            return block
        full = np.full((block.shape[0], self.n_items), -np.inf, np.float32)
        full[:, items] = block
        return full

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """History times the item x item matrix; items nothing in the history reaches score -inf.

        A score of 0 would be a real candidate to the top-k, so a user whose few items
        have few neighbours would get lists padded with arbitrary items; -inf leaves those
        slots empty instead (index -1), for re-ranking's deeper pass or the fallback list.
        """
        nb = self._nb()
        history = nb.history[user_rows]
        if sp.issparse(nb.similarity):
            product = (history @ nb.similarity).tocoo()
            block = np.full((len(user_rows), nb.similarity.shape[1]), -np.inf, np.float32)
            block[product.row, product.col] = product.data
        else:
            block = sparse_times(history, nb.similarity)
            block[np.diff(history.indptr) == 0] = -np.inf  # no modelled item in the history
        return self._widen(block)

    def score_pairs(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """:meth:`score`'s values of the pairs (the same scipy product), without widening blocks to every item."""
        if type(self).score is not NeighbourhoodRecommender.score:
            return super().score_pairs(user_rows, item_rows)  # a subclass scores its own way
        nb = self._nb()
        positions, _ = self._prepare()
        user_rows, item_rows = np.asarray(user_rows, np.int64), np.asarray(item_rows, np.int64)
        cols = item_rows if positions is None else positions[item_rows]
        out = np.full(len(user_rows), -np.inf, np.float32)
        users, inverse = np.unique(user_rows, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(0, len(users) + PAIR_BLOCK, PAIR_BLOCK))
        for b, lo in enumerate(range(0, len(users), PAIR_BLOCK)):
            at = order[bounds[b]:bounds[b + 1]]
            at = at[cols[at] >= 0]
            history = nb.history[users[lo:lo + PAIR_BLOCK]]
            row, col = inverse[at] - lo, cols[at]
            if sp.issparse(nb.similarity):
                # What the product does not store, nothing in the history reaches: -inf, as in score.
                values, found = stored_values(history @ nb.similarity, row, col)
                out[at] = np.where(found, values, -np.inf)
            else:
                block = sparse_times(history, nb.similarity)
                block[np.diff(history.indptr) == 0] = -np.inf
                out[at] = block[row, col]
        return out

    def recommend(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The lists of :meth:`Recommender.recommend` (``score`` then ``top_k_of_scores``), faster.

        Each block of users is scored by the same scipy product as :meth:`score` (so the
        same float32 sums, bit for bit), then ranked over what can be listed only: the
        modelled items of a dense ``similarity``, the stored entries of a sparse one's
        product, with excluded items set to -inf by index arithmetic. Blocks run on
        ``RANK_THREADS`` threads. Rows with a NaN or +inf score go the generic way.
        """
        self._require_fitted()
        if type(self).score is not NeighbourhoodRecommender.score:
            return super().recommend(user_rows, n, exclude)  # a subclass scores its own way
        ids, scores, _ = self._ranked(np.asarray(user_rows, dtype=np.int64), n, exclude, keep=False)
        return ids, scores

    def recommend_scorer(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray, PairScorer]:
        """:meth:`recommend`, keeping each block's product (history x S) for the pairs' scorer.

        The ranker asks a generator for its top-K and then for its scores of the other
        generators' candidates: both need the same product, which was a fifth of the
        ranker's serving time when computed twice. A kept dense block is a copy taken
        before exclusions are applied, so the scorer gives :meth:`score_pairs`' values.
        """
        self._require_fitted()
        if type(self).score is not NeighbourhoodRecommender.score:
            return super().recommend_scorer(user_rows, n, exclude)
        rows = np.asarray(user_rows, dtype=np.int64)
        ids, scores, kept = self._ranked(rows, n, exclude, keep=True)
        positions, _ = self._prepare()

        def scorer(at: np.ndarray, items: np.ndarray) -> np.ndarray:
            at, items = np.asarray(at, np.int64), np.asarray(items, np.int64)
            cols = items if positions is None else positions[items]
            out = np.full(len(at), -np.inf, np.float32)
            which = at // RANK_BLOCK
            for b in np.unique(which[cols >= 0]):
                sel = np.flatnonzero((which == b) & (cols >= 0))
                product, row, col = kept[int(b)], at[sel] - int(b) * RANK_BLOCK, cols[sel]
                if sp.issparse(product):
                    # What the product does not store, nothing in the history reaches: -inf, as in score.
                    values, found = stored_values(product, row, col)
                    out[sel] = np.where(found, values, -np.inf)
                else:
                    out[sel] = product[row, col]
            return out

        return ids, scores, scorer

    def _ranked(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None, keep: bool
    ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray | sp.csr_matrix]]:
        """Lists of ``user_rows`` by blocks of ``RANK_BLOCK`` users; with ``keep``, each block's product by block number."""
        if exclude is not None and exclude.shape[1] > self.n_items:
            raise ModelError(f"{self.family}: an exclusion matrix of {exclude.shape[1]} items for a model of "
                             f"{self.n_items}")
        filt = exclude[user_rows].tocsr() if exclude is not None else None
        positions, by_item = self._prepare()
        ids = np.full((len(user_rows), n), -1, np.int64)
        scores = np.full((len(user_rows), n), -np.inf, np.float32)
        kept: dict[int, np.ndarray | sp.csr_matrix] = {}

        def block(lo: int) -> None:
            hi = min(lo + RANK_BLOCK, len(user_rows))
            part = filt[lo:hi] if filt is not None else None
            ids[lo:hi], scores[lo:hi], product = self._rank_block(user_rows[lo:hi], n, part, positions, by_item,
                                                                  keep)
            if keep:
                kept[lo // RANK_BLOCK] = product

        starts = range(0, len(user_rows), RANK_BLOCK)
        if len(starts) <= 1 or RANK_THREADS <= 1:
            for lo in starts:
                block(lo)
        else:
            with ThreadPoolExecutor(min(RANK_THREADS, len(starts))) as pool:
                list(pool.map(block, starts))
        return ids, scores, kept

    def _rank_block(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None, positions: np.ndarray | None,
        by_item: bool, keep: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | sp.csr_matrix | None]:
        """One block of :meth:`recommend`: ``exclude`` is the block's rows, over all items; with
        ``keep``, the block's product as :meth:`score` has it (over the modelled items)."""
        nb = self._nb()
        history = nb.history[user_rows]
        kept: np.ndarray | sp.csr_matrix | None = None
        if sp.issparse(nb.similarity):
            product = (history @ nb.similarity).tocsr()
            ids, scores, bad = _rank_sparse(product, n, exclude)  # reads the product, never writes it
            kept = product if keep else None
        else:
            block = _dense_product(history, nb.similarity, by_item)
            kept = block.copy() if keep else None
            ids, scores, bad = _rank_dense(block, n, exclude, positions)
            if nb.items is not None:
                ids = np.where(ids >= 0, nb.items[np.maximum(ids, 0)], -1)
        if bad.any():  # NaN or +inf somewhere: exactly as the generic path ranks them
            part = exclude[bad] if exclude is not None else None
            ids[bad], scores[bad] = top_k_of_scores(self.score(user_rows[bad]), n, part)
        return ids, scores, kept

    def _prepare(self) -> tuple[np.ndarray | None, bool]:
        """Once per fitted model: each training item's column in ``similarity`` (-1: not
        modelled; None: all are), and whether every history row is in item order."""
        nb = self._nb()
        if self._prepared is None or self._prepared[0] is not nb:
            positions = None
            if nb.items is not None:
                positions = np.full(self.n_items, -1, np.int64)
                positions[nb.items] = np.arange(len(nb.items))
            self._prepared = (nb, positions, bool(nb.history.has_canonical_format))
        return self._prepared[1], self._prepared[2]

    def similar_items(self, item_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items by the learned item x item weights (the item's row of ``similarity``)."""
        nb = self._nb()
        item_rows = np.asarray(item_rows, np.int64)
        if nb.items is None:
            local = item_rows
        else:
            position = np.full(self.n_items, -1, np.int64)
            position[nb.items] = np.arange(len(nb.items))
            local = position[item_rows]
        modelled = local >= 0
        m = nb.similarity.shape[0]
        block = np.full((len(item_rows), m), -np.inf, np.float32)
        if modelled.any():
            rows = nb.similarity[local[modelled]]
            if sp.issparse(rows):
                # Only stored entries are neighbours; an absent entry is not a score of 0.
                dense = np.full(rows.shape, -np.inf, np.float32)
                coo = rows.tocoo()
                dense[coo.row, coo.col] = coo.data
            else:
                dense = np.array(rows, dtype=np.float32)
            block[modelled] = dense
        itself = sp.csr_matrix((np.ones(int(modelled.sum()), np.float32),
                                (np.flatnonzero(modelled), local[modelled])), shape=block.shape)
        ids, scores = top_k_of_scores(block, n, itself)
        if nb.items is not None:
            ids = np.where(ids >= 0, nb.items[np.maximum(ids, 0)], -1)
        return ids, scores

    def item_embedding(self) -> np.ndarray | None:
        return self._nb().item_embedding

    def _state(self) -> dict[str, np.ndarray]:
        nb = self._nb()
        out: dict[str, np.ndarray] = {"n_items": np.asarray([self.n_items], np.int64)}
        if sp.issparse(nb.similarity):
            out.update(sim_data=nb.similarity.data, sim_indices=nb.similarity.indices,
                       sim_indptr=nb.similarity.indptr)
        else:
            out["sim_dense"] = nb.similarity
        h = nb.history
        out.update(hist_data=h.data, hist_indices=h.indices, hist_indptr=h.indptr,
                   hist_shape=np.asarray(h.shape, np.int64))
        if nb.items is not None:
            out["items"] = nb.items
        if nb.item_embedding is not None:
            out["item_embedding"] = nb.item_embedding
        return out

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        shape = tuple(int(x) for x in arrays["hist_shape"])
        history = sp.csr_matrix((arrays["hist_data"], arrays["hist_indices"], arrays["hist_indptr"]), shape=shape)
        if "sim_dense" in arrays:
            sim: np.ndarray | sp.csr_matrix = arrays["sim_dense"]
        else:
            sim = sp.csr_matrix((arrays["sim_data"], arrays["sim_indices"], arrays["sim_indptr"]),
                                shape=(shape[1], shape[1]))
        self.neighbourhood = Neighbourhood(sim, history, arrays.get("items"), arrays.get("item_embedding"))
        self.n_items = int(arrays["n_items"][0])


def _dense_product(history: sp.csr_matrix, similarity: np.ndarray, by_item: bool) -> np.ndarray:
    """``history @ similarity`` as :meth:`NeighbourhoodRecommender.score` has it (rows without history -inf).

    ``by_item``: the rows are in item order, so the product can run item by item (CSC):
    scipy then adds ``w * similarity[i]`` into each user's row in the same order as row by
    row, so the same float32 sums, bit for bit, while each row of ``similarity`` is read
    once per block instead of once per user holding it (measured 1.2-1.5x).
    """
    # scipy's sparse x dense product, the one sparse_times computes with
    block = (history.tocsc() if by_item else history) @ similarity
    block[np.diff(history.indptr) == 0] = -np.inf  # no modelled item in the history
    return block


def _rank_dense(
    block: np.ndarray, n: int, exclude: sp.csr_matrix | None, positions: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``n`` over the modelled items (local indices) of a :func:`_dense_product` block, and the rows to redo.

    The items outside ``similarity`` score -inf in :meth:`NeighbourhoodRecommender.score`,
    so they are never listed: ranking the modelled ones alone gives the same lists, and
    local order is item order (``items`` is sorted), so ties break the same way. The
    block is overwritten (excluded items, bad rows).
    """
    m = block.shape[1]
    bad = ~(block.max(axis=1) < np.inf)  # NaN or +inf
    if exclude is not None and exclude.nnz:
        rows = np.repeat(np.arange(exclude.shape[0]), np.diff(exclude.indptr))
        cols = exclude.indices if positions is None else positions[exclude.indices]
        keep = cols >= 0
        np.put(block, rows[keep] * m + cols[keep], -np.inf)
    if bad.any():
        block[bad] = -np.inf
    ids, scores = top_k_of_rows(block, n)
    return ids, scores, bad


def _rank_sparse(
    product: sp.csr_matrix, n: int, exclude: sp.csr_matrix | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``n`` of a sparse ``history @ similarity`` (absent entries are -inf), and the rows to redo.

    Only the stored entries can be listed, so each row is ranked over its own entries,
    packed into a users x (longest row) block, users of similar length together so that
    padding stays small: never a users x all items block.
    """
    product = product.tocsr()
    n_rows, n_items = product.shape
    lengths = np.diff(product.indptr)
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), lengths)
    values = product.data.astype(np.float32, copy=True)
    if exclude is not None and exclude.nnz:
        keys = rows * n_items + product.indices
        banned = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(exclude.indptr)) * n_items
        banned += exclude.indices
        if n_rows * n_items <= _MASK_LIMIT:  # a block's users x items bitmap: a few MB
            mask = np.zeros(n_rows * n_items, bool)
            mask[banned] = True
            values[mask[keys]] = -np.inf
        else:  # a huge catalogue: a sorted search instead
            banned.sort()
            at = np.minimum(np.searchsorted(banned, keys), len(banned) - 1)
            values[banned[at] == keys] = -np.inf
    bad = np.zeros(n_rows, bool)
    bad[rows[np.isnan(values) | (values == np.inf)]] = True
    values[bad[rows]] = -np.inf
    ids = np.full((n_rows, n), -1, np.int64)
    scores = np.full((n_rows, n), -np.inf, np.float32)
    by_length = np.argsort(lengths, kind="stable")
    group = 32
    for lo in range(0, n_rows, group):
        members = by_length[lo:lo + group]
        width = int(lengths[members].max(initial=0))
        if width == 0:
            continue
        packed = np.full((len(members), width), -np.inf, np.float32)
        items = np.zeros((len(members), width), np.int64)
        starts = product.indptr[members]
        slot = np.arange(width)
        inside = slot[None, :] < lengths[members][:, None]
        src = (starts[:, None] + slot[None, :])[inside]
        packed[inside] = values[src]
        items[inside] = product.indices[src]
        ids[members], scores[members] = top_k_of_rows(packed, n, items)
    return ids, scores, bad


def recency_history(data: Interactions, half_life: float | None, limit: int | None) -> sp.csr_matrix:
    """The binary history (typed events: their weights) weighted by recency (see :meth:`Interactions.recency_weights`).

    ``limit`` keeps only each user's latest ``limit`` interactions: with a recency
    half-life of a few interactions older ones weigh almost nothing, and scoring cost
    grows with the history's size (heavy users have thousands).
    """
    if half_life is None and limit is None:
        weights = np.ones(data.nnz, np.float32)
    else:
        age = data.recency_ages()
        weights = (np.ones(data.nnz, np.float32) if half_life is None
                   else np.power(0.5, age / half_life).astype(np.float32))
        if limit is not None:
            weights[age >= limit] = 0.0
        del age
    if data.typed:
        # Typed events: a purchased item speaks for the user more than a viewed one.
        weights = weights * data.matrix.data
    history = data.weighted(weights)
    history.eliminate_zeros()
    return history


def sparse_times(history: sp.csr_matrix, similarity: np.ndarray, threads: int = 2) -> np.ndarray:
    """``history @ similarity`` for a dense ``similarity``, as a dense float32 block.

    scipy's sparse x dense product streams a whole row of ``similarity`` per stored
    entry; taking ``similarity`` a band of columns at a time keeps the band in cache
    (measured 1.7x), and scipy releases the GIL there, so two threads split the rows.
    """
    n_rows, m = history.shape[0], similarity.shape[1]
    out = np.empty((n_rows, m), np.float32)
    band = 512

    def rows(lo: int, hi: int) -> None:
        part = history[lo:hi]
        for c in range(0, m, band):
            out[lo:hi, c:c + band] = part @ np.ascontiguousarray(similarity[:, c:c + band])

    cuts = np.linspace(0, n_rows, max(1, min(threads, n_rows)) + 1).astype(int)
    if len(cuts) <= 2:
        rows(0, n_rows)
        return out
    with ThreadPoolExecutor(len(cuts) - 1) as pool:
        list(pool.map(lambda ab: rows(*ab), zip(cuts[:-1], cuts[1:], strict=True)))
    return out


def item_embedding_svd(matrix: sp.csr_matrix, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Items x ``dim`` vectors from a randomized truncated SVD of the binary matrix.

    For families that learn no item vectors: diversity metrics and the dashboard's map
    need a dense item representation; two passes over the matrix (Halko et al.) cost a
    few seconds at 20M interactions.
    """
    x = matrix.astype(np.float32).tocsr()
    x.data[:] = 1.0
    n_items = x.shape[1]
    k = max(1, min(dim, n_items - 1, x.shape[0] - 1))
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((n_items, k + 8)).astype(np.float32)
    y = x.T @ (x @ omega)  # one power step: items x (k+8)
    q, _ = np.linalg.qr(y)
    projected = x @ q  # users x (k+8): its right singular vectors rotate q onto the item factors
    values, vectors = np.linalg.eigh(projected.T @ projected)
    top = np.argsort(-values)[:k]
    singular = np.sqrt(np.maximum(values[top], 0.0))
    # Scaled by sqrt(singular value), as ALS-style factors are, so that popular
    # directions weigh more; signs fixed so the result depends only on the data and seed.
    v = q @ vectors[:, top]
    v *= np.where(v.sum(axis=0) < 0, -1.0, 1.0)
    return (v * np.sqrt(singular)).astype(np.float32)


__all__ = ["Neighbourhood", "NeighbourhoodRecommender", "item_embedding_svd", "recency_history", "sparse_times"]
