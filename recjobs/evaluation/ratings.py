"""Rating prediction on the holdout: a model's RMSE and MAE beside the bias baseline's, same pairs, same run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recjobs.data.interactions import Holdout, Interactions
from recjobs.models.base import Recommender
from recjobs.models.ratings import BiasBaseline, explicit, rmse_mae


@dataclass(frozen=True)
class RatingErrors:
    """Errors on ``pairs`` held-out ratings; ``rmse``/``mae`` None for a model that predicts none."""

    pairs: int
    rmse: float | None
    mae: float | None
    baseline_rmse: float
    baseline_mae: float

    def columns(self) -> dict[str, float | None]:
        """As model_runs' columns."""
        return {"rmse": self.rmse, "mae": self.mae, "baseline_rmse": self.baseline_rmse,
                "baseline_mae": self.baseline_mae}


def rating_errors(model: Recommender, train: Interactions, holdout: Holdout, mode: str = "auto",
                  baseline: tuple[float, float] | None = None) -> RatingErrors | None:
    """RMSE/MAE of ``model`` (if it predicts ratings) and of the bias baseline on the holdout's ratings.

    Measured on held-out pairs whose user and item the training part knows (no model can
    predict an unknown item's rating from it); None when ratings are not explicit (``mode``
    ``auto``: more than two distinct training values), ``off``, or the holdout has none.
    ``baseline``: the baseline's (RMSE, MAE) on these pairs, already measured (fitting it
    takes about 30 s at 10x ML-20M size, the same for every candidate of a date).
    """
    if mode == "off" or holdout.ratings is None or (mode == "auto" and not explicit(train.matrix.data)):
        return None
    known = holdout.item_cols < train.n_items
    users, items = holdout.user_rows[known].astype(np.int64), holdout.item_cols[known].astype(np.int64)
    truth = holdout.ratings[known]
    if not len(truth):
        return None
    base_rmse, base_mae = baseline or rmse_mae(BiasBaseline.fit(train.matrix).predict(users, items), truth)
    rmse = mae = None
    if model.predicts_ratings():
        rmse, mae = rmse_mae(model.predict_ratings(users, items), truth)
    return RatingErrors(len(truth), rmse, mae, base_rmse, base_mae)


__all__ = ["RatingErrors", "rating_errors"]
