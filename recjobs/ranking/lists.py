"""Ranked lists as long frames: every user's top-N, every item's neighbours, a chunk at a time.

What publishing stages and loads: (key, target, rank, score, model_version) rows, with
empty slots (-1 / -inf from the top-k kernels) left out, so a short list has fewer rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from recjobs import columns as C
from recjobs.data.interactions import Interactions
from recjobs.faults import fault_point
from recjobs.models.base import Recommender
from recjobs.progress import RateProgress
from recjobs.ranking.rerank import PostProcess

log = logging.getLogger(__name__)


def ranked_frames(
    keys: np.ndarray,
    targets: np.ndarray,
    rank: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    columns: tuple[str, str],
    chunk: int,
    version: str,
    span: range | None = None,
    order: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[pd.DataFrame]:
    """Long (key, target, rank, score, version) frames, ``chunk`` keys at a time, with progress.

    ``span`` limits the ranking to those key positions (a shard); default all keys.
    ``order`` puts the span's positions in the order to rank them in (the ranker's
    :meth:`~recjobs.models.base.Recommender.ranking_order`); default key order.
    """
    span = span if span is not None else range(len(keys))
    total = len(span)
    ordered = order(np.arange(span.start, span.stop)) if order is not None else np.arange(span.start, span.stop)
    progress = RateProgress(log, f"ranked {columns[0]}", total=total, unit=columns[0])
    for lo in range(0, total, chunk):
        rows = ordered[lo:lo + chunk]
        top, scores = rank(rows)
        valid = top >= 0
        ranks = np.broadcast_to(np.arange(1, top.shape[1] + 1), top.shape)
        yield pd.DataFrame({
            columns[0]: np.repeat(keys[rows], valid.sum(axis=1)),
            columns[1]: targets[top[valid]],
            C.RANK: ranks[valid],
            C.SCORE: scores[valid].astype(np.float64),
            C.MODEL_VERSION: version,
        })
        fault_point("publish.mid_shard")  # tests: a worker lost part-way through a shard
        done = min(lo + chunk, total)
        progress.update(done, final=lo == 0 or done == total)


def user_frames(model: Recommender, seen: Interactions, n: int, chunk: int,
                 span: range | None = None, post: PostProcess | None = None) -> Iterator[pd.DataFrame]:
    # ``post``: business rules and re-ranking (recjobs.ranking.rerank); None ranks as the model does.
    # Seen items, and the pairs of negative events (settings.feedback), are never listed.
    exclude = seen.exclusions() if post is None else None
    rank = ((lambda rows: post.recommend(rows, n)) if post is not None
            else (lambda rows: model.recommend(rows, n, exclude=exclude)))
    return ranked_frames(model.user_ids, model.item_ids, rank,
                          (C.USER, C.ITEM), chunk, model.info.get("model_version", ""), span, model.ranking_order)


def item_frames(model: Recommender, n: int, chunk: int, span: range | None = None,
                 post: PostProcess | None = None) -> Iterator[pd.DataFrame]:
    # ``post``: the item rules apply to neighbour lists too (recjobs.ranking.rerank).
    rank = (lambda rows: post.similar_items(rows, n)) if post is not None else (
        lambda rows: model.similar_items(rows, n))
    return ranked_frames(model.item_ids, model.item_ids, rank,
                          (C.ITEM, C.SIMILAR_ITEM), chunk, model.info.get("model_version", ""), span)


__all__ = ["item_frames", "ranked_frames", "user_frames"]
