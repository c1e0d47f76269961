"""EASE (Steck 2019): a closed-form item x item model with one hyper-parameter.

``B = I - P / diag(P)`` with ``P = (X'X + l2 I)^-1``: the best linear reconstruction of
each item's column from the others, with a zero diagonal. A user's scores are their
(recency-weighted) history times ``B``. The inverse is dense, so the family models at
most ``max_items`` items (the most popular ones) and says so when it drops any.

Optionally (``transition_weight`` > 0) a sequential term is added to ``B``: how often
item ``j`` follows item ``i`` within ``transition_window`` steps in users' time-ordered
histories (row-normalised, each row scaled to the L1 norm of ``B``'s row, so the weight
is the share of "what comes next" against "what goes together"). With recency-weighted
histories this makes the latest items propose their usual successors.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions, ordered_by_user_time_item
from recjobs.models.neighbourhood import (
    Neighbourhood,
    NeighbourhoodRecommender,
    item_embedding_svd,
    recency_history,
)
from recjobs.progress import Heartbeat
from recjobs.settings import EASEParams

log = logging.getLogger(__name__)


def modelled_items(data: Interactions, max_items: int) -> np.ndarray | None:
    """Positions of the items EASE models: all, or the ``max_items`` most interacted with."""
    if data.n_items <= max_items:
        return None
    counts = np.bincount(data.matrix.indices, minlength=data.n_items)
    # Ties by item index, so the same data always keeps the same items.
    keep = np.sort(np.lexsort((np.arange(data.n_items), -counts))[:max_items])
    share = counts[keep].sum() / max(counts.sum(), 1)
    log.warning("ease: %d items exceed models.ease.max_items=%d; modelling the %d most popular (%.1f%% of "
                "interactions), the others are never recommended by ease. Modelling all of them would need "
                "about %.1f GB for the item x item matrix", data.n_items, max_items, max_items, 100 * share,
                4 * data.n_items**2 / 1e9)
    return keep


def gram_matrix(x: sp.csr_matrix, threads: int = 2) -> np.ndarray:
    """``x.T @ x`` as a dense float32 array, computed sparse in bands of rows on ``threads`` threads.

    A band at a time bounds the sparse intermediate (~32 MB of output per band); scipy
    releases the GIL in its sparse products, so bands run on both cores.
    """
    from concurrent.futures import ThreadPoolExecutor

    m = x.shape[1]
    gram = np.empty((m, m), np.float32)
    xt = x.T.tocsr()
    band = max(1, 8_000_000 // max(m, 1))

    def fill(lo: int) -> None:
        gram[lo:lo + band] = (xt[lo:lo + band] @ x).toarray()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fill, range(0, m, band)))
    return gram


def ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """``B`` from a dense float32 Gram matrix, in place (Cholesky inverse: one n x n buffer)."""
    gram[np.diag_indices_from(gram)] += l2
    factor, info = lapack.spotrf(gram, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        raise ValueError(f"ease: the regularised Gram matrix is not positive definite (LAPACK info {info}); "
                         "raise models.ease.l2")
    inverse, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise ValueError(f"ease: inverting the Gram matrix failed (LAPACK info {info})")
    # spotri fills one triangle; mirror it (the inverse is symmetric), a band at a time so
    # that no second n x n array is ever allocated.
    m = inverse.shape[0]
    band = 1024
    for lo in range(0, m, band):
        hi = min(lo + band, m)
        block = inverse[lo:hi, lo:hi]
        block[...] = np.tril(block) + np.tril(block, -1).T
        inverse[lo:hi, hi:] = inverse[hi:, lo:hi].T
    diag = np.diag(inverse).copy()
    inverse /= -diag[None, :]
    inverse[np.diag_indices_from(inverse)] = 0.0
    return inverse


# Cells of the transition counts converted at once (float64 quotient + float32 copy: ~48 MB).
_CELLS_AT_ONCE = 1 << 22


def transitions(data: Interactions, window: int, items: np.ndarray | None) -> np.ndarray:
    """Dense item x item shares of "j follows i within ``window`` steps" (weight 1/step), rows summing to 1."""
    if data.pair_seconds is None:
        raise ValueError("ease transitions need per-pair times; rerun `recjobs split` for the date")
    rows = np.repeat(np.arange(data.n_users, dtype=np.int32), np.diff(data.matrix.indptr))
    order = ordered_by_user_time_item(rows, data.pair_seconds, data.matrix.indices)
    users, seq = rows[order], data.matrix.indices[order].astype(np.int64)
    del rows, order
    m = data.n_items
    if items is not None:
        position = np.full(data.n_items, -1, np.int64)
        position[items] = np.arange(len(items))
        seq, m = position[seq], len(items)
    # Dense m x m (m <= max_items), one step at a time: all steps' (i, j) pairs at once
    # would be window x interactions triples, gigabytes at ML-20M size.
    counts = np.zeros((m, m), np.float32)
    cells = counts.reshape(-1)  # a view: adding into it adds into counts
    for step in range(1, window + 1):
        ok = (users[step:] == users[:-step]) & (seq[step:] >= 0) & (seq[:-step] >= 0)
        flat = seq[:-step][ok] * m + seq[step:][ok]
        del ok
        found = np.bincount(flat, minlength=m * m)
        del flat
        # The same float64 division and float32 rounding per cell as dividing the whole
        # count array at once, a band of cells at a time: the m x m float64 quotient and its
        # float32 copy (768 MB at 8,000 items) were most of EASE's peak memory.
        for lo in range(0, m * m, _CELLS_AT_ONCE):
            cells[lo:lo + _CELLS_AT_ONCE] += (found[lo:lo + _CELLS_AT_ONCE] / step).astype(np.float32)
        del found
    sums = counts.sum(axis=1)
    sums[sums == 0] = 1.0
    counts /= sums[:, None]
    return counts


def add_transitions(weights: np.ndarray, trans: np.ndarray, weight: float) -> None:
    """``weights += weight * trans`` with each transition row scaled to ``weights``' row L1 norm, in place."""
    scale = np.abs(weights).sum(axis=1) * weight
    trans *= scale[:, None]
    weights += trans


class EASEModel(NeighbourhoodRecommender):
    family = "ease"
    params_type = EASEParams

    def _fit(self, data: Interactions, features: SideFeatures | None) -> Neighbourhood:
        p: EASEParams = self.params
        items = modelled_items(data, p.max_items)
        binary = data.confidences()  # binary, or typed events' weights (settings.feedback)
        x = binary if items is None else binary[:, items].tocsr()
        m = x.shape[1]
        started = time.perf_counter()
        with Heartbeat(log, "ease") as beat:
            beat.phase(f"Gram matrix of {m} items from {x.nnz:,} interactions")
            gram = gram_matrix(x)
            beat.phase(f"inverting {m} x {m} (Gram took {time.perf_counter() - started:.1f}s)")
            with threadpool_limits(None, "blas"):
                weights = ease_weights(gram, p.l2)
            if p.transition_weight > 0:
                beat.phase("counting transitions")
                add_transitions(weights, transitions(data, p.transition_window, items), p.transition_weight)
            log.info("ease: fitted in %.1fs", time.perf_counter() - started)
            beat.phase("recency-weighted histories and the item embedding")
            history = recency_history(data, p.recency_half_life, p.history_limit)
            if items is not None:
                history = history[:, items].tocsr()
            embedding = item_embedding_svd(binary, seed=self.seed)
        self.info.update(modelled_items=int(m), fit_seconds_inverse=round(time.perf_counter() - started, 1))
        return Neighbourhood(weights, history, items, embedding)
