"""Candidates: each family trained on the split's training part and evaluated on its holdout.

A candidate's results (its artifact under ``runs/<date>/candidates/<family>/``, its
per-user metrics and its ``model_runs`` row) belong to its date and family only, so a
retry replaces them and nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from recjobs.data.features import load_side_features
from recjobs.data.interactions import Holdout, Interactions
from recjobs.data.lake import Lake
from recjobs.db import ledger
from recjobs.errors import PipelineError
from recjobs.evaluation.metrics import Metrics, evaluate_model
from recjobs.evaluation.ratings import rating_errors
from recjobs.files import write_json
from recjobs.models.base import NO_PEERS, Peers, Recommender
from recjobs.models.registry import get_family
from recjobs.pipeline.split import load_matrix, run_day
from recjobs.progress import Heartbeat
from recjobs.ranking.rerank import PostProcess, build_postprocess
from recjobs.runs import RunFolder, model_version, parse_date
from recjobs.settings import Settings

log = logging.getLogger(__name__)


def fit_family(settings: Settings, family: str, data: Interactions,
               peers: Callable[[Recommender], Peers] | None = None) -> tuple[Recommender, float]:
    """A new ``family`` model fitted on ``data`` (with the lake's side features), and its fit seconds.

    ``peers``: what the night has already fitted that this model can reuse (see
    :func:`night_candidates`), asked for once the model says which families it builds on.
    """
    cls = get_family(family)
    model = cls(settings.model_params(family), seed=settings.seed)
    features = load_side_features(Lake.of(settings), data)
    given = peers(model) if peers is not None and model.peer_params() else NO_PEERS
    log.info("fitting %s on %d users x %d items (%d interactions)", family, data.n_users, data.n_items, data.nnz)
    start = time.perf_counter()
    model.fit(data, features, given)
    seconds = time.perf_counter() - start
    log.info("fitted %s in %.1fs", family, seconds)
    return model, seconds


def split_key(snap: dict[str, Any]) -> str:
    """What a candidate's training part depends on besides its settings: the data and the split protocol."""
    return f"{snap['fingerprint']}/{snap.get('split_protocol', 'per_user')}/{snap.get('holdout_cutoff')}"


class _Artifacts(Mapping[str, Recommender]):
    """Saved models by family, each loaded when it is asked for, and not kept here.

    A family given peers may need them only for part of its fit (the ranker serves with
    them after fitting its own generators, and its final model drops the training part's
    once its booster is trained): loading them then, and holding them no longer than the
    family does, keeps them out of its peak memory.
    """

    def __init__(self, paths: dict[str, Path]) -> None:
        self._paths = paths

    def __getitem__(self, family: str) -> Recommender:
        return Recommender.load(self._paths[family])

    def __contains__(self, family: object) -> bool:
        return family in self._paths  # without loading it

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def night_candidates(settings: Settings, day: dt.date, model: Recommender) -> Mapping[str, Recommender]:
    """The date's candidates of the families ``model`` builds on, each one only where it was
    fitted on this split with the parameters ``model`` would fit it with (its version says so).

    Anything else (a family the night did not train, a failed one, other settings) is left
    out, and the model fits it itself: reuse saves time and never changes what is fitted.
    Each is loaded whenever it is asked for (see :class:`_Artifacts`).
    """
    folder = RunFolder.of(settings, day)
    key = split_key(folder.snapshot())
    found: dict[str, Path] = {}
    for family, params in model.peer_params().items():
        path = folder.candidate(family)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        expected = model_version(family, day, params.model_dump(), settings.seed, key, "candidate")
        if meta.get("model_version") == expected:
            found[family] = path
            log.info("reusing the night's %s candidate (%s)", family, expected)
        else:
            log.info("not reusing the night's %s candidate: fitted with other parameters or on another split",
                     family)
    return _Artifacts(found)


def train_candidate(settings: Settings, engine: Engine, run_date: str | dt.date, family: str) -> Path:
    """Fit ``family`` on the split's training part and save it as that date's candidate.

    Any earlier result of this family for the date is withdrawn first, so a retry that
    fails cannot leave a stale candidate for the gate to pick.
    """
    day = run_day(settings, run_date)
    get_family(family)  # an unknown family fails here, before anything is recorded
    folder = RunFolder.of(settings, day)
    snap = folder.snapshot()
    ledger.record_training(engine, day, family)
    data = load_matrix(settings, day, "train")
    # A family built on others (the ranker) serves with the night's candidates fitted on this same part.
    model, seconds = fit_family(settings, family, data, lambda m: Peers(fitted=night_candidates(settings, day, m)))
    params = settings.model_params(family).model_dump()
    # The candidate's training part depends on the split protocol too, not only on the data.
    version = model_version(family, day, params, settings.seed, split_key(snap), "candidate")
    return model.save(folder.candidate(family), model_version=version, fit_seconds=seconds,
                      run_date=day.isoformat(), stage="candidate")


def _cached_baseline(folder: RunFolder, fingerprint: str | None) -> tuple[float, float] | None:
    """The bias baseline's (RMSE, MAE) an earlier evaluation of this split measured, if any."""
    try:
        cached = json.loads(folder.baseline_errors.read_text())
    except (OSError, ValueError):
        return None
    # Another split of the date (new data, other settings) has another fingerprint: measure again.
    if fingerprint is None or cached.get("fingerprint") != fingerprint:
        return None
    return float(cached["rmse"]), float(cached["mae"])


def evaluate_candidate(settings: Settings, engine: Engine, run_date: str | dt.date, family: str) -> Metrics:
    """Evaluate the saved candidate on the holdout and record it in ``model_runs``."""
    day = run_day(settings, run_date)
    folder = RunFolder.of(settings, day)
    path = folder.candidate(family)
    if not (path / "meta.json").exists():
        raise PipelineError(f"no {family} candidate for {day}: run `recjobs train --date {day} --family {family}`")
    with Heartbeat(log, f"evaluate {family} {day}") as beat:
        beat.phase("loading the candidate, the training matrix and the holdout")
        model = Recommender.load(path)
        meta = json.loads((path / "meta.json").read_text())
        train = load_matrix(settings, day, "train")
        snap = folder.snapshot()
        features = load_side_features(Lake.of(settings), train)
        holdout = Holdout.load(folder.matrix("holdout"))
        # The gate judges the lists as published: after business rules and re-ranking
        # (recjobs.ranking.rerank), with the raw ranking's metrics kept beside them in raw_metrics.
        # Neutral settings: post is None and the one evaluation is the raw one.
        post = build_postprocess(settings, day, model, train, features)
        beat.phase("ranking and scoring the holdout's users")
        metrics = evaluate_model(model, train, holdout, settings.evaluate.k, settings.evaluate.chunk_users,
                                 item_features=None if features is None else features.item,
                                 rank=None if post is None else _published_rank(post, settings))
        if post is not None:
            beat.phase("scoring the raw ranking too (before rules and re-ranking)")
        raw = None if post is None else evaluate_model(
            model, train, holdout, settings.evaluate.k, settings.evaluate.chunk_users,
            item_features=None if features is None else features.item)
        beat.phase("rating errors on the holdout's ratings (where explicit)")
        cached = _cached_baseline(folder, snap.get("fingerprint"))
        errors = rating_errors(model, train, holdout, settings.evaluate.ratings, cached)
        if errors is not None and cached is None:
            write_json(folder.baseline_errors, {"fingerprint": snap.get("fingerprint"), "pairs": errors.pairs,
                                                "rmse": errors.baseline_rmse, "mae": errors.baseline_mae})
    if errors is not None:
        log.info("%s on %s: rating RMSE %s MAE %s; bias baseline RMSE %.4f MAE %.4f on %d pairs", family, day,
                 "-" if errors.rmse is None else f"{errors.rmse:.4f}", "-" if errors.mae is None else f"{errors.mae:.4f}",
                 errors.baseline_rmse, errors.baseline_mae, errors.pairs)
    if raw is not None:
        log.info("%s on %s: ndcg@%d %.4f as ranked, %.4f as published (rules and re-ranking)", family, day,
                 raw.k, raw.ndcg, metrics.ndcg)
    # Per-user metrics next to the candidate, for the gate's paired test; the fingerprint
    # lets the gate check that two candidates were scored on the same split.
    if metrics.per_user is not None:
        metrics.per_user.save(folder.per_user(family), fingerprint=snap["fingerprint"],
                              protocol=snap.get("split_protocol", "per_user"))
    log.info("%s on %s: ndcg@%d=%.4f precision=%.4f recall=%.4f map=%.4f coverage=%.3f diversity=%.3f (%s) "
             "novelty=%.2f bits, %d users", family, day, metrics.k, metrics.ndcg, metrics.precision, metrics.recall,
             metrics.map, metrics.coverage, metrics.diversity, metrics.diversity_basis, metrics.novelty,
             metrics.users)
    ledger.record_evaluated(engine, day, family, {
        "model_version": meta["model_version"], "k": metrics.k, "precision_at_k": metrics.precision, "recall_at_k": metrics.recall,
        "ndcg_at_k": metrics.ndcg, "map_at_k": metrics.map, "coverage": metrics.coverage,
        "diversity": _finite(metrics.diversity), "novelty": _finite(metrics.novelty),
        "eval_users": metrics.users, "fit_seconds": meta["fit_seconds"], "eval_seconds": metrics.seconds,
        "params": json.dumps(meta["params"], sort_keys=True),
        "data_snapshot": json.dumps(snap, sort_keys=True), "artifact_path": str(path),
        "raw_metrics": None if raw is None else json.dumps(_metric_columns(raw), sort_keys=True),
        **({} if errors is None else errors.columns()),
    })
    return metrics


def _published_rank(post: PostProcess, settings: Settings) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Evaluation's ranking through ``post``: the first k of the published top-N lists."""
    k = settings.evaluate.k
    n = max(k, settings.publish.top_n)  # re-ranking picks greedily, so a top-N's first k is its top-k

    def rank(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top, scores = post.recommend(rows, n)
        return top[:, :k], scores[:, :k]

    return rank


def _metric_columns(m: Metrics) -> dict[str, float | None]:
    """``m`` under the names of model_runs' metric columns (the keys of raw_metrics)."""
    return {"k": m.k, "precision_at_k": m.precision, "recall_at_k": m.recall, "ndcg_at_k": m.ndcg,
            "map_at_k": m.map, "coverage": m.coverage, "diversity": _finite(m.diversity),
            "novelty": _finite(m.novelty)}


def _finite(value: float | None) -> float | None:
    # NaN (not measurable) is stored as NULL: SQLite and PostgreSQL disagree on NaN.
    return None if value is None or not np.isfinite(value) else float(value)


def record_failure(engine: Engine, run_date: str | dt.date, family: str, error: BaseException) -> None:
    """Record that ``family`` produced no candidate for the date, with the error."""
    ledger.record_failure(engine, parse_date(run_date), family, error)


__all__ = ["evaluate_candidate", "fit_family", "night_candidates", "record_failure", "split_key", "train_candidate"]
