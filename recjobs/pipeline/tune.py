"""Hyper-parameter search that never touches the holdout.

The date's training part is split again with the same temporal rule (each user's
latest 20% become validation) and every grid point is fitted on the inner training
part and scored on that validation part. The winning values are what the settings
defaults should hold; the holdout stays unseen until ``evaluate``.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

from recjobs.data.features import load_side_features
from recjobs.data.interactions import Events, Holdout, Interactions
from recjobs.data.lake import Lake
from recjobs.data.split import split_events
from recjobs.evaluation.metrics import evaluate_model
from recjobs.models.registry import get_family
from recjobs.settings import Settings

log = logging.getLogger(__name__)

# The documented grids: small, around the defaults, over the knobs that matter most.
GRIDS: dict[str, dict[str, list[Any]]] = {
    "popularity": {"half_life_days": [None, 7.0, 30.0, 90.0]},
    "als": {
        "factors": [16, 32, 64, 128],
        "regularization": [0.05, 0.5, 2.0],
        "alpha": [0.5, 1.0, 2.0],
        "weighting": ["bm25", "none"],
        "recency_half_life": [None, 10.0, 50.0],
    },
    "lightfm": {
        "no_components": [32, 64],
        "learning_rate": [0.02, 0.05],
        "epochs": [20, 40],
        "use_item_features": [True, False],
        "use_user_features": [True, False],
    },
    "tfrs": {
        "temperature": [0.05, 0.1, 0.2, 0.3, 0.5],
        "learning_rate": [0.05, 0.1],
        "use_features": [True, False],
    },
    "ease": {
        "l2": [50.0, 200.0, 500.0, 1000.0],
        "recency_half_life": [None, 3.0, 5.0, 10.0, 20.0],
    },
    "itemknn": {
        "similarity": ["cosine", "bm25", "tfidf"],
        "neighbours": [50, 100, 200],
        "recency_half_life": [None, 5.0, 10.0, 20.0],
    },
    "sequence": {
        "temperature": [0.1, 0.2, 0.3],
        "learning_rate": [0.002, 0.005],
        "max_length": [10, 20, 50],
    },
}


@dataclass(frozen=True)
class TrialResult:
    params: dict[str, Any]
    ndcg: float
    precision: float
    recall: float
    fit_seconds: float


def tune(
    settings: Settings,
    train: Events,
    family: str,
    grid: dict[str, list[Any]] | None = None,
) -> list[TrialResult]:
    """Score every point of ``grid`` (default :data:`GRIDS`) on an inner split of ``train``; best first."""
    grid = grid or GRIDS[family]
    inner_train, validation = split_events(train, settings.split)
    data = Interactions.from_events(inner_train)
    truth = Holdout.from_events(validation, data)
    features = load_side_features(Lake.of(settings), data)
    cls = get_family(family)
    base = settings.model_params(family)
    results = []
    keys = sorted(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        params = base.model_copy(update=point)
        params = type(base).model_validate(params.model_dump())
        started = time.perf_counter()
        model = cls(params, seed=settings.seed).fit(data, features)
        fit_s = time.perf_counter() - started
        m = evaluate_model(model, data, truth, settings.evaluate.k)
        log.info("%s %s: ndcg@%d %.4f (fit %.1fs)", family, point, m.k, m.ndcg, fit_s)
        results.append(TrialResult(point, m.ndcg, m.precision, m.recall, fit_s))
    return sorted(results, key=lambda r: -r.ndcg)


__all__ = ["GRIDS", "TrialResult", "tune"]
