"""Cold start: new users, new items and users with very few interactions.

Three cases, each a setting of ``coldstart`` (see README "Cold start"):

* **New users** (no interactions) are served the popular items. With
  ``segment_prefix`` set (e.g. ``"occupation="``) the popular items are also
  published per segment of users (``segment_popular_items``) with each user's segment
  (``user_segments``), so an app serves a new user with known features their
  segment's list; ``sql/coldstart.sql`` is the fallback query.
* **New items** with side features but no interactions: a family that can represent
  an item from its features alone (LightFM, TFRS with features) implements
  :class:`ColdItemProjection`. :func:`add_cold_items` appends those items to the final
  model (after the training matrix's items), so they are ranked into users' lists and
  ``similar_items`` on their first night. :func:`align_seen` pads the seen-items matrix
  with their (empty) columns for ranking.
* **Users with very few interactions** (fewer than ``min_interactions``): an
  SGD-trained user vector (LightFM, TFRS: ``thin_user_families``) learns little from
  a few interactions, so :func:`for_ranking` scores them instead by the summed cosine
  similarity of the champion's item vectors to their few items (an item-item
  neighbourhood; measured better on MovieLens 100k, see README "Cold start").
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recjobs import columns as C
from recjobs.data.features import SideFeatures
from recjobs.data.ids import positions, same_ids, sort_key
from recjobs.data.interactions import Interactions
from recjobs.data.lake import Lake
from recjobs.errors import ModelError
from recjobs.models.base import Recommender
from recjobs.models.topk import top_k
from recjobs.models.vectors import VectorRecommender, Vectors
from recjobs.ranking.rules import blocked_items
from recjobs.settings import ColdStartSettings, Settings

log = logging.getLogger(__name__)


# -- new items -------------------------------------------------------------------------
@runtime_checkable
class ColdItemProjection(Protocol):
    """What a family offers to score items it has not seen: item vectors from features alone.

    Set by ``fit`` in the fitting process only (not saved with the artifact):
    ``item_feature_names`` is None when the fit used no item features.
    """

    item_feature_names: np.ndarray | None

    def project_item_features(self, features: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Item vectors and biases for rows of L1-normalised features over ``item_feature_names``."""
        ...


def _feature_rows(long: pd.DataFrame, ids: np.ndarray, names: np.ndarray) -> sp.csr_matrix:
    """Long (item, feature, weight) rows as an L1-normalised ``ids`` x ``names`` matrix.

    Features the model was not fitted with are dropped: it has no embedding for them.
    """
    rows = positions(ids, long[C.ITEM])
    cols = positions(names, long[C.FEATURE])
    keep = (rows >= 0) & (cols >= 0)
    weights = long[C.WEIGHT].to_numpy(dtype=np.float32)[keep]
    mat = sp.csr_matrix((weights, (rows[keep], cols[keep])), shape=(len(ids), len(names)), dtype=np.float32)
    sums = np.asarray(mat.sum(axis=1)).ravel()
    sums[sums == 0] = 1.0
    return sp.diags(1.0 / sums).dot(mat).tocsr().astype(np.float32)


def cold_item_features(settings: Settings, known: np.ndarray) -> pd.DataFrame | None:
    """Rows of the item features file for items not in ``known``, with a feature some known item has.

    A feature only new items have was never trained (its embedding is its random
    initialisation), so it says nothing about them. None: no item features file.
    """
    long = Lake.of(settings).read_side("item_features")
    if long is None:
        return None
    is_known = long[C.ITEM].isin(set(known))
    trained = set(long.loc[is_known, C.FEATURE])
    return long[~is_known & long[C.FEATURE].isin(trained)]


def add_cold_items(settings: Settings, model: Recommender, data: Interactions) -> int:
    """Append items with features but no interactions in ``data`` to the fitted ``model``.

    The model's ``item_ids`` become ``data``'s items followed by the cold ones (sorted),
    and its item vectors and biases grow to match, so ranking and ``similar_items``
    include them. Only features that some item of ``data`` has count (see
    :func:`cold_item_features`); an item with none of them is not added. Returns how
    many were added: 0 when the setting is off, the family cannot project features
    (:class:`ColdItemProjection`) or there is no cold item.
    """
    if not settings.coldstart.cold_items or not isinstance(model, VectorRecommender):
        return 0
    if not isinstance(model, ColdItemProjection) or model.item_feature_names is None:
        return 0
    if not same_ids(model.item_ids, data.item_ids):
        raise ModelError(f"{model.family}: cold items can be added once, to a model fitted on these interactions")
    long = cold_item_features(settings, data.item_ids)
    if long is None or long.empty:
        return 0
    names = model.item_feature_names
    long = long[long[C.FEATURE].isin(set(names))]
    cold_ids = np.asarray(sorted(long[C.ITEM].unique()), dtype=object)
    if len(cold_ids) == 0:
        return 0
    vectors, bias = model.project_item_features(_feature_rows(long, cold_ids, names))
    vec = model.vectors
    model.vectors = Vectors(vec.user_vectors,
                            np.ascontiguousarray(np.vstack([vec.item_vectors, vectors]), dtype=np.float32),
                            np.ascontiguousarray(np.concatenate([vec.item_bias, bias]), dtype=np.float32))
    model.item_ids = np.concatenate([model.item_ids, cold_ids]).astype(object)
    model.info["cold_items"] = len(cold_ids)
    log.info("%s: added %d cold items (features, no interactions) to the %d trained ones", model.family,
             len(cold_ids), data.n_items)
    return len(cold_ids)


