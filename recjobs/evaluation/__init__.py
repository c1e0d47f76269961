"""Judging models: ranking metrics on a holdout, paired significance tests, and the gate's rule."""

from recjobs.evaluation.gate import GateCandidate, GateOutcome, decide
from recjobs.evaluation.metrics import (
    ACCURACY,
    Metrics,
    PerUser,
    evaluate_model,
    list_diversity,
    ranking_metrics,
    self_information,
    unit_rows,
)
from recjobs.evaluation.significance import PairedTest, lower_bound, paired_test

__all__ = [
    "ACCURACY", "GateCandidate", "GateOutcome", "Metrics", "PairedTest", "PerUser", "decide", "evaluate_model",
    "list_diversity", "lower_bound", "paired_test", "ranking_metrics", "self_information", "unit_rows",
]
