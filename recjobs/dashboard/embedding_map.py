"""The dashboard's embedding map: the live champion's item vectors projected to 2-D.

The projection is PCA through numpy's SVD, with each component's sign fixed (its
largest loading positive), so the same model always draws the same map. Points are
coloured by genre where item features exist (features named ``genre=...``; an item
with several takes its most weighted, ties by name) and carry the item's title.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recjobs import columns as C
from recjobs.errors import ArtifactError
from recjobs.models.base import Recommender

log = logging.getLogger(__name__)

GENRE_PREFIX = "genre="
NO_GENRE = "(no genre)"
# Beyond this many items the map shows an evenly spaced sample: a browser draws tens of
# thousands of points slowly, and the shape of the cloud survives the sampling.
MAX_POINTS = 5000


@dataclass(frozen=True)
class EmbeddingMap:
    """Points of the map (item_id, title, genre, x, y), or why there are none."""

    model_version: str
    family: str
    n_items: int
    points: pd.DataFrame = field(default_factory=pd.DataFrame)
    explained: tuple[float, float] = (0.0, 0.0)
    message: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The map as the dashboard's ``api/embedding`` route returns it."""
        return {
            "model_version": self.model_version, "family": self.family, "n_items": self.n_items,
            "n_points": len(self.points), "explained_variance": list(self.explained), "message": self.message,
            "points": json.loads(self.points.to_json(orient="records")) if len(self.points) else [],
        }


def project_2d(vectors: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Rows of ``vectors`` on their first two principal components, and each one's share of variance.

    Deterministic: SVD has no randomness, and each component's sign is chosen so that
    its largest absolute loading is positive (SVD may return either sign).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"need a non-empty items x d matrix, got shape {x.shape}")
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    signs[signs == 0] = 1.0
    coords = centred @ (comps * signs[:, None]).T
    if coords.shape[1] < 2:  # a one-dimensional embedding: draw it on a line
        coords = np.hstack([coords, np.zeros((len(coords), 2 - coords.shape[1]))])
    total = float((s**2).sum())
    shares = [float(v**2 / total) if total > 0 else 0.0 for v in s[:2]] + [0.0, 0.0]
    return coords, (shares[0], shares[1])


def item_genres(features: pd.DataFrame | None, item_ids: np.ndarray) -> np.ndarray:
    """Each item's genre (without the ``genre=`` prefix), :data:`NO_GENRE` where it has none.

    ``features`` has the long item-features columns (item_id, feature[, weight]). An item
    with several genres gets its most weighted one; equal weights go by genre name.
    """
    out = pd.Series(NO_GENRE, index=pd.Index(np.asarray(item_ids, dtype=object).astype(str)), dtype=object)
    if features is None or features.empty:
        return out.to_numpy()
    genre = features[features[C.FEATURE].astype(str).str.startswith(GENRE_PREFIX)]
    if genre.empty:
        return out.to_numpy()
    weight = genre[C.WEIGHT].astype(float) if C.WEIGHT in genre.columns else pd.Series(1.0, index=genre.index)
    frame = pd.DataFrame({C.ITEM: genre[C.ITEM].astype(str), "genre": genre[C.FEATURE].astype(str)
                          .str.slice(len(GENRE_PREFIX)), "w": weight.to_numpy()})
    best = (frame.sort_values(["w", "genre"], ascending=[False, True], kind="stable")
            .drop_duplicates(C.ITEM).set_index(C.ITEM)["genre"])
    known = out.index.intersection(best.index)
    out[known] = best[known]
    return out.to_numpy()


@dataclass(frozen=True)
class _Projection:
    family: str
    model_version: str
    item_ids: np.ndarray
    coords: np.ndarray | None  # None: the family has no item vectors
    explained: tuple[float, float]


def _project_model(model: Any, model_version: str) -> _Projection:  # noqa: ANN401
    item_ids = np.asarray(model.item_ids, dtype=object)
    vectors = model.item_embedding()
    if vectors is None:
        return _Projection(model.family, model_version, item_ids, None, (0.0, 0.0))
    if len(vectors) != len(item_ids):
        raise ValueError(f"{model_version}: item_embedding has {len(vectors)} rows for {len(item_ids)} items")
    coords, explained = project_2d(vectors)
    return _Projection(model.family, model_version, item_ids, coords, explained)


def _points(proj: _Projection, titles: dict[str, str], features: pd.DataFrame | None,
            max_points: int) -> EmbeddingMap:
    if proj.coords is None:
        return EmbeddingMap(proj.model_version, proj.family, len(proj.item_ids),
                            message=f"the champion ({proj.family}) has no item vectors to map")
    ids = proj.item_ids
    keep = np.arange(len(ids))
    if len(keep) > max_points:
        keep = np.unique(np.linspace(0, len(ids) - 1, max_points).round().astype(int))
    points = pd.DataFrame({
        C.ITEM: ids[keep],
        C.TITLE: [titles.get(i) or i for i in ids[keep]],
        "genre": item_genres(features, ids)[keep],
        "x": proj.coords[keep, 0].round(5),
        "y": proj.coords[keep, 1].round(5),
    })
    return EmbeddingMap(proj.model_version, proj.family, len(ids), points, proj.explained)


def build_map(model: Any, titles: dict[str, str], features: pd.DataFrame | None,  # noqa: ANN401
              model_version: str = "", max_points: int = MAX_POINTS) -> EmbeddingMap:
    """The map of a fitted :class:`~recjobs.models.base.Recommender`'s ``item_embedding``."""
    return _points(_project_model(model, model_version), titles, features, max_points)


# The projection of the last artifact mapped: the live champion changes once a night.
_cache: dict[tuple[str, float], _Projection] = {}
_cache_lock = threading.Lock()


def load_map(artifact: Path, titles: dict[str, str], features: pd.DataFrame | None,
             max_points: int = MAX_POINTS) -> EmbeddingMap:
    """The map of the model saved at ``artifact`` (its projection computed once per artifact);
    ``features`` are the lake's item features (genres), or None."""
    artifact = Path(artifact)
    meta = artifact / "meta.json"
    if not meta.exists():
        raise ArtifactError(f"{artifact}: no model artifact (meta.json) there")
    key = (str(artifact.resolve()), meta.stat().st_mtime)
    with _cache_lock:
        proj = _cache.get(key)
    if proj is None:
        log.info("projecting the item vectors of %s", artifact)
        model = Recommender.load(artifact)
        version = json.loads(meta.read_text()).get(C.MODEL_VERSION, artifact.name)
        proj = _project_model(model, str(version))
        with _cache_lock:
            _cache.clear()
            _cache[key] = proj
    return _points(proj, titles, features, max_points)
