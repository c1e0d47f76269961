"""The gate decides on enough evidence: the auto split protocol and the first-run rule.

The rule is pure (recjobs.evaluation.gate.decide) and is tested on per-user arrays we
build with a known answer; the split on a timeline we build.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recjobs.data.interactions import Events
from recjobs.data.split import plan_split
from recjobs.evaluation.gate import GateCandidate, decide
from recjobs.evaluation.significance import lower_bound
from recjobs.settings import GateSettings, SplitSettings

SPLIT = {"fingerprint": "f", "protocol": "per_user"}


def cand(family: str, values: np.ndarray) -> GateCandidate:
    return GateCandidate(family, float(values.mean()), 10, np.arange(len(values)), values, SPLIT)


def noisy(mean: float, spread: float, n: int, seed: int) -> np.ndarray:
    """Per-user NDCG-like values in [0, 1] around ``mean``."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(mean, spread, n), 0.0, 1.0)


def test_first_run_without_a_significant_lead_promotes_the_highest_lower_bound():
    # "wild": the higher mean by a hair, but a long tail of zeros and ones (wide interval);
    # "steady": a hair lower, every user close to its mean (narrow interval). On 100 users
    # the lead is noise, so the stated rule decides, and says so.
    rng = np.random.default_rng(0)
    wild = (rng.random(100) < 0.22).astype(np.float64)
    steady = noisy(wild.mean() - 0.005, 0.02, 100, 1)
    gate = GateSettings()
    out = decide([cand("wild", wild), cand("steady", steady)], None, gate, 42, "2026-01-31", ["wild", "steady"])
    assert out.winner == "steady" and out.promoted
    assert "first run" in out.reason and "gate.first_run=lower_bound" in out.reason
    assert lower_bound(steady, "bootstrap", 0.05, 1000, 42) > lower_bound(wild, "bootstrap", 0.05, 1000, 42)
    # The old rule, kept as a setting, takes the noisy best mean.
    old = decide([cand("wild", wild), cand("steady", steady)], None, gate.model_copy(update={"first_run": "best_mean"}),
                 42, "2026-01-31", ["wild", "steady"])
    assert old.winner == "wild" and "lower_bound" not in old.reason


def test_first_run_with_a_significant_lead_promotes_the_best_mean():
    # A real gap on 900 users: the best mean is clear, whatever the intervals' widths.
    rng = np.random.default_rng(3)
    best = (rng.random(900) < 0.35).astype(np.float64)
    worse = noisy(0.20, 0.02, 900, 4)
    out = decide([cand("worse", worse), cand("best", best)], None, GateSettings(), 42, "d", ["worse", "best"])
    assert out.winner == "best" and "lower_bound" not in out.reason
    assert out.decisive is not None and out.decisive.p_value < 0.05


def test_noise_only_challengers_keep_the_champion():
    # Three challengers that are the champion plus zero-mean noise: none is promoted,
    # whichever has the highest mean.
    base = noisy(0.25, 0.15, 300, 5)
    cands = [cand("champ", base)] + [cand(f"noise{i}", base + np.random.default_rng(10 + i).normal(0, 0.01, 300))
                                     for i in range(3)]
    out = decide(cands, "champ", GateSettings(), 42, "d", ["champ", "noise0", "noise1", "noise2"])
    assert out.winner == "champ" and not out.promoted and "kept" in out.reason


def test_first_run_rule_needs_per_user_metrics_else_keeps_the_best_mean():
    a = GateCandidate("a", 0.30, 10)
    b = GateCandidate("b", 0.29, 10)
    out = decide([a, b], None, GateSettings(), 42, "d", ["a", "b"])
    assert out.winner == "a" and "no per-user metrics to bound" in out.reason


def timeline(returning: int, newcomers: int) -> Events:
    """``returning`` users active on days 0-9, ``newcomers`` with two items on day 9 only (new at the cutoff)."""
    rows = []
    for u in range(returning):
        rows += [(f"r{u}", f"i{t}", t) for t in range(10)]
    for u in range(newcomers):
        rows += [(f"n{u}", f"i{t}", 9) for t in range(8, 10)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "day"])
    frame["timestamp"] = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(frame.pop("day"), unit="D")
    frame["rating"] = 1.0
    return Events.from_frame(frame)


def test_auto_protocol_falls_back_to_per_user_when_few_users_return():
    events = timeline(returning=3, newcomers=40)
    plan = plan_split(events, SplitSettings(min_eval_users=10))
    assert plan.protocol == "per_user" and plan.cutoff_millis is None
    assert "would evaluate only 3 users" in plan.reason and "min_eval_users=10" in plan.reason
    # Every user with 2+ interactions has a holdout: 43 users evaluated instead of 3.
    held_users = np.unique(events.users[plan.order][plan.held])
    assert len(held_users) == 43


def test_auto_protocol_keeps_the_leak_free_cutoff_when_enough_users_return():
    events = timeline(returning=12, newcomers=2)
    plan = plan_split(events, SplitSettings(min_eval_users=10))
    assert plan.protocol == "global_time" and plan.cutoff_millis is not None
    assert "evaluates 12 users" in plan.reason
    millis = events.millis[plan.order]
    assert millis[plan.train].max() < millis[plan.held].min()  # one cutoff, nothing after it trains
