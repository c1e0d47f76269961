"""The final stage: the date's champion family retrained on everything before the cutoff."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy.engine import Engine

from recjobs.db import ledger
from recjobs.pipeline.candidates import fit_family
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
    model, seconds = fit_family(settings, decision.family, data)
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


__all__ = ["train_final"]