def align_seen(seen: Interactions, model: Recommender) -> Interactions | None:
    """``seen`` over the model's items: cold items appended by :func:`add_cold_items` get empty columns.

    None when the model was not trained on ``seen``: its users differ, or its items do
    not start with ``seen``'s items.
    """
    users, items = model.user_ids, model.item_ids
    if not same_ids(seen.user_ids, users) or len(items) < seen.n_items:
        return None
    if not same_ids(items[: seen.n_items], seen.item_ids):
        return None
    extra = len(items) - seen.n_items
    if extra == 0:
        return seen
    m = seen.matrix
    # CSR with more columns and the same stored entries: indices and indptr are unchanged.
    matrix = sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], len(items)))
    never = np.full(extra, np.iinfo(np.int64).min, np.int64)
    excluded = seen.excluded
    if excluded is not None:
        excluded = sp.csr_matrix((excluded.data, excluded.indices, excluded.indptr), shape=matrix.shape)
    return Interactions(seen.user_ids, items, matrix, np.concatenate([seen.item_last_seen, never]),
                        seen.pair_seconds, seen.typed, excluded)


# -- users with very few interactions ------------------------------------------------------
def thin_users(seen: Interactions, min_interactions: int) -> np.ndarray:
    """A mask over ``seen``'s users with at least one and fewer than ``min_interactions`` items."""
    counts = np.diff(seen.matrix.indptr)
    return (counts > 0) & (counts < min_interactions)


def for_ranking(model: Recommender, seen: Interactions, cold: ColdStartSettings) -> Recommender:
    """The model to rank users with: ``model``, or it with thin users scored by item neighbours.

    Only a vector family named in ``thin_user_families`` is changed (and only if it has
    item vectors): a neighbourhood family (EASE, item-item) scores everyone from their
    history already, and popularity has no item vectors to take neighbours from.
    """
    if (cold.min_interactions <= 1 or model.family not in cold.thin_user_families
            or not isinstance(model, VectorRecommender) or not model.has_similar_items()):
        return model
    mask = thin_users(seen, cold.min_interactions)
    if not mask.any():
        return model
    log.info("%d of %d users have fewer than %d interactions: ranked by the neighbours of their items",
             int(mask.sum()), len(mask), cold.min_interactions)
    return ThinUserNeighbourhood(model, seen.matrix, mask)


