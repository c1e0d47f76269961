"""The nightly pipeline's stages as plain functions of (settings, logical date).

What the DAG's tasks and the CLI's subcommands call, one module per stage: ``split``,
``candidates`` (train and evaluate each family), ``gate``, ``final``, ``publish`` (rank
shards, then load and swap), ``run`` (all of them in one process) and ``tune``. Stages
pass paths and ids, never data frames, so each can run in its own process and be retried
alone. Each writes only under its own date (``runs/<date>/``, ``model_runs`` rows of that
date, a new publication), so reruns and backfills overwrite their own results and nothing
else.
"""

from recjobs.db.schema import engine_for
from recjobs.errors import NoCandidatesError, PipelineError
from recjobs.pipeline.candidates import (
    evaluate_candidate,
    fit_family,
    record_failure,
    train_candidate,
)
from recjobs.pipeline.final import train_final
from recjobs.pipeline.gate import (
    GateDecision,
    earlier_dates_in_flight,
    gate_decision,
    promote,
    record_no_candidates,
)
from recjobs.pipeline.publish import final_model, load_published, publish, rank_shard
from recjobs.pipeline.run import RunReport, run_pipeline
from recjobs.pipeline.split import (
    guard_and_prepare,
    load_events,
    load_feedback,
    load_matrix,
    prepare,
    run_day,
    shared_window,
)
from recjobs.pipeline.tune import GRIDS, tune

__all__ = [
    "GRIDS", "GateDecision", "NoCandidatesError", "PipelineError", "RunReport", "earlier_dates_in_flight",
    "engine_for", "evaluate_candidate", "final_model", "fit_family", "gate_decision", "load_events", "load_feedback",
    "load_matrix",
    "load_published", "prepare", "promote", "publish", "rank_shard", "record_failure", "record_no_candidates",
    "guard_and_prepare", "run_day", "run_pipeline", "shared_window", "train_candidate", "train_final", "tune",
]
