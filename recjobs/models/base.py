"""The one contract every model family implements.

Every family is a :class:`Recommender`: ``fit`` on an :class:`Interactions` (plus
optional side features), ``score`` a block of users against every item, ``recommend``
the top-N with seen items excluded, ``similar_items``, ``item_embedding`` (for
diversity metrics and the dashboard's map) and ``save``/``load`` to one artifact
format (``model.npz`` + ``meta.json``). Two kinds share the scoring machinery:

* :class:`~recjobs.models.vectors.VectorRecommender` (popularity, ALS, LightFM, TFRS,
  sequence): the family learns user and item vectors and an item bias; a score is
  ``user_vectors[u] @ item_vectors[i] + item_bias[i]``.
* :class:`~recjobs.models.neighbourhood.NeighbourhoodRecommender` (EASE, item-item): the
  family learns an item x item matrix ``S``; a user's score is their (recency-weighted)
  history row times ``S``.

A new family subclasses one of them and implements ``_fit``; a new kind of model
subclasses :class:`Recommender` itself. The top-k kernels are in :mod:`recjobs.models.topk`.

A family built on other families (the ranker's generators) names them in
:meth:`Recommender.peer_params`; ``fit`` may then be handed :class:`Peers`, the
models of those families the night has already fitted, to reuse instead of fitting
them again. Every other family ignores them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel

from recjobs.data.features import SideFeatures
from recjobs.data.ids import id_buffers, ids_from_buffers
from recjobs.data.interactions import Interactions
from recjobs.errors import ArtifactError, ModelError
from recjobs.files import atomic_dir
from recjobs.models.registry import get_family
from recjobs.models.topk import top_k_of_scores

# 3: ids as UTF-8 bytes plus offsets (2 stored fixed-width text, which drops trailing NULs).
ARTIFACT_FORMAT = 3
# Users scored densely at a time by the default score_pairs (a block is users x items float32).
PAIR_BLOCK = 2048
# (positions in a block's user rows, item columns) -> their scores, float32 (see recommend_scorer).
PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Peers:
    """Models of other families already fitted this night, which a family built on them may reuse.

    ``fitted``: family -> a model fitted on exactly the data ``fit`` is given (the night's
    candidates, for a candidate fitted on the same training part).
    ``before``: a part of that data before a cutoff (the split's training part, for the
    final model), ``before_fitted`` the models fitted on it, and ``after`` (users x items
    of ``before``, 0/1) the pairs that came after the cutoff: labels that no model in
    ``before_fitted`` has seen. All three or none.
    """

    fitted: Mapping[str, Recommender] = field(default_factory=dict)
    before: Interactions | None = None
    before_fitted: Mapping[str, Recommender] = field(default_factory=dict)
    after: sp.csr_matrix | None = None
    # Side features aligned to ``before``'s users and items (``fit``'s are aligned to its data).
    before_features: SideFeatures | None = None

    def __post_init__(self) -> None:
        if (self.before is None) != (self.after is None):
            raise ValueError("Peers: before and after come together")
        if self.before is not None and self.after is not None and self.after.shape != self.before.matrix.shape:
            raise ValueError(f"Peers: after {self.after.shape} is not shaped like before {self.before.matrix.shape}")


NO_PEERS = Peers()


class Recommender(ABC):
    """Base class of all model families; see the module docstring."""

    family: ClassVar[str]
    params_type: ClassVar[type[BaseModel]]
    kind: ClassVar[str]

    def __init__(self, params: BaseModel | None = None, seed: int = 42) -> None:
        self.params = params if params is not None else self.params_type()
        self.seed = seed
        self.user_ids: np.ndarray | None = None
        self.item_ids: np.ndarray | None = None
        self.info: dict[str, Any] = {}

    def fit(self, data: Interactions, features: SideFeatures | None = None, peers: Peers = NO_PEERS) -> Recommender:
        """Fit on ``data``; ``features`` must be aligned to its users and items.

        ``peers``: models of :meth:`peer_params`' families already fitted (see :class:`Peers`); a
        family reuses what it is given and fits what it is not, with the same result.
        """
        if data.n_users == 0 or data.n_items == 0:
            raise ModelError(f"{self.family}: cannot fit on an empty interactions matrix")
        self._learn(data, features, peers)
        self.user_ids, self.item_ids = data.user_ids, data.item_ids
        return self

    @abstractmethod
    def _learn(self, data: Interactions, features: SideFeatures | None, peers: Peers) -> None:
        """Fit the family (``_fit``) and keep what scoring needs; defined by each kind."""

    def peer_params(self) -> dict[str, BaseModel]:
        """Families whose fitted models :meth:`fit` can reuse (:class:`Peers`), with the parameters
        it would fit them with (a peer fitted with others is not the same model); none by default."""
        return {}

    @property
    def fitted(self) -> bool:
        return self.user_ids is not None

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ModelError(f"{self.family}: model is not fitted")

    # -- scoring ---------------------------------------------------------------
    @abstractmethod
    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Scores of every item for the users at ``user_rows`` (a dense float32 block)."""

    def score_pairs(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """The scores :meth:`score` gives the (user row, item column) pairs, one per pair.

        By default from dense blocks of the pairs' distinct users; a kind that can score
        a pair directly (a dot product, a sparse row) overrides it.
        """
        user_rows = np.asarray(user_rows, np.int64)
        item_rows = np.asarray(item_rows, np.int64)
        users, inverse = np.unique(user_rows, return_inverse=True)
        out = np.empty(len(user_rows), np.float32)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(0, len(users) + PAIR_BLOCK, PAIR_BLOCK))
        for b, lo in enumerate(range(0, len(users), PAIR_BLOCK)):
            at = order[bounds[b]:bounds[b + 1]]
            out[at] = self.score(users[lo:lo + PAIR_BLOCK])[inverse[at] - lo, item_rows[at]]
        return out

    def recommend(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` item indices and scores per user, best first.

        ``exclude`` (users x items, aligned to this model) marks items not to
        recommend, normally those the user has seen. Where fewer than ``n`` items
        remain, the row is padded with index -1 and score -inf.
        """
        self._require_fitted()
        filt = exclude[user_rows] if exclude is not None else None
        return top_k_of_scores(self.score(user_rows), n, filt)

    def recommend_scorer(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray, PairScorer]:
        """:meth:`recommend`'s lists of ``user_rows``, and a scorer of more pairs of those users.

        The scorer takes (positions in ``user_rows``, item columns) and returns
        :meth:`score_pairs` of them, for pairs ``exclude`` does not hold. The ranker's
        candidates need both: each generator's top-K, then its scores of the others'
        candidates. A kind that computes every score of the users on its way to the lists
        (a neighbourhood's history x S) keeps them for the scorer instead of computing
        them twice.
        """
        rows = np.asarray(user_rows, np.int64)
        ids, scores = self.recommend(rows, n, exclude)
        return ids, scores, lambda at, items: self.score_pairs(rows[np.asarray(at, np.int64)], items)

    @abstractmethod
    def similar_items(self, item_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` neighbours of each item, the item itself excluded (-1 / -inf padding)."""

    def has_similar_items(self) -> bool:
        """Whether the family has item neighbours worth publishing (popularity has none)."""
        return True

    def ranking_order(self, user_rows: np.ndarray) -> np.ndarray:
        """``user_rows`` in the order that ranks fastest in batches (default: as given).

        A ranking view whose batches share work (users of one cluster share candidates,
        recjobs.ranking.ann) groups them here; every user's list is the same in any order.
        """
        return np.asarray(user_rows, dtype=np.int64)

    def item_embedding(self) -> np.ndarray | None:
        """A dense items x d representation (for diversity and maps); None if the family has none."""
        return None

    def predicts_ratings(self) -> bool:
        """Whether :meth:`predict_ratings` answers (a family that learned explicit ratings)."""
        return False

    def predict_ratings(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """Predicted ratings of (user row, item column) pairs; families without a rating model refuse."""
        raise ModelError(f"{self.family}: this family predicts no ratings")

    # -- artifact state, per kind --------------------------------------------------
    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]:
        """Arrays that restore a fitted model (saved in ``model.npz``)."""

    @abstractmethod
    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the fitted state from what :meth:`_state` saved."""

    # -- artifacts -------------------------------------------------------------
    def save(self, path: Path | str, **meta: Any) -> Path:  # noqa: ANN401 - JSON-able metadata
        """Write the artifact directory atomically (a crash leaves the old one or none)."""
        self._require_fitted()
        path = Path(path)
        ids = {f"{name}_{part}": array for name, values in (("user_ids", self.user_ids), ("item_ids", self.item_ids))
               for part, array in id_buffers(values).items()}
        doc = {
            "format": ARTIFACT_FORMAT,
            "family": self.family,
            "seed": self.seed,
            "params": self.params.model_dump(),
            "info": self.info,
            **meta,
        }
        with atomic_dir(path) as tmp:
            np.savez(tmp / "model.npz", **ids, **self._state())
            (tmp / "meta.json").write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return path

    @classmethod
    def load(cls, path: Path | str) -> Recommender:
        """Load an artifact saved by :meth:`save`, as an instance of its own family."""
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.exists():
            raise ArtifactError(f"{path}: not a model artifact (no meta.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format", 1) > ARTIFACT_FORMAT:
            raise ArtifactError(f"{path}: artifact format {meta['format']} is newer than this recjobs reads "
                                f"({ARTIFACT_FORMAT}); upgrade recjobs or retrain")
        family_cls = get_family(meta["family"])
        model = family_cls(family_cls.params_type.model_validate(meta["params"]), seed=meta["seed"])
        with np.load(path / "model.npz", allow_pickle=False) as npz:
            ids = {}
            for name in ("user_ids", "item_ids"):
                if f"{name}_offsets" in npz.files:
                    ids[name] = ids_from_buffers(npz[f"{name}_data"], npz[f"{name}_offsets"])
                else:  # format 2: fixed-width text arrays
                    ids[name] = npz[name].astype(object)
            id_keys = {f"{name}{suffix}" for name in ids for suffix in ("", "_data", "_offsets")}
            # Ids first: a model holding others (the ranker's generators) hands them its ids.
            model.user_ids, model.item_ids = ids["user_ids"], ids["item_ids"]
            model._restore({name: npz[name] for name in npz.files if name not in id_keys})
        model.info = meta.get("info", {})
        return model


__all__ = ["ARTIFACT_FORMAT", "NO_PEERS", "PairScorer", "Peers", "Recommender"]
