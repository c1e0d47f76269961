"""The ranker's first stage: label cutoffs, candidates from several families, and their features.

Two-stage ranking (README 'Two-stage ranking'): each user's candidates are the union of
the top-K of several *generator* families (seen items excluded); each candidate keeps
every generator's score and rank (and a flag where a generator did not propose it), and
gets item, user and user-item features computed from the training matrix only. The
learned ranker (:mod:`recjobs.models.ranker`) orders them.

Training labels come from a cutoff *inside* the data the ranker is fitted on
(:func:`label_cutoff`): generators and features see only what lies before it, labels are
what the user did after it, so nothing a feature was computed from postdates its label,
and the evaluation's holdout (never passed to ``fit``) is never read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recjobs.arrays import distinct
from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions, ordered_by_user_time_item
from recjobs.models.base import Recommender
from recjobs.models.neighbourhood import item_embedding_svd

DAY = 86_400
# Popularity windows before the user's own latest interaction, in days.
WINDOWS = (7, 30)
# The user's latest items that "similarity to the user's latest items" is measured against.
LATEST = 5
# Raw side-feature columns are features only when there are at most this many.
MAX_RAW_SIDE = 32


@dataclass(frozen=True)
class LabelSplit:
    """``inner``: the data before the label cutoff (same users and items); ``labels``: after it.

    ``labels`` is a users x items 0/1 matrix of the pairs after the cutoff that the user
    had not seen before it; ``cutoff`` per user (Unix seconds): no entry of ``inner`` is
    at or after it, every label is.
    """

    inner: Interactions
    labels: sp.csr_matrix
    cutoff: np.ndarray
    protocol: str
    # The labels' ratings (same pattern as ``labels``): the rating model's targets.
    ratings: sp.csr_matrix | None = None


def label_cutoff(data: Interactions, protocol: str, fraction: float, min_users: int) -> LabelSplit:
    """Split ``data``'s pairs by time into features (before) and labels (after).

    ``global_time``: one cutoff, the time leaving the latest ``fraction`` of pairs after
    it; labels for users seen before it. ``per_user``: each user's latest ``fraction`` of
    pairs (at least one, for users with two or more). ``auto``: ``global_time`` when at
    least ``min_users`` users get labels, else ``per_user`` (the split's own rule).
    """
    if data.pair_seconds is None:
        raise ValueError("the ranker needs per-pair times; rerun `recjobs split` for the date")
    m = data.matrix
    rows = np.repeat(np.arange(data.n_users, dtype=np.int64), np.diff(m.indptr))
    seconds = data.pair_seconds.astype(np.int64)
    is_label = np.zeros(data.nnz, bool)
    cutoff = np.full(data.n_users, np.iinfo(np.int64).max, np.int64)
    chosen = protocol
    if protocol in ("global_time", "auto") and data.nnz:
        position = int(np.floor(data.nnz * (1.0 - fraction)))
        t = int(np.partition(seconds, position)[position])
        before = seconds < t
        seen = np.zeros(data.n_users, bool)
        seen[rows[before]] = True
        after = ~before & seen[rows]
        users = distinct(rows[after])
        if protocol == "global_time" or len(users) >= min_users:
            is_label, chosen = after, "global_time"
            cutoff[:] = t
    if chosen != "global_time":
        chosen = "per_user"
        order = ordered_by_user_time_item(rows.astype(np.int32), seconds, m.indices)
        sizes = np.diff(m.indptr)
        ordered_rows = rows[order]
        from_end = np.cumsum(sizes)[ordered_rows] - 1 - np.arange(len(order))
        n_hold = np.maximum(1, np.floor(sizes * fraction)).astype(np.int64)
        n_hold[sizes < 2] = 0
        held = from_end < n_hold[ordered_rows]
        is_label[order[held]] = True
        # A user's cutoff is the time of their first label; ties in time with earlier pairs
        # are broken by item as the split breaks them, so "before" is by (time, item).
        first = np.full(data.n_users, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, rows[is_label], seconds[is_label])
        cutoff = first
    keep = ~is_label
    inner_matrix = sp.csr_matrix((m.data[keep], m.indices[keep], np.concatenate(
        [[0], np.cumsum(np.bincount(rows[keep], minlength=data.n_users))]).astype(np.int64)), shape=m.shape)
    inner_matrix.has_sorted_indices = True
    last_seen = np.full(data.n_items, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(last_seen, m.indices[keep], seconds[keep])
    inner = Interactions(data.user_ids, data.item_ids, inner_matrix, last_seen, seconds[keep], data.typed, data.excluded)
    labels = sp.csr_matrix((np.ones(int(is_label.sum()), np.float32), (rows[is_label], m.indices[is_label])),
                           shape=m.shape)
    ratings = sp.csr_matrix((m.data[is_label].astype(np.float32), (rows[is_label], m.indices[is_label])),
                            shape=m.shape)
    return LabelSplit(inner, labels, cutoff, chosen, ratings)


def given_split(before: Interactions, after: sp.csr_matrix) -> LabelSplit:
    """A label split whose cutoff the caller made: ``before`` the features' data, ``after`` its labels.

    ``after`` (shaped like ``before``) holds the pairs that came after the cutoff (the
    final model's: the split's holdout, after the training part). A pair the user had
    already seen before it is not a label, as in :func:`label_cutoff`. Each user's
    cutoff is one second past their latest pair in ``before`` (the labels' own times
    are not known here, only that they came after).
    """
    labels = after.tocsr().astype(np.float32, copy=True)
    labels.data[:] = 1.0
    seen = before.matrix.tocsr().astype(np.float32, copy=True)
    seen.data[:] = 1.0
    labels = (labels - labels.multiply(seen)).tocsr()
    labels.eliminate_zeros()
    labels.sort_indices()
    cutoff = np.full(before.n_users, np.iinfo(np.int64).max, np.int64)
    if before.pair_seconds is not None and before.nnz:
        rows = np.repeat(np.arange(before.n_users, dtype=np.int64), np.diff(before.matrix.indptr))
        last = np.full(before.n_users, np.iinfo(np.int64).min, np.int64)
        np.maximum.at(last, rows, before.pair_seconds.astype(np.int64))
        cutoff = np.where(np.diff(before.matrix.indptr) > 0, last + 1, cutoff)
    return LabelSplit(before, labels, cutoff, "given")


class FeatureBase:
    """What the features of any (user, candidate) pair are computed from: one training matrix.

    Built once per fit (and once more on the full data for serving); every statistic is
    computed from ``data`` alone, so a ranker trained on a label cutoff's ``inner`` part
    sees nothing after the cutoff.
    """

    def __init__(self, data: Interactions, features: SideFeatures | None, seed: int) -> None:
        m = data.matrix
        self.n_items = data.n_items
        rows = np.repeat(np.arange(data.n_users, dtype=np.int64), np.diff(m.indptr))
        seconds = (data.pair_seconds if data.pair_seconds is not None else np.zeros(data.nnz)).astype(np.int64)
        self.end = int(seconds.max()) if len(seconds) else 0
        self.origin = int(seconds.min()) if len(seconds) else 0
        self.item_count = np.bincount(m.indices, minlength=data.n_items).astype(np.float32)
        first = np.full(data.n_items, self.end, np.int64)
        np.minimum.at(first, m.indices, seconds)
        self.item_first = first
        last = np.full(data.n_items, self.origin, np.int64)
        np.maximum.at(last, m.indices, seconds)
        self.item_last = last
        self.user_count = np.diff(m.indptr).astype(np.float32)
        user_last = np.full(data.n_users, self.origin, np.int64)
        np.maximum.at(user_last, rows, seconds)
        self.user_last = user_last
        user_first = np.full(data.n_users, self.end, np.int64)
        np.minimum.at(user_first, rows, seconds)
        self.user_first = user_first
        ratings = m.data.astype(np.float64)
        mean = float(ratings.mean()) if len(ratings) else 0.0
        sums = np.bincount(m.indices, weights=ratings, minlength=data.n_items)
        self.item_rating = ((sums + 5 * mean) / (self.item_count + 5)).astype(np.float32)
        usums = np.bincount(rows, weights=ratings, minlength=data.n_users)
        self.user_rating = ((usums + 5 * mean) / (self.user_count + 5)).astype(np.float32)
        # (item, time) keys in order: counts of an item in any time window are two searches.
        span = max(self.end - self.origin + 1, 1)
        self._span = span
        self._keys = np.sort(m.indices.astype(np.int64) * span + (seconds - self.origin))
        # The user's latest items, newest first, for "similarity to the latest items".
        self.embedding = item_embedding_svd(m, dim=32, seed=seed)
        norms = np.linalg.norm(self.embedding, axis=1, keepdims=True)
        self.unit = self.embedding / np.where(norms > 0, norms, 1.0)
        self.history = m.copy()
        self.history.data[:] = 1.0
        self.latest = self._latest(data, rows, seconds)
        self.item_side = None if features is None or features.item is None else features.item.tocsr()
        self.user_side = None if features is None or features.user is None else features.user.tocsr()

    def _latest(self, data: Interactions, rows: np.ndarray, seconds: np.ndarray) -> sp.csr_matrix:
        """Users x items, 1 on each user's ``LATEST`` newest items (by time, then item)."""
        m = data.matrix
        if not data.nnz:
            return sp.csr_matrix(m.shape, dtype=np.float32)
        order = ordered_by_user_time_item(rows.astype(np.int32), seconds, m.indices)
        ends = m.indptr[1:][rows[order]]
        age = ends - 1 - np.arange(data.nnz)  # ordered position from the user's end
        keep = order[age < LATEST]
        return sp.csr_matrix((np.ones(len(keep), np.float32), (rows[keep], m.indices[keep])), shape=m.shape)

    def window_counts(self, items: np.ndarray, until: np.ndarray, days: tuple[float, ...]) -> list[np.ndarray]:
        """Interactions with each item in the ``days`` (each of them) before ``until`` (Unix seconds), inclusive."""
        hi = items * self._span + np.clip(until - self.origin, -1, self._span - 1)
        # Searching sorted needles walks the keys in order (cache-friendly, several times faster);
        # the windows share their upper end, so it is searched once.
        order = np.argsort(hi, kind="stable")
        upper = np.searchsorted(self._keys, hi[order], "right")
        out = []
        for d in days:
            lo = items * self._span + np.clip(until - self.origin - int(d * DAY), -1, self._span - 1)
            counts = np.empty(len(items), np.float32)
            counts[order] = upper - np.searchsorted(self._keys, lo[order], "right")
            out.append(counts)
        return out

    def side_names(self, item_names: np.ndarray, user_names: np.ndarray) -> list[str]:
        names = []
        if self.item_side is not None:
            names.append("side_user_item_cosine")
            if self.item_side.shape[1] <= MAX_RAW_SIDE:
                names += [f"item:{n}" for n in item_names]
        if self.user_side is not None and self.user_side.shape[1] <= MAX_RAW_SIDE:
            names += [f"user:{n}" for n in user_names]
        return names


@dataclass(frozen=True)
class Candidates:
    """One block of users' candidates: ``user`` (positions in the block's rows) and ``item`` per row.

    ``scores``/``ranks`` are candidates x generators: every generator's score of the pair
    (whether or not it proposed it) and its rank in that generator's top-K (K + 1 and
    ``missing`` where it did not propose it).
    """

    user: np.ndarray
    item: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    missing: np.ndarray
    gaps: np.ndarray


def generate(generators: list[Recommender], ks: list[int], rows: np.ndarray, exclude: sp.csr_matrix) -> Candidates:
    """The union of each generator's top-K for the users at ``rows``, seen items (``exclude``) left out.

    Each generator lists its top-K with its own fast ranking and scores the other
    generators' candidates pair by pair (``recommend_scorer``): no users x items block is
    ranked here.
    """
    rows = np.asarray(rows, np.int64)
    n_items = exclude.shape[1]
    ranked = [model.recommend_scorer(rows, k, exclude=exclude) for model, k in zip(generators, ks, strict=True)]
    lists = [(top, top_scores) for top, top_scores, _ in ranked]
    keyed = []
    for top, _ in lists:
        r, c = np.nonzero(top >= 0)
        keyed.append((r.astype(np.int64) * n_items + top[r, c], c))
    # Candidates in (user, item) order, as one sorted key each.
    union = distinct(np.concatenate([k for k, _ in keyed])) if keyed else np.zeros(0, np.int64)
    user, item = union // n_items, union % n_items
    g = len(generators)
    scores = np.empty((len(union), g), np.float32)
    ranks = np.empty((len(union), g), np.float32)
    gaps = np.empty((len(union), g), np.float32)
    for j, (k, (top, top_scores, scorer), (keys, position)) in enumerate(zip(ks, ranked, keyed, strict=True)):
        # No candidate is an excluded pair (every list left them out): the scorer's whole domain.
        raw = scorer(user, item) if len(union) else np.zeros(0, np.float32)
        # The generator's (user, item) keys come in list order: sorted once, each candidate's rank is a search.
        order = np.argsort(keys, kind="stable")
        at = np.minimum(np.searchsorted(keys[order], union), max(len(keys) - 1, 0))
        hit = keys[order][at] == union if len(keys) else np.zeros(len(union), bool)
        ranks[:, j] = np.where(hit, position[order][at] + 1 if len(keys) else 0, k + 1)
        best = np.where(top[:, 0] >= 0, top_scores[:, 0], np.nan) if top.shape[1] else np.full(len(rows), np.nan)
        finite = np.isfinite(raw)
        # An item a generator cannot reach (-inf) gets NaN: the trees' "missing" branch.
        scores[:, j] = np.where(finite, raw, np.nan)
        gaps[:, j] = np.where(finite, best[user] - raw, np.nan)
    missing = ranks > np.asarray(ks, np.float32)[None, :]
    return Candidates(user, item, scores, ranks, missing.astype(np.float32), gaps)


def feature_names(generators: list[str], base: FeatureBase, item_names: np.ndarray,
                  user_names: np.ndarray) -> list[str]:
    """Column names of :func:`candidate_features`' matrix, in order."""
    names = []
    for g in generators:
        names += [f"{g}_score", f"{g}_rank", f"{g}_missing", f"{g}_gap", f"{g}_zscore"]
    names += ["n_generators", "item_log_count", "item_age_days", "item_idle_days", "item_rating"]
    names += [f"item_count_{d}d_before_user" for d in WINDOWS] + ["item_trend"]
    names += [f"item_count_{d}d_before_end" for d in WINDOWS]
    names += ["user_log_count", "user_idle_days", "user_span_days", "user_rating", "item_minus_user_rating",
              "latest_mean_cosine", "latest_max_cosine"]
    # LightGBM refuses JSON's special characters in names ("genre=Sci-Fi", quotes...).
    return names + [re.sub(r"[^0-9A-Za-z_]+", "_", n) for n in base.side_names(item_names, user_names)]


def candidate_features(base: FeatureBase, cands: Candidates, rows: np.ndarray) -> np.ndarray:
    """The candidates' feature matrix (candidates x :func:`feature_names`), float32, NaN for missing."""
    users = np.asarray(rows, np.int64)[cands.user]
    items = cands.item.astype(np.int64)
    until = base.user_last[users]
    cols: list[np.ndarray] = []
    n_users = len(rows)
    for j in range(cands.scores.shape[1]):
        cols += [cands.scores[:, j], cands.ranks[:, j], cands.missing[:, j], cands.gaps[:, j],
                 _per_user_zscore(cands.scores[:, j], cands.user, n_users)]
    cols.append((1.0 - cands.missing).sum(axis=1))
    cols += [np.log1p(base.item_count[items]), (base.end - base.item_first[items]) / DAY,
             (base.end - base.item_last[items]) / DAY, base.item_rating[items]]
    windows = base.window_counts(items, until, WINDOWS)
    cols += windows + [(windows[0] + 1.0) / (windows[-1] + 1.0)]
    # Popularity just before the data's end: what is trending when the lists are served (per item).
    every = np.arange(base.n_items, dtype=np.int64)
    cols += [c[items] for c in base.window_counts(every, np.full(base.n_items, base.end, np.int64), WINDOWS)]
    cols += [np.log1p(base.user_count[users]), (base.end - base.user_last[users]) / DAY,
             (base.user_last[users] - base.user_first[users]) / DAY, base.user_rating[users],
             base.item_rating[items] - base.user_rating[users]]
    # Similarity to the user's latest items: cosine of the candidate's SVD vector with each.
    present = distinct(users)
    latest = base.latest[present]
    position = np.searchsorted(present, users)
    counts = np.maximum(np.diff(latest.indptr), 1)
    mean_vec = (latest @ base.unit) / counts[:, None]
    cols.append(np.einsum("ij,ij->i", mean_vec[position], base.unit[items]))
    best = np.full(len(items), np.nan, np.float32)
    per_row = np.diff(latest.indptr)
    entry_row = np.repeat(np.arange(latest.shape[0]), per_row)
    slot = np.arange(latest.nnz) - np.repeat(latest.indptr[:-1], per_row)
    slots = np.full((latest.shape[0], LATEST), -1, np.int64)
    slots[entry_row, slot] = latest.indices
    for s in range(LATEST):
        it = slots[position, s]
        ok = it >= 0
        sim = np.einsum("ij,ij->i", base.unit[np.maximum(it, 0)], base.unit[items])
        best = np.where(ok, np.fmax(best, sim), best)
    cols.append(best)
    if base.item_side is not None:
        profile = base.latest[present] @ base.item_side
        profile = np.asarray(profile.todense() if sp.issparse(profile) else profile)
        norms = np.linalg.norm(profile, axis=1)
        item_rows = base.item_side[items]
        dots = np.asarray(item_rows.multiply(sp.csr_matrix(profile[position])).sum(axis=1)).ravel()
        inorms = np.sqrt(np.asarray(item_rows.multiply(item_rows).sum(axis=1)).ravel())
        denom = norms[position] * inorms
        cols.append(np.where(denom > 0, dots / np.where(denom > 0, denom, 1.0), np.nan))
        if base.item_side.shape[1] <= MAX_RAW_SIDE:
            cols += list(np.asarray(item_rows.todense(), np.float32).T)
    if base.user_side is not None and base.user_side.shape[1] <= MAX_RAW_SIDE:
        cols += list(np.asarray(base.user_side[users].todense(), np.float32).T)
    return np.column_stack([np.asarray(c, np.float32) for c in cols]) if cols else np.zeros((len(items), 0))


def _per_user_zscore(values: np.ndarray, user: np.ndarray, n_users: int) -> np.ndarray:
    """``values`` standardised within each user's candidates (generators' scales differ by user); NaN stays NaN."""
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0).astype(np.float64)
    n = np.bincount(user, weights=ok, minlength=n_users)
    mean = np.bincount(user, weights=v, minlength=n_users) / np.maximum(n, 1)
    var = np.bincount(user, weights=v * v, minlength=n_users) / np.maximum(n, 1) - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    z = (v - mean[user]) / np.where(std[user] > 0, std[user], 1.0)
    return np.where(ok, z, np.nan)


__all__ = ["Candidates", "FeatureBase", "LabelSplit", "candidate_features", "feature_names", "generate", "given_split",
           "label_cutoff"]
