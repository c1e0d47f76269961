"""Vector families: user and item vectors and an item bias; a score is ``u . v_i + b_i``."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel

from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions
from recjobs.errors import ModelError
from recjobs.models.base import Peers, Recommender
from recjobs.models.topk import cosine_neighbours, top_k

# Pairs scored at a time by score_pairs (each gathers a user and an item vector).
PAIRS_AT_ONCE = 1 << 20


@dataclass(frozen=True)
class Vectors:
    """What a vector family learns; ``user_vectors`` and ``item_vectors`` share a width."""

    user_vectors: np.ndarray
    item_vectors: np.ndarray
    item_bias: np.ndarray


class VectorRecommender(Recommender):
    """A family that learns vectors: ``_fit`` returns :class:`Vectors`."""

    kind = "vectors"

    def __init__(self, params: BaseModel | None = None, seed: int = 42) -> None:
        super().__init__(params, seed)
        self.vectors: Vectors | None = None
        self._augmented: tuple[Vectors, np.ndarray] | None = None

    @abstractmethod
    def _fit(self, data: Interactions, features: SideFeatures | None) -> Vectors:
        """Learn vectors for ``data``'s users and items."""

    def _learn(self, data: Interactions, features: SideFeatures | None, peers: Peers) -> None:
        vectors = self._fit(data, features)
        u, v, b = (np.ascontiguousarray(x, dtype=np.float32)
                   for x in (vectors.user_vectors, vectors.item_vectors, vectors.item_bias))
        if u.shape != (data.n_users, v.shape[1]) or v.shape[0] != data.n_items or b.shape != (data.n_items,):
            raise ModelError(f"{self.family}: vectors of the wrong shape {u.shape} {v.shape} {b.shape}")
        self.vectors = Vectors(u, v, b)

    def _vec(self) -> Vectors:
        if self.vectors is None:
            raise ModelError(f"{self.family}: model is not fitted")
        return self.vectors

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        vec = self._vec()
        block = vec.user_vectors[user_rows] @ vec.item_vectors.T
        block += vec.item_bias
        return block

    def score_pairs(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """``user_vectors[u] . item_vectors[i] + item_bias[i]`` per pair, without a dense block."""
        if type(self).score is not VectorRecommender.score:
            return super().score_pairs(user_rows, item_rows)  # a subclass scores its own way
        vec = self._vec()
        user_rows, item_rows = np.asarray(user_rows, np.int64), np.asarray(item_rows, np.int64)
        out = np.empty(len(user_rows), np.float32)
        for lo in range(0, len(user_rows), PAIRS_AT_ONCE):
            u, i = user_rows[lo:lo + PAIRS_AT_ONCE], item_rows[lo:lo + PAIRS_AT_ONCE]
            out[lo:lo + len(u)] = np.einsum("ij,ij->i", vec.user_vectors[u], vec.item_vectors[i]) + vec.item_bias[i]
        return out

    def recommend(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        vec = self._vec()
        if self._augmented is None or self._augmented[0] is not vec:
            # The item bias rides along as one more factor against a constant 1 in the
            # query, so implicit's top-k computes exactly U.V + b.
            items = np.hstack([vec.item_vectors, vec.item_bias[:, None]])
            self._augmented = (vec, np.ascontiguousarray(items, dtype=np.float32))
        users = vec.user_vectors[user_rows]
        query = np.hstack([users, np.ones((len(users), 1), np.float32)])
        filt = exclude[user_rows] if exclude is not None else None
        return top_k(self._augmented[1], query, n, filt)

    def similar_items(self, item_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` neighbours by cosine similarity of item vectors, the item itself excluded."""
        vec = self._vec()
        return cosine_neighbours(vec.item_vectors, item_rows, n)

    def has_similar_items(self) -> bool:
        return bool(np.any(self._vec().item_vectors))

    def item_embedding(self) -> np.ndarray | None:
        vec = self._vec()
        return vec.item_vectors if np.any(vec.item_vectors) else None

    def _state(self) -> dict[str, np.ndarray]:
        vec = self._vec()
        return {"user_vectors": vec.user_vectors, "item_vectors": vec.item_vectors, "item_bias": vec.item_bias}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.vectors = Vectors(arrays["user_vectors"], arrays["item_vectors"], arrays["item_bias"])


__all__ = ["VectorRecommender", "Vectors"]
