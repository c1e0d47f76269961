"""The final stage: the date's champion family retrained on everything before the cutoff."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sqlalchemy.engine import Engine

from recjobs.data.features import load_side_features
from recjobs.data.interactions import Holdout
from recjobs.data.lake import Lake
from recjobs.db import ledger
from recjobs.models.base import Peers, Recommender
from recjobs.pipeline.candidates import fit_family, night_candidates
from recjobs.pipeline.gate import gate_decision
from recjobs.pipeline.split import load_matrix, run_day
from recjobs.ranking.coldstart import add_cold_items
from recjobs.runs import RunFolder, model_version
from recjobs.settings import Settings


def train_final(settings: Settings, engine: Engine, run_date: str | dt.date) -> Path:
    """Retrain the date's champion family on all data up to the date and save it."""
    day = run_day(settings, run_date)
    decision = gate_decision(engine, day)
    folder = RunFolder.of(settings, day)
    snap = folder.snapshot()
    data = load_matrix(settings, day, "full")
    model, seconds = fit_family(settings, decision.family, data, lambda m: _before_holdout(settings, day, m))
    # Items with features and no interactions yet, where the family can score them.
    cold_items = add_cold_items(settings, model, data)
    params = settings.model_params(decision.family).model_dump()
    version = model_version(decision.family, day, params, settings.seed, snap["fingerprint"], "full")
    path = model.save(folder.final, model_version=version, fit_seconds=seconds,
                      run_date=day.isoformat(), stage="final")
    ledger.record_final(engine, day, decision.family, version, seconds, params, str(path),
                        f"champion retrained on all {snap['interactions']} interactions before {snap['cutoff']}"
                        + (f"; {cold_items} new items scored from their features" if cold_items else ""))
    return path


def _before_holdout(settings: Settings, day: dt.date, model: Recommender) -> Peers:
    """For a family built on others (the ranker): the split's training part, the night's
    candidates fitted on it, and the holdout as what came after it.

    The final model then learns from the same kind of cutoff its candidate did, at the
    split's own cutoff, without fitting its generators on the training part again.
    """
    train = load_matrix(settings, day, "train")
    holdout = Holdout.load(RunFolder.of(settings, day).matrix("holdout"))
    known = holdout.item_cols < train.n_items  # an item new in the holdout cannot be a candidate
    after = sp.csr_matrix((np.ones(int(known.sum()), np.float32),
                           (holdout.user_rows[known], holdout.item_cols[known])), shape=train.matrix.shape)
    return Peers(before=train, after=after, before_fitted=night_candidates(settings, day, model),
                 before_features=load_side_features(Lake.of(settings), train))


__all__ = ["train_final"]
