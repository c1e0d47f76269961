"""User-based collaborative filtering: a user's scores are what their nearest users did.

Each user's profile (their history, recency-weighted as item-item weighs it: an
interaction's weight is ``0.5 ** (age / half_life)``, age counting the user's newer
interactions, so neighbours are chosen by recent taste) is compared by cosine (or cosine
over BM25-weighted histories) with the histories of a pool of neighbour users: all users,
or the ``max_pool_users`` most active ones at large sizes, since the users x pool product
is the family's cost. Each user keeps their ``neighbours`` most similar pool users (never
themselves), a sparse users x pool matrix ``S``; a user's scores are ``S[u] @ X_pool``
(the neighbours' binary histories, weighted by similarity), computed sparse. Items no
neighbour has seen score -inf (empty slots, as the neighbourhood families leave them).

The same ``S`` answers "people like you" (:meth:`UserKNNModel.similar_users`), published
like similar items. Item neighbours come from a truncated SVD of the binary matrix.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel

from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions
from recjobs.errors import ModelError
from recjobs.models.base import Peers, Recommender
from recjobs.models.neighbourhood import item_embedding_svd, recency_history
from recjobs.models.topk import cosine_neighbours, pad_empty
from recjobs.progress import Heartbeat
from recjobs.settings import UserKNNParams

log = logging.getLogger(__name__)


def _unit_rows(x: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.diags((1.0 / norms).astype(np.float32)).dot(x).tocsr().astype(np.float32)


def top_per_row(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's ``k`` largest positive entries (-1 / 0 where fewer)."""
    k = min(k, block.shape[1])
    part = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < block.shape[1] else \
        np.tile(np.arange(block.shape[1]), (block.shape[0], 1))
    vals = np.take_along_axis(block, part, axis=1)
    keep = vals > 0
    return np.where(keep, part, -1), np.where(keep, vals, 0.0)


class UserKNNModel(Recommender):
    family = "userknn"
    params_type = UserKNNParams
    kind = "userknn"

    def __init__(self, params: BaseModel | None = None, seed: int = 42) -> None:
        super().__init__(params, seed)
        self.similarity: sp.csr_matrix | None = None  # users x pool
        self.pool: np.ndarray | None = None  # pool position -> user row
        self.pool_history: sp.csr_matrix | None = None  # pool x items, binary
        self.embedding: np.ndarray | None = None

    def _learn(self, data: Interactions, features: SideFeatures | None, peers: Peers) -> None:
        p: UserKNNParams = self.params
        started = time.perf_counter()
        binary = data.binary().astype(np.float32)
        counts = np.diff(binary.indptr)
        if p.max_pool_users is not None and data.n_users > p.max_pool_users:
            # The most active users: they cover most items and most of the signal.
            pool = np.sort(np.lexsort((np.arange(data.n_users), -counts))[:p.max_pool_users])
        else:
            pool = np.arange(data.n_users)
        with Heartbeat(log, "userknn") as beat:
            beat.phase(f"{p.similarity} neighbours of {data.n_users} users among {len(pool)}")
            query = recency_history(data, p.recency_half_life, p.history_limit)
            target = binary[pool]
            if p.similarity == "bm25":
                from implicit.nearest_neighbours import bm25_weight

                # BM25 over items: rare items say more about taste than blockbusters.
                query = bm25_weight(query.T.tocsr(), K1=p.bm25_k1, B=p.bm25_b).T.tocsr()
                target = bm25_weight(target.T.tocsr(), K1=p.bm25_k1, B=p.bm25_b).T.tocsr()
            query, target_t = _unit_rows(query), _unit_rows(target).T.tocsr()
            position = np.full(data.n_users, -1, np.int64)
            position[pool] = np.arange(len(pool))
            k = min(p.neighbours, max(len(pool) - 1, 1))
            cols = np.full((data.n_users, k), -1, np.int64)
            vals = np.zeros((data.n_users, k), np.float32)
            block = max(1, 4_000_000 // max(len(pool), 1))
            for lo in range(0, data.n_users, block):
                hi = min(lo + block, data.n_users)
                sims = (query[lo:hi] @ target_t).toarray()
                own = position[lo:hi]
                inside = np.flatnonzero(own >= 0)
                sims[inside, own[inside]] = 0.0  # a user is not their own neighbour
                cols[lo:hi], vals[lo:hi] = top_per_row(sims, k)
            ok = cols >= 0
            rows = np.repeat(np.arange(data.n_users), k)[ok.ravel()]
            self.similarity = sp.csr_matrix((vals[ok], (rows, cols[ok])), shape=(data.n_users, len(pool)),
                                            dtype=np.float32)
            self.similarity.sort_indices()
            self.pool, self.pool_history = pool.astype(np.int64), binary[pool].tocsr()
            beat.phase("the item embedding")
            self.embedding = item_embedding_svd(binary, seed=self.seed)
        self.info.update(pool_users=int(len(pool)), fit_seconds_neighbours=round(time.perf_counter() - started, 1))

    def _parts(self) -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix]:
        if self.similarity is None or self.pool is None or self.pool_history is None:
            raise ModelError(f"{self.family}: model is not fitted")
        return self.similarity, self.pool, self.pool_history

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Neighbours' histories weighted by similarity; items no neighbour has seen score -inf."""
        sim, _, history = self._parts()
        product = (sim[np.asarray(user_rows, np.int64)] @ history).tocoo()
        block = np.full((len(user_rows), history.shape[1]), -np.inf, np.float32)
        block[product.row, product.col] = product.data
        return block

    def similar_users(self, user_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` most similar users (user rows, best first; -1 / -inf padding), never the user."""
        sim, pool, _ = self._parts()
        rows = sim[np.asarray(user_rows, np.int64)]
        dense = np.full(rows.shape, -np.inf, np.float32)
        coo = rows.tocoo()
        dense[coo.row, coo.col] = coo.data
        k = min(n, dense.shape[1])
        order = np.lexsort((np.tile(np.arange(dense.shape[1]), (len(dense), 1)), -dense), axis=1)[:, :k]
        scores = np.take_along_axis(dense, order, axis=1)
        ids, scores = pad_empty(pool[order], scores, ~np.isfinite(scores), n)
        return ids, scores

    def similar_items(self, item_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items by cosine of the SVD item vectors (the family learns no item x item matrix)."""
        if self.embedding is None:
            raise ModelError(f"{self.family}: model is not fitted")
        return cosine_neighbours(self.embedding, np.asarray(item_rows, np.int64), n)

    def item_embedding(self) -> np.ndarray | None:
        return self.embedding

    def _state(self) -> dict[str, np.ndarray]:
        sim, pool, history = self._parts()
        return {"sim_data": sim.data, "sim_indices": sim.indices, "sim_indptr": sim.indptr,
                "pool": pool, "hist_data": history.data, "hist_indices": history.indices,
                "hist_indptr": history.indptr, "hist_shape": np.asarray(history.shape, np.int64),
                "embedding": self.embedding if self.embedding is not None else np.zeros((0, 0), np.float32)}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        shape = tuple(int(x) for x in arrays["hist_shape"])
        self.pool = arrays["pool"]
        self.pool_history = sp.csr_matrix((arrays["hist_data"], arrays["hist_indices"], arrays["hist_indptr"]),
                                          shape=shape)
        n_users = len(arrays["sim_indptr"]) - 1
        self.similarity = sp.csr_matrix((arrays["sim_data"], arrays["sim_indices"], arrays["sim_indptr"]),
                                        shape=(n_users, len(self.pool)))
        self.embedding = arrays["embedding"]


__all__ = ["UserKNNModel", "top_per_row"]
