"""Post-processing between scoring and publishing: rules, then re-ranking, the same everywhere.

:func:`build_postprocess` assembles, for one model and one date, the stage that turns the
model's ranking into the published one; the sharded publish (``rank_shard``) and the
gate's evaluation (``evaluate_candidate``) both call it, so the gate judges the lists as
they are published. With neutral settings it returns None and callers rank as before.

For each chunk of users (:meth:`PostProcess.recommend`):

1. the model returns its top ``n x rerank.depth`` candidates, never the user's seen
   items nor their ``rules.user_exclusions``;
2. items of ``rules.exclude_items`` (or outside ``rules.allow_items``) are removed;
3. a greedy pass picks the list from the remaining candidates, one slot at a time, for
   all users of the chunk at once (numpy over users x candidates). Each slot takes the
   candidate with the best

       mmr_lambda * (relevance + freshness) - (1 - mmr_lambda) * max similarity to the items already picked

   among those that would not put any of their categories over ``category_cap``.
   Relevance is the model's score scaled to 0..1 within the user's candidates; freshness
   is ``freshness_boost * (1 - age / freshness_days)`` for items first seen within
   ``freshness_days`` of the date. Ties go to the model's order.
4. a user whose list is still shorter than ``n`` while the model had more candidates is
   ranked again 4x deeper, repeatedly, up to ``n x rerank.max_depth`` candidates. A list
   stays short when those cannot fill it: too few unseen, allowed items, or too few
   categories under the cap (with 20 genres, a cap of 2 fills at most ~40 slots); those
   users get fewer rows.

Published scores stay the model's scores; ``rank`` is the order after re-ranking.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recjobs.data.features import SideFeatures, load_side_features
from recjobs.data.ids import same_ids
from recjobs.data.interactions import Interactions
from recjobs.data.lake import Lake
from recjobs.errors import ModelError
from recjobs.models.base import Recommender
from recjobs.ranking.rules import Rules, drop_blocked, load_rules, rules_active
from recjobs.runs import cutoff_of
from recjobs.settings import RerankSettings, Settings

log = logging.getLogger(__name__)

# Users per block of the greedy pass: the block's candidate similarity matrices (users x
# depth x depth float32) stay around this many bytes.
_BLOCK_BYTES = 64 << 20
# Item features are densified for MMR only up to this many items x features values.
_MAX_DENSE_FEATURES = 50_000_000
# How much deeper a user whose list came out short is ranked again.
_DEEPEN = 4


@dataclass(frozen=True)
class ItemSignals:
    """Per-item inputs of the greedy pass, aligned to the model's items (None: not used).

    ``vectors``: unit rows for MMR's cosine similarity; ``categories``: items x words
    bitsets (uint64) of each item's categories, with ``members`` the same as a boolean
    items x categories matrix; ``freshness``: the boost each item gets.
    """

    vectors: np.ndarray | None = None
    categories: np.ndarray | None = None
    members: np.ndarray | None = None
    freshness: np.ndarray | None = None


def _pack(flags: np.ndarray) -> np.ndarray:
    """Boolean rows (r x g) as bitsets (r x ceil(g/64) uint64)."""
    words = max(1, -(-flags.shape[1] // 64))
    padded = np.zeros((flags.shape[0], words * 64), bool)
    padded[:, : flags.shape[1]] = flags
    return np.packbits(padded, axis=1, bitorder="little").view("<u8")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def first_seen(data: Interactions) -> np.ndarray:
    """Per item, the earliest of its pairs' latest interaction times (Unix seconds; int64 min if none).

    The pair times are what the date's matrix keeps (one per user and item, the latest),
    so this is the first time the item was seen within the training window, and can
    be later than its very first event when every user who had it came back to it.
    """
    if data.pair_seconds is None:
        raise ValueError("freshness needs per-pair times; this matrix was saved without them "
                         "(rerun `recjobs split` for the date)")
    out = np.full(data.n_items, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(out, data.matrix.indices, data.pair_seconds)
    out[out == np.iinfo(np.int64).max] = np.iinfo(np.int64).min
    return out


def item_signals(
    cfg: RerankSettings, model: Recommender, data: Interactions, features: SideFeatures | None, day: dt.date,
) -> ItemSignals:
    """What the greedy pass needs per item, for the enabled re-rankings only."""
    vectors = categories = members = freshness = None
    item_feats = features.item if features is not None else None
    names = features.item_names if features is not None else np.asarray([], dtype=object)
    if cfg.mmr_lambda < 1.0:
        use_features = cfg.mmr_space == "features" or (cfg.mmr_space == "auto" and item_feats is not None)
        if use_features and item_feats is None:
            raise ValueError("rerank.mmr_space = 'features' but no item features were ingested")
        if use_features and item_feats.shape[0] * item_feats.shape[1] > _MAX_DENSE_FEATURES:
            log.warning("rerank: %d item features are too many to densify for MMR; using the model's item "
                        "vectors", item_feats.shape[1])
            use_features = False
        if use_features:
            vectors = _unit_rows(item_feats.toarray())
        else:
            emb = model.item_embedding()
            if emb is not None:
                vectors = _unit_rows(emb)
        if vectors is None:
            # Popularity has no item vectors: without item features there is nothing to
            # measure similarity by; the family is still ranked (and judged) without MMR.
            log.warning("rerank.mmr_lambda %.2f: %s has no item vectors and no item features were ingested; "
                        "its lists are not diversified", cfg.mmr_lambda, model.family)
        else:
            log.info("rerank: MMR (lambda %.2f) over %s (%d dims)", cfg.mmr_lambda,
                     "item features" if use_features else "item vectors", vectors.shape[1])
    if cfg.category_cap is not None:
        cats = np.asarray([str(n).startswith(cfg.category_prefix) for n in names], bool)
        if item_feats is None or not cats.any():
            log.warning("rerank.category_cap: no item feature starts with %r; the cap does nothing",
                        cfg.category_prefix)
            members = np.zeros((data.n_items, 1), bool)
        else:
            members = (item_feats[:, np.flatnonzero(cats)] != 0).toarray()
        categories = _pack(members)
        log.info("rerank: at most %d item(s) per category over %d categories", cfg.category_cap, members.shape[1])
    if cfg.freshness_boost > 0.0:
        seen = first_seen(data)
        # An item with no interaction yet (a cold item scored from its features) is as new as can be.
        age_days = np.where(seen == np.iinfo(np.int64).min, 0.0, (cutoff_of(day).timestamp() - seen) / 86400.0)
        freshness = (cfg.freshness_boost * np.clip(1.0 - age_days / cfg.freshness_days, 0.0, 1.0)).astype(np.float32)
        log.info("rerank: freshness boost for %d item(s) first seen in the last %g days",
                 int((freshness > 0).sum()), cfg.freshness_days)
    return ItemSignals(vectors, categories, members, freshness)


def greedy_rerank(
    top: np.ndarray, scores: np.ndarray, n: int, signals: ItemSignals, mmr_lambda: float = 1.0,
    category_cap: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` of each row's candidates (``top``, best first, -1 padded) greedily; see the module docstring.

    Returns (items, model scores), users x ``n``, -1 / -inf padded. Each user's result
    depends on that user's candidates only, never on the other users of the chunk.
    """
    users, depth = top.shape
    out_top = np.full((users, n), -1, np.int64)
    out_scores = np.full((users, n), -np.inf, np.float32)
    if users == 0 or depth == 0:
        return out_top, out_scores
    mmr = signals.vectors is not None and mmr_lambda < 1.0
    width = depth * max(depth, signals.vectors.shape[1] if mmr else 1)
    block = max(1, _BLOCK_BYTES // (4 * width))
    for lo in range(0, users, block):
        part = slice(lo, min(lo + block, users))
        out_top[part], out_scores[part] = _greedy_block(top[part], scores[part], n, signals, mmr_lambda,
                                                        category_cap, mmr)
    return out_top, out_scores


def _greedy_block(
    top: np.ndarray, scores: np.ndarray, n: int, signals: ItemSignals, mmr_lambda: float,
    category_cap: int | None, mmr: bool,
) -> tuple[np.ndarray, np.ndarray]:
    users, depth = top.shape
    valid = top >= 0
    item = np.where(valid, top, 0)
    scores = scores.astype(np.float32)
    # Relevance: the model's scores scaled to 0..1 within each user's candidates, so that
    # the trade-offs below mean the same for every model family.
    finite = np.where(valid, scores, np.nan)
    with np.errstate(invalid="ignore"), _quiet_nan():
        low, high = np.nanmin(finite, axis=1, keepdims=True), np.nanmax(finite, axis=1, keepdims=True)
    span = high - low
    relevance = np.where(span > 0, (scores - low) / np.where(span > 0, span, 1.0), 1.0)
    if signals.freshness is not None:
        relevance = relevance + signals.freshness[item]
    lam = mmr_lambda if mmr else 1.0
    base = np.where(valid, lam * relevance, -np.inf).astype(np.float32)
    if mmr:
        pool = signals.vectors[item]  # users x depth x d
        similarity = np.empty((users, depth, depth), np.float32)
        # One small product per user on one BLAS thread: measured 2.4x faster than a stacked
        # matmul, which threads badly on a shared 2-core worker; and a user's result then
        # cannot depend on which other users share the chunk.
        with threadpool_limits(1, "blas"):
            for u in range(users):
                np.matmul(pool[u], pool[u].T, out=similarity[u])
        max_sim = np.zeros((users, depth), np.float32)
    capped = category_cap is not None and signals.categories is not None
    if capped:
        cand_bits = signals.categories[item]  # users x depth x words
        counts = np.zeros((users, signals.members.shape[1]), np.int32)
        full = np.zeros((users, cand_bits.shape[2]), np.uint64)
    taken = ~valid
    rows = np.arange(users)
    out_top = np.full((users, n), -1, np.int64)
    out_scores = np.full((users, n), -np.inf, np.float32)
    # `taken` also marks candidates out of play: padding, and those of a full category.
    for slot in range(min(n, depth)):
        objective = np.where(taken, -np.inf, base - (1.0 - lam) * max_sim if mmr else base)
        pick = np.argmax(objective, axis=1)
        ok = objective[rows, pick] > -np.inf
        if not ok.any():
            break
        r, p = rows[ok], pick[ok]
        out_top[r, slot] = top[r, p]
        out_scores[r, slot] = scores[r, p]
        taken[r, p] = True
        if mmr:
            # The picked item's row (the matrix is symmetric): contiguous, unlike its column.
            max_sim[r] = np.maximum(max_sim[r], similarity[r, p])
        if capped:
            counts[r] += signals.members[top[r, p]]
            now_full = _pack(counts[r] >= category_cap)
            # Only users whose picked item filled a category need their candidates re-checked.
            changed = (now_full != full[r]).any(axis=1)
            if changed.any():
                rc = r[changed]
                full[rc] = now_full[changed]
                taken[rc] |= ((cand_bits[rc] & full[rc][:, None, :]) != 0).any(axis=2)
    return out_top, out_scores


class _quiet_nan:  # noqa: N801 - a tiny context manager
    # nanmin/nanmax warn on rows without candidates; their NaN is handled by the caller.
    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


@dataclass
class PostProcess:
    """The post-processing stage for one model and date; see the module docstring."""

    model: Recommender
    exclude: sp.csr_matrix
    rules: Rules
    signals: ItemSignals
    cfg: RerankSettings
    rerank: bool

    def _ranked(self, rows: np.ndarray, n: int,
                candidates: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
                rerank: bool) -> tuple[np.ndarray, np.ndarray]:
        n_items = len(self.model.item_ids)
        top = np.full((len(rows), n), -1, np.int64)
        scores = np.full((len(rows), n), -np.inf, np.float32)
        todo = np.arange(len(rows))
        depth, deepest = min(n * self.cfg.depth, n_items), min(n * self.cfg.max_depth, n_items)
        while len(todo):
            cand, cand_scores = candidates(rows[todo], depth)
            cand, cand_scores = fit_width(cand, cand_scores, depth)
            # The model ran out of candidates for this user: deeper cannot help.
            exhausted = cand[:, -1] < 0 if depth else np.ones(len(todo), bool)
            cand, cand_scores = drop_blocked(cand, cand_scores, self.rules.blocked)
            if rerank:
                got, got_scores = greedy_rerank(cand, cand_scores, n, self.signals, self.cfg.mmr_lambda,
                                                self.cfg.category_cap)
            else:
                got, got_scores = fit_width(cand[:, :n], cand_scores[:, :n], n)
            top[todo], scores[todo] = got, got_scores
            short = ((got >= 0).sum(axis=1) < n) & ~exhausted
            if depth >= deepest or not short.any():
                break
            todo, depth = todo[short], min(depth * _DEEPEN, deepest)
        return top, scores

    def recommend(self, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Published top-``n`` items and model scores of the users at ``rows`` (-1 / -inf padded)."""
        return self._ranked(rows, n, lambda r, d: self.model.recommend(r, d, exclude=self.exclude), self.rerank)

    def similar_items(self, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Published top-``n`` neighbours of the items at ``rows``: the item rules apply, no re-ranking."""
        if self.rules.blocked is None:
            return self.model.similar_items(rows, n)
        return self._ranked(rows, n, self.model.similar_items, False)


def fit_width(top: np.ndarray, scores: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (or cut) to exactly ``width`` columns."""
    if top.shape[1] >= width:
        return top[:, :width], scores[:, :width]
    pad = width - top.shape[1]
    return (np.pad(top, ((0, 0), (0, pad)), constant_values=-1),
            np.pad(scores.astype(np.float32), ((0, 0), (0, pad)), constant_values=-np.inf))


def postprocessing_active(settings: Settings) -> bool:
    """Whether any rule or re-ranking is configured (if not, lists are published as the model ranks them)."""
    return rules_active(settings) or settings.rerank.active


def build_postprocess(
    settings: Settings, day: dt.date, model: Recommender, seen: Interactions,
    features: SideFeatures | None = None,
) -> PostProcess | None:
    """The post-processing stage of ``model`` on ``day``, or None with neutral settings.

    ``seen`` is the matrix whose items each user must not get (the full matrix when
    publishing, the training part when evaluating); it must share the model's ids.
    ``features`` are loaded from the lake when the re-ranking needs them and none are given.
    """
    if not postprocessing_active(settings):
        return None
    if not (same_ids(seen.user_ids, model.user_ids) and same_ids(seen.item_ids, model.item_ids)):
        raise ModelError("post-processing: the model and the seen matrix disagree on ids")
    rules = load_rules(settings, day, seen.user_ids, seen.item_ids)
    cfg = settings.rerank
    signals = ItemSignals()
    if cfg.active:
        if features is None and (cfg.category_cap is not None or cfg.mmr_lambda < 1.0):
            features = load_side_features(Lake.of(settings), seen)
        signals = item_signals(cfg, model, seen, features, day)
    return PostProcess(model, rules.exclude(seen.exclusions()), rules, signals, cfg, cfg.active)
