"""Ranked lists as long frames: every user's top-N, every item's neighbours, every item's
top users (segments), a chunk at a time.

What publishing stages and loads: (key, target, rank, score, model_version) rows, with
empty slots (-1 / -inf from the top-k kernels) left out, so a short list has fewer rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recjobs import columns as C
from recjobs.data.interactions import Interactions
from recjobs.faults import fault_point
from recjobs.models.base import Recommender
from recjobs.models.topk import top_k_of_rows
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
    ratings: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> Iterator[pd.DataFrame]:
    """Long (key, target, rank, score, version) frames, ``chunk`` keys at a time, with progress.

    ``span`` limits the ranking to those key positions (a shard); default all keys.
    ``order`` puts the span's positions in the order to rank them in (the ranker's
    :meth:`~recjobs.models.base.Recommender.ranking_order`); default key order.
    ``ratings`` (key rows, target columns -> predicted ratings) adds a ``predicted_rating``
    column for the listed pairs.
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
        key_rows = np.repeat(rows, valid.sum(axis=1))
        frame = pd.DataFrame({
            columns[0]: keys[key_rows],
            columns[1]: targets[top[valid]],
            C.RANK: ranks[valid],
            C.SCORE: scores[valid].astype(np.float64),
            C.MODEL_VERSION: version,
        })
        if ratings is not None:
            frame[C.PREDICTED_RATING] = ratings(key_rows, top[valid]).astype(np.float64)
        yield frame
        fault_point("publish.mid_shard")  # tests: a worker lost part-way through a shard
        done = min(lo + chunk, total)
        progress.update(done, final=lo == 0 or done == total)


def user_frames(model: Recommender, seen: Interactions, n: int, chunk: int,
                 span: range | None = None, post: PostProcess | None = None,
                 rater: Recommender | None = None) -> Iterator[pd.DataFrame]:
    # ``post``: business rules and re-ranking (recjobs.ranking.rerank); None ranks as the model does.
    # Seen items, and the pairs of negative events (settings.feedback), are never listed.
    # ``rater``: the trained model behind ``model`` (a ranking view); where it predicts
    # ratings, each listed pair gets its predicted_rating.
    exclude = seen.exclusions() if post is None else None
    rank = ((lambda rows: post.recommend(rows, n)) if post is not None
            else (lambda rows: model.recommend(rows, n, exclude=exclude)))
    ratings = rater.predict_ratings if rater is not None and rater.predicts_ratings() else None
    return ranked_frames(model.user_ids, model.item_ids, rank,
                          (C.USER, C.ITEM), chunk, model.info.get("model_version", ""), span, model.ranking_order,
                          ratings)


def item_frames(model: Recommender, n: int, chunk: int, span: range | None = None,
                 post: PostProcess | None = None) -> Iterator[pd.DataFrame]:
    # ``post``: the item rules apply to neighbour lists too (recjobs.ranking.rerank).
    rank = (lambda rows: post.similar_items(rows, n)) if post is not None else (
        lambda rows: model.similar_items(rows, n))
    return ranked_frames(model.item_ids, model.item_ids, rank,
                          (C.ITEM, C.SIMILAR_ITEM), chunk, model.info.get("model_version", ""), span)


_SEGMENT_CELLS = 1 << 24  # items x users scored at once for segments (~200 MB of scores and indices)


def segment_frames(model: Recommender, exclude: sp.csr_matrix, items: np.ndarray, m: int, chunk: int,
                   span: range | None = None) -> Iterator[pd.DataFrame]:
    """The ``m`` best users of each of ``items`` (item indices) among the users in ``span``, by ``model``'s scores.

    Users are scored ``chunk`` at a time (one dense block each, as for their lists), and a
    running top-``m`` per item keeps memory at items x (m + chunk). Pairs in ``exclude``
    (seen items, negative events, per-user rules) and scores that are not finite are never
    listed; ties go to the lower user index. A shard's users give a partial list per item,
    which :func:`merge_segments` combines with the other shards' into the same list as one
    pass over every user would give.
    """
    span = span if span is not None else range(len(model.user_ids))
    # A block is items x (m + chunk) scores and user indices: bound it, not the chunk alone.
    chunk = max(1, min(chunk, _SEGMENT_CELLS // max(len(items), 1)))
    best_users = np.full((len(items), m), -1, np.int64)
    best_scores = np.full((len(items), m), -np.inf, np.float32)
    progress = RateProgress(log, "scored users for item segments", total=len(span), unit="user")
    for lo in range(span.start, span.stop, chunk):
        rows = np.arange(lo, min(lo + chunk, span.stop))
        block = np.array(model.score(rows)[:, items].T, dtype=np.float32)  # items x users
        block[~np.isfinite(block)] = -np.inf
        seen = exclude[rows][:, items].tocoo()
        block[seen.col, seen.row] = -np.inf
        # This chunk's users come after every user kept so far: the lower index wins a tie.
        values = np.hstack([best_scores, block])
        columns = np.hstack([best_users, np.broadcast_to(rows, block.shape)])
        best_users, best_scores = top_k_of_rows(values, m, columns)
        done = rows[-1] + 1 - span.start
        progress.update(done, final=lo == span.start or done == len(span))
    valid = best_users >= 0
    ranks = np.broadcast_to(np.arange(1, m + 1), best_users.shape)
    yield pd.DataFrame({
        C.ITEM: np.repeat(model.item_ids[items], valid.sum(axis=1)),
        C.USER: model.user_ids[best_users[valid]],
        C.RANK: ranks[valid],
        C.SCORE: best_scores[valid].astype(np.float64),
        C.MODEL_VERSION: model.info.get("model_version", ""),
    })


def merge_segments(shards: list[pa.Table], m: int) -> pa.Table:
    """Each item's ``m`` best users over the shards' partial lists (:func:`segment_frames`), ranked 1..m.

    Ties go to the lower user id (ids are coded in id order, so this is the lower user
    index, as within a shard).
    """
    if not shards:
        raise ValueError("no staged segment shards to merge")
    table = pa.concat_tables(shards).combine_chunks()
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, sort_keys=[(C.ITEM, "ascending"), (C.SCORE, "descending"),
                                              (C.USER, "ascending")])
    table = table.take(order)
    item = table.column(C.ITEM).combine_chunks()
    starts = np.flatnonzero(np.append(True, ~np.asarray(pc.equal(item.slice(1), item.slice(0, len(item) - 1)),
                                                            dtype=bool)))
    position = np.arange(table.num_rows) - np.repeat(starts, np.diff(np.append(starts, table.num_rows)))
    keep = position < m
    table = table.filter(pa.array(keep))
    rank = pa.array((position[keep] + 1).astype(np.int32))
    return table.set_column(table.schema.get_field_index(C.RANK), table.schema.field(C.RANK), rank)


__all__ = ["item_frames", "merge_segments", "ranked_frames", "segment_frames", "user_frames"]
