"""The whole pipeline on generated data: CLI, reruns, the gate, a family that fails."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs.data import Lake
from recjobs.pipeline import engine_for, promote, run_pipeline
from recjobs.settings import load_settings
from tests.conftest import ROOT

DAY = "2026-01-31"
FAST = {
    "families": ["popularity", "als", "lightfm"],
    "models": {"lightfm": {"epochs": 10}},
    "publish": {"top_n": 10},
}


def recs(engine) -> pd.DataFrame:  # noqa: ANN001
    with engine.connect() as conn:
        return pd.read_sql(
            "SELECT user_id, item_id, rank, score, model_version FROM recommendations ORDER BY user_id, rank", conn)


def runs(engine, stage: str) -> pd.DataFrame:  # noqa: ANN001
    with engine.connect() as conn:
        return pd.read_sql(sa.text("SELECT * FROM model_runs WHERE stage = :s ORDER BY run_date, family"), conn,
                           params={"s": stage})


def test_rerun_of_a_date_reproduces_metrics_and_recommendations(tmp_path, small_inbox):
    settings = load_settings({"home": str(tmp_path / "home"), **FAST}, environ={})
    first = run_pipeline(settings, DAY)
    engine = engine_for(settings)
    recs1, cands1 = recs(engine), runs(engine, "candidate")
    parts1 = {p.name: p.read_bytes() for p in Lake.of(settings).ratings.rglob("*.parquet")}
    assert len(recs1) == 120 * 10 and recs1["model_version"].nunique() == 1
    assert set(cands1["status"]) <= {"promoted", "rejected"} and (cands1["status"] == "promoted").sum() == 1
    assert first.decision.promoted and "first run" in first.decision.reason

    second = run_pipeline(settings, DAY)
    pd.testing.assert_frame_equal(recs(engine), recs1)
    cands2 = runs(engine, "candidate")
    cols = ["family", "model_version", "ndcg_at_k", "precision_at_k", "map_at_k", "coverage", "status"]
    pd.testing.assert_frame_equal(cands2[cols], cands1[cols])
    assert {p.name: p.read_bytes() for p in Lake.of(settings).ratings.rglob("*.parquet")} == parts1
    assert second.decision == first.decision
    assert len(runs(engine, "gate")) == 1  # the rerun replaced, not added


def test_gate_keeps_champion_unless_beaten_by_margin(tmp_path, small_inbox):
    settings = load_settings({"home": str(tmp_path / "home"), **FAST}, environ={})
    first = run_pipeline(settings, "2026-01-30")
    champion = first.decision.family
    strict = settings.model_copy(update={"gate": settings.gate.model_copy(update={"margin": 1.0})})
    run_pipeline(strict, DAY)
    engine = engine_for(settings)
    gate = runs(engine, "gate").set_index("run_date")
    assert gate.loc[DAY, "family"] == champion and gate.loc[DAY, "status"] == "champion_kept"
    assert "kept" in gate.loc[DAY, "reason"]
    # A challenger only: the champion's family has no candidate, so the best one takes over.
    others = [f for f in FAST["families"] if f != champion]
    narrow = strict.model_copy(update={"families": others})
    decision = promote(narrow, engine, DAY)
    assert decision.promoted and decision.family in others and "has no candidate" in decision.reason


@pytest.mark.slow
def test_cli_run_publishes_from_the_families_that_succeed_when_tensorflow_is_missing(tmp_path, small_inbox):
    # A real "TensorFlow not installed": an import of tensorflow fails in the child process.
    blocker = tmp_path / "no_tf"
    (blocker / "tensorflow").mkdir(parents=True)
    (blocker / "tensorflow" / "__init__.py").write_text("raise ImportError('No module named tensorflow')\n")
    env = {**os.environ, "RECJOBS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(blocker),
           "RECJOBS_FAMILIES": '["popularity", "als", "tfrs"]', "RECJOBS_PUBLISH__TOP_N": "5"}
    out = subprocess.run([sys.executable, "-m", "recjobs.cli", "run", "--date", DAY], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr[-3000:]
    assert "tfrs" in out.stdout and "FAILED" in out.stdout and "No module named tensorflow" in out.stdout
    settings = load_settings({"home": str(tmp_path / "home")}, environ={})
    engine = engine_for(settings)
    cands = runs(engine, "candidate").set_index("family")
    assert cands.loc["tfrs", "status"] == "failed"
    assert set(cands.drop(index="tfrs")["status"]) <= {"promoted", "rejected"}
    assert len(recs(engine)) == 120 * 5


def test_cli_reports_missing_data_and_bad_settings_clearly(tmp_path):
    env = {**os.environ, "RECJOBS_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "recjobs.cli", "split", "--date", DAY], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "ingest some first" in out.stderr
    env["RECJOBS_MODELS__ALS__FACTOR"] = "8"
    out = subprocess.run([sys.executable, "-m", "recjobs.cli", "settings"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "RECJOBS_MODELS__ALS__FACTOR" in out.stderr


def test_cli_run_refuses_a_far_future_date_in_one_line_and_writes_nothing(tmp_path, small_inbox):
    home = tmp_path / "home"
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECJOBS_")}
    typo = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=36 * 365)).isoformat()
    out = subprocess.run([sys.executable, "-m", "recjobs.cli", "run", "--date", typo], cwd=ROOT,
                         env={**env, "RECJOBS_HOME": str(home)}, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1 and "runs.max_future_days" in out.stderr and typo in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    # Nothing ingested, split or published: not even the database file.
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before


def test_schema_files_match_the_code():
    from recjobs.db import schema_sql

    for dialect in ("sqlite", "postgresql"):
        path = Path(ROOT / "sql" / f"schema_{dialect}.sql")
        assert path.read_text() == schema_sql(dialect), f"regenerate {path}: recjobs schema --dialect {dialect}"


@pytest.mark.slow
def test_demo_command_twice_gives_the_same_published_rows(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "RECJOBS_FAMILIES": '["popularity", "als"]'}
    outputs = []
    for _ in range(2):
        # An explicit --end: the default (yesterday) would move the sample's dates every day.
        out = subprocess.run([sys.executable, "-m", "recjobs.cli", "demo", "--end", "2026-01-31"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs.append(out.stdout)
    assert f"recommendations: 25000 rows for 500 users in sqlite:///{tmp_path}/.recjobs/recjobs.db" in outputs[0]
    # The sample's dates, and a backfill over its last week that can be pasted as it is.
    assert "sample dates: 2025-10-04 .. 2026-01-31 (UTC; --end sets the last day)" in outputs[0]
    assert ("  airflow backfill create --dag-id recs_nightly --from-date 2026-01-25 --to-date 2026-01-31 "
            "--reprocess-behavior completed\n") in outputs[0]
    assert "run 2026-01-31" in outputs[0]
    sample = [o[o.index("sample (SELECT"):] for o in outputs]
    assert sample[0] == sample[1] and sample[0].count(" rank ") == 5


def test_stages_after_split_read_only_the_split_matrices(tmp_path, small_inbox):
    """Split codes the data once; train, evaluate, gate, final and publish never re-read the lake."""
    import shutil

    from recjobs.data import Holdout, Interactions, Lake, temporal_split
    from recjobs.ingest import ingest_inbox
    from recjobs.pipeline import (
        evaluate_candidate,
        load_matrix,
        prepare,
        publish,
        train_candidate,
        train_final,
    )
    from recjobs.runs import cutoff_of

    settings = load_settings({"home": str(tmp_path / "home"), **FAST, "families": ["popularity", "als"]},
                             environ={})
    engine = engine_for(settings)
    ingest_inbox(settings, engine)
    day = pd.Timestamp(DAY).date()
    out = prepare(settings, day)
    # The columnar split equals the row-wise (pandas, string ids) one it replaced.
    frame = Lake.of(settings).read_ratings(cutoff_of(day))
    train_frame, hold_frame = temporal_split(frame, settings.split)
    for part, rows in (("full", frame), ("train", train_frame)):
        got, want = load_matrix(settings, day, part), Interactions.from_frame(rows)
        assert list(got.user_ids) == list(want.user_ids) and list(got.item_ids) == list(want.item_ids)
        assert (got.matrix != want.matrix).nnz == 0
        assert np.array_equal(got.item_last_seen, want.item_last_seen)
    train = load_matrix(settings, day, "train")
    hold, want = Holdout.load(out / "holdout"), Holdout.from_frame(hold_frame, train)
    assert np.array_equal(hold.user_rows, want.user_rows) and np.array_equal(hold.item_cols, want.item_cols)
    assert len(hold.user_rows) > 0

    shutil.rmtree(Lake.of(settings).ratings)  # from here on, only the split's own files exist
    for family in settings.families:
        train_candidate(settings, engine, day, family)
        evaluate_candidate(settings, engine, day, family)
    promote(settings, engine, day)
    train_final(settings, engine, day)
    results = publish(settings, engine, day)
    assert results[0].rows == 120 * 10 and results[0].live


def test_tune_scores_a_grid_on_the_training_part_only(tmp_path, small_inbox):
    env = {**os.environ, "RECJOBS_HOME": str(tmp_path / "home")}
    run = [sys.executable, "-m", "recjobs.cli"]
    assert subprocess.run([*run, "ingest"], cwd=ROOT, env=env, capture_output=True, timeout=300).returncode == 0
    out = subprocess.run([*run, "tune", "--date", DAY, "--family", "popularity", "--grid",
                          '{"half_life_days": [null, 30.0]}'], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 grid points" in out.stdout and out.stdout.count("ndcg@10") == 2
