"""Publishing in shards (one mapped Airflow task each) gives exactly the unsharded rows."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs.ingest import ingest_inbox
from recjobs.pipeline import (
    PipelineError,
    engine_for,
    evaluate_candidate,
    load_published,
    prepare,
    promote,
    publish,
    rank_shard,
    train_candidate,
    train_final,
)
from recjobs.settings import load_settings
from tests.conftest import ROOT

DAY = "2026-01-31"
COLUMNS = ["user_id", "item_id", "rank", "score", "model_version"]


def _trained(home, family: str = "als", **publish):  # noqa: ANN001, ANN003, ANN202
    settings = load_settings({"home": str(home), "families": [family], "publish": {"top_n": 10, **publish}},
                             environ={})
    engine = engine_for(settings)
    ingest_inbox(settings, engine)
    prepare(settings, DAY)
    train_candidate(settings, engine, DAY, family)
    evaluate_candidate(settings, engine, DAY, family)
    promote(settings, engine, DAY)
    train_final(settings, engine, DAY)
    return settings, engine


def _live(engine, kind: str = "recommendations") -> pd.DataFrame:  # noqa: ANN001
    key = "user_id" if kind == "recommendations" else "item_id"
    cols = COLUMNS if kind == "recommendations" else ["item_id", "similar_item_id", "rank", "score", "model_version"]
    with engine.connect() as conn:
        return pd.read_sql(f"SELECT {', '.join(cols)} FROM {kind} ORDER BY {key}, rank", conn)


def test_sharded_publish_gives_the_unsharded_rows(tmp_path, settings, small_inbox):
    whole, whole_engine = _trained(settings.home)
    publish(whole, whole_engine, DAY)
    expected = {k: _live(whole_engine, k) for k in ("recommendations", "similar_items")}
    sharded = whole.model_copy(update={"publish": whole.publish.model_copy(update={"shards": 3})})
    # Shards ranked out of order, as parallel workers finish, then one load.
    for shard in (2, 0, 1):
        rank_shard(sharded, DAY, shard)
    load_published(sharded, whole_engine, DAY)
    for kind, rows in expected.items():
        pd.testing.assert_frame_equal(_live(whole_engine, kind), rows)
    assert len(expected["recommendations"]) == 120 * 10


def test_sharded_publish_through_the_clustered_index_gives_the_unsharded_rows(tmp_path, settings, small_inbox):
    # Its candidate lists belong to user clusters, not to the batches a shard happens to rank.
    whole, engine = _trained(settings.home, ann="clustered", ann_lists=6, ann_recall=0.8)
    publish(whole, engine, DAY)
    expected = _live(engine)
    sharded = whole.model_copy(update={"publish": whole.publish.model_copy(update={"shards": 3})})
    for shard in (1, 2, 0):
        rank_shard(sharded, DAY, shard)
    load_published(sharded, engine, DAY)
    # To the bit: a user's scores must not depend on which users share its batch.
    pd.testing.assert_frame_equal(_live(engine), expected, check_exact=True)
    assert len(expected) == 120 * 10


def test_load_names_shards_not_yet_ranked(tmp_path, settings, small_inbox):
    sharded, engine = _trained(settings.home, shards=4)
    rank_shard(sharded, DAY, 0)
    rank_shard(sharded, DAY, 2)
    with pytest.raises(PipelineError, match=r"shard\(s\) 1, 3 of 4 not ranked"):
        load_published(sharded, engine, DAY)
    with pytest.raises(PipelineError, match="shard 4 is not in 0..3"):
        rank_shard(sharded, DAY, 4)


@pytest.mark.slow
def test_a_shard_killed_mid_way_and_retried_leaves_no_duplicate_or_missing_rows(tmp_path, settings, small_inbox):
    whole, engine = _trained(settings.home, family="popularity")
    publish(whole, engine, DAY)
    expected = _live(engine)
    env = {**os.environ, "RECJOBS_HOME": str(whole.home), "RECJOBS_FAMILIES": '["popularity"]',
           "RECJOBS_PUBLISH__TOP_N": "10", "RECJOBS_PUBLISH__SHARDS": "2", "RECJOBS_PUBLISH__CHUNK_USERS": "16"}
    cli = [sys.executable, "-m", "recjobs.cli", "publish", "--date", DAY]
    for shard in ("0", "1"):
        killed = subprocess.run([*cli, "--shard", shard], cwd=ROOT, capture_output=True, text=True, timeout=300,
                                env={**env, "RECJOBS_FAULT_AT": "publish.mid_shard"})
        assert killed.returncode == -9, killed.stderr[-2000:]
    # The worker's retry: each shard ranked again from the start, then the one load.
    for shard in ("1", "0"):
        retry = subprocess.run([*cli, "--shard", shard], cwd=ROOT, capture_output=True, text=True, timeout=300,
                               env=env)
        assert retry.returncode == 0, retry.stderr[-2000:]
    loaded = subprocess.run([*cli, "--load"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    got = _live(engine)
    assert not got.duplicated(["user_id", "rank"]).any()
    pd.testing.assert_frame_equal(got, expected)


def test_load_refuses_shards_ranked_with_another_model_than_the_final_one(tmp_path, settings, small_inbox):
    old, engine = _trained(settings.home, family="als")
    rank_shard(old, DAY, 0)
    # A new promote and `train --final` after the ranking: another champion for the date.
    new, _ = _trained(settings.home, family="popularity")
    final = engine.connect().execute(sa.text("SELECT model_version FROM model_runs WHERE stage = 'final'")).scalar_one()
    assert final.startswith("popularity-")
    env = {**os.environ, "RECJOBS_HOME": str(new.home), "RECJOBS_FAMILIES": '["popularity"]',
           "RECJOBS_PUBLISH__TOP_N": "10"}
    out = subprocess.run([sys.executable, "-m", "recjobs.cli", "publish", "--date", DAY, "--load"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and out.stderr.count("\n") == 1, out.stderr[-3000:]
    assert "als-20260131-full-" in out.stderr and final in out.stderr
    assert f"recjobs publish --date {DAY}" in out.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM publications")).scalar_one() == 0
    # Ranked again with the final model, the shards load.
    rank_shard(new, DAY, 0)
    assert load_published(new, engine, DAY)[0].live
    assert set(_live(engine)["model_version"]) == {final}


def test_an_allow_list_that_allows_nothing_is_refused_before_anything_goes_live(tmp_path, settings, small_inbox):
    whole, engine = _trained(settings.home, family="als")
    publish(whole, engine, DAY)
    before = {k: _live(engine, k) for k in ("recommendations", "similar_items")}
    with engine.connect() as conn:
        popular = conn.execute(sa.text("SELECT * FROM popular_items ORDER BY rank")).all()
        publications = conn.execute(sa.text("SELECT * FROM publications ORDER BY id")).all()
    assert len(popular) > 0
    (whole.home / "allow.csv").write_text("item_id\nnot-in-the-catalogue\n")
    rules = whole.rules.model_copy(update={"allow_items": "allow.csv"})
    allowing_nothing = whole.model_copy(update={"rules": rules})
    with pytest.raises(PipelineError, match="rules.allow_items") as refused:
        publish(allowing_nothing, engine, DAY)
    assert "\n" not in str(refused.value) and "0 rows" in str(refused.value)
    for kind, rows in before.items():
        pd.testing.assert_frame_equal(_live(engine, kind), rows)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT * FROM popular_items ORDER BY rank")).all() == popular
        assert conn.execute(sa.text("SELECT * FROM publications ORDER BY id")).all() == publications