class ThinUserNeighbourhood(VectorRecommender):
    """A ranking view of a fitted vector model: thin users scored by their items' neighbours.

    For a thin user with items J, item i scores ``sum_j cos(v_j, v_i)``: the sum of the
    similar-items scores of their few items, computed as one query ``sum_j v_j / |v_j|``
    against unit item vectors. Every other user, ``similar_items`` and the version are
    the model's own (the view shares its ids, info and vectors).
    """

    def __init__(self, model: VectorRecommender, history: sp.csr_matrix, thin: np.ndarray) -> None:
        super().__init__(model.params, model.seed)
        self.family = model.family  # type: ignore[misc]
        self.params_type = model.params_type  # type: ignore[misc]
        self.user_ids, self.item_ids, self.info = model.user_ids, model.item_ids, model.info
        self.vectors = model._vec()
        norms = np.linalg.norm(self.vectors.item_vectors, axis=1)
        norms[norms == 0] = 1.0
        self._unit = np.ascontiguousarray(self.vectors.item_vectors / norms[:, None], dtype=np.float32)
        binary = history.astype(np.float32, copy=True).tocsr()
        binary.data[:] = 1.0
        self._history = binary
        self._thin = thin

    def _fit(self, data: Interactions, features: SideFeatures | None) -> Vectors:
        raise TypeError("a ranking view of a fitted model cannot be fitted")

    def _queries(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._history[rows] @ self._unit, dtype=np.float32)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        user_rows = np.asarray(user_rows)
        block = super().score(user_rows)
        thin = self._thin[user_rows]
        if thin.any():
            block[thin] = self._queries(user_rows[thin]) @ self._unit.T
        return block

    def recommend(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        user_rows = np.asarray(user_rows)
        ids, scores = super().recommend(user_rows, n, exclude)
        thin = self._thin[user_rows]
        if thin.any():
            rows = user_rows[thin]
            filt = exclude[rows] if exclude is not None else None
            ids[thin], scores[thin] = top_k(self._unit, self._queries(rows), n, filt)
        return ids, scores


# -- new users: popular items per segment -----------------------------------------------------
def user_segment_frame(settings: Settings) -> pd.DataFrame | None:
    """Each user's segment, the user feature with ``coldstart.segment_prefix`` (None: segments off).

    A user with several such features gets the heaviest (ties: the first by name).
    """
    prefix = settings.coldstart.segment_prefix
    if prefix is None:
        return None
    lake = Lake.of(settings)
    long = lake.read_side("user_features")
    if long is None:
        log.warning("coldstart.segment_prefix is %r but no user features were ingested (%s): "
                    "no segment lists", prefix, lake.side_path("user_features"))
        return None
    long = long[long[C.FEATURE].astype(str).str.startswith(prefix)]
    if long.empty:
        log.warning("no user feature starts with coldstart.segment_prefix %r: no segment lists", prefix)
        return None
    long = long.sort_values([C.USER, C.WEIGHT, C.FEATURE], ascending=[True, False, True], kind="stable")
    first = long.drop_duplicates(C.USER, keep="first")
    return pd.DataFrame({C.USER: first[C.USER].to_numpy(dtype=object),
                         C.SEGMENT: first[C.FEATURE].astype(str).to_numpy(dtype=object)})


def segment_popular_rows(settings: Settings, seen: Interactions, segments: pd.DataFrame,
                         run_date: str) -> list[dict[str, object]]:
    """Rows of ``segment_popular_items``: per segment, items by how many of its users interacted.

    Counted over users with interactions in ``seen``, as the global list is; segments
    with fewer than ``coldstart.min_segment_users`` such users get no list (their users
    fall back to the global one), and only items a segment's user interacted with are listed.
    """
    cold = settings.coldstart
    position = positions(segments[C.USER].to_numpy(dtype=object), seen.user_ids)
    has = position >= 0
    seg_of_user = np.full(seen.n_users, "", dtype=object)
    seg_of_user[has] = segments[C.SEGMENT].to_numpy()[position[has]]
    names, codes = np.unique(seg_of_user[has].astype(str), return_inverse=True)
    # segments x users indicator times the binary matrix: users per (segment, item).
    indicator = sp.csr_matrix((np.ones(int(has.sum()), np.float32), (codes, np.flatnonzero(has))),
                              shape=(len(names), seen.n_users))
    binary = seen.matrix.astype(np.float32, copy=True)
    binary.data[:] = 1.0
    counts = np.asarray((indicator @ binary).todense())
    sizes = np.bincount(codes, minlength=len(names))
    item_names = sort_key(seen.item_ids)
    # The item rules (rules.exclude_items / allow_items) hold for every fallback list.
    blocked = blocked_items(settings, seen.item_ids)
    rows: list[dict[str, object]] = []
    for s, name in enumerate(names):
        if sizes[s] < cold.min_segment_users:
            continue
        order = np.lexsort((item_names, -counts[s]))
        order = order if blocked is None else order[~blocked[order]]
        order = order[: settings.publish.popular_n]
        order = order[counts[s, order] > 0]
        rows.extend({C.SEGMENT: name, C.RANK: r + 1, C.ITEM: seen.item_ids[i], C.SCORE: float(counts[s, i]),
                     C.RUN_DATE: run_date} for r, i in enumerate(order))
    skipped = int((sizes < cold.min_segment_users).sum())
    log.info("segment popular items: %d segments listed, %d with fewer than %d users left to the global list",
             len(names) - skipped, skipped, cold.min_segment_users)
    return rows



def popular_rows(settings: Settings, seen: Interactions, run_date: str) -> list[dict[str, object]]:
    """Rows of ``popular_items``: items by how many users interacted with them (the popularity
    family's count), ties by item id, without the items the item rules block."""
    users = np.asarray((seen.matrix != 0).sum(axis=0)).ravel()
    order = np.lexsort((sort_key(seen.item_ids), -users))
    blocked = blocked_items(settings, seen.item_ids)
    order = (order if blocked is None else order[~blocked[order]])[: settings.publish.popular_n]
    return [{C.RANK: r + 1, C.ITEM: seen.item_ids[i], C.SCORE: float(users[i]), C.RUN_DATE: run_date}
            for r, i in enumerate(order)]


__all__ = ["ColdItemProjection", "ThinUserNeighbourhood", "add_cold_items", "align_seen", "for_ranking",
           "popular_rows", "segment_popular_rows", "thin_users", "user_segment_frame"]
