"""item_segments: each item's most likely users, by the champion's scores, published like the other lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs import columns as C
from recjobs.db import schema_sql
from recjobs.errors import SettingsError
from recjobs.pipeline import (
    engine_for,
    final_model,
    load_matrix,
    load_published,
    rank_shard,
    run_pipeline,
)
from recjobs.ranking import align_seen
from recjobs.settings import load_settings

DAY = "2026-01-31"
M = 5


def segments(engine: sa.Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql("SELECT item_id, user_id, rank, score, model_version FROM item_segments "
                           "ORDER BY item_id, rank", conn)


def expected_segments(settings, items: list[str] | None = None) -> pd.DataFrame:  # noqa: ANN001
    """Every item's top-M users straight from the final model's scores, seen pairs left out."""
    model, _ = final_model(settings, pd.Timestamp(DAY).date())
    seen = align_seen(load_matrix(settings, pd.Timestamp(DAY).date(), "full"), model)
    scores = model.score(np.arange(len(model.user_ids))).astype(np.float32)
    scores[seen.exclusions().toarray() > 0] = -np.inf
    rows = []
    for j, item in enumerate(model.item_ids):
        if items is not None and item not in items:
            continue
        # Best first; ties to the lower user index (ids are sorted).
        order = np.lexsort((np.arange(len(model.user_ids)), -scores[:, j]))[:M]
        for rank, u in enumerate(order, 1):
            if np.isfinite(scores[u, j]):
                rows.append((item, model.user_ids[u], rank, float(scores[u, j])))
    return pd.DataFrame(rows, columns=[C.ITEM, C.USER, C.RANK, C.SCORE])


@pytest.mark.parametrize("shards", [1, 3])
def test_item_segments_agree_with_the_champions_scores(tmp_path, small_inbox, shards):
    settings = load_settings({"home": str(small_inbox[0].parents[1]), "families": ["ease"],
                              "publish": {"top_n": 5, "shards": shards, "chunk_users": 16},
                              "item_segments": {"top_users": M}}, environ={})
    run_pipeline(settings, DAY)
    engine = engine_for(settings)
    got = segments(engine)
    want = expected_segments(settings)
    assert got["model_version"].nunique() == 1
    pd.testing.assert_frame_equal(got[[C.ITEM, C.USER, C.RANK]].reset_index(drop=True),
                                  want[[C.ITEM, C.USER, C.RANK]].sort_values([C.ITEM, C.RANK]).reset_index(drop=True),
                                  check_dtype=False)
    np.testing.assert_allclose(got[C.SCORE].to_numpy(),
                               want.sort_values([C.ITEM, C.RANK])[C.SCORE].to_numpy(), rtol=1e-5)
    # A user's segment never holds an item they have seen.
    with engine.connect() as conn:
        recs = pd.read_sql("SELECT user_id, item_id FROM recommendations", conn)
    assert len(recs) == 120 * 5


def test_item_segments_for_listed_items_and_turned_off_leaves_none_live(tmp_path, small_inbox):
    base = {"home": str(small_inbox[0].parents[1]), "families": ["popularity"], "publish": {"top_n": 5}}
    settings = load_settings({**base, "item_segments": {"top_users": M, "items": ["i3", "i7", "nope"]}}, environ={})
    run_pipeline(settings, DAY)
    engine = engine_for(settings)
    got = segments(engine)
    assert set(got[C.ITEM]) == {"i3", "i7"} and (got.groupby(C.ITEM).size() == M).all()
    want = expected_segments(settings, ["i3", "i7"])
    assert list(got[C.USER]) == list(want.sort_values([C.ITEM, C.RANK])[C.USER])
    # Off again: the next publish makes an empty version live, so no stale audience remains.
    off = load_settings(base, environ={})
    day = pd.Timestamp(DAY).date()
    rank_shard(off, day, 0)
    load_published(off, engine, day)
    assert segments(engine).empty
    with engine.connect() as conn:
        kinds = conn.execute(sa.text("SELECT kind, row_count FROM publications WHERE is_live")).all()
    assert dict(kinds)["item_segments"] == 0


@pytest.mark.parametrize(("override", "named"), [
    ({"top_users": -1}, "item_segments.top_users"),
    ({"top_users": 100_000}, "item_segments.top_users"),
    ({"items": []}, "item_segments.items"),
    ({"items": ["ok", ""]}, "item_segments.items"),
])
def test_item_segments_settings_errors_name_the_setting(tmp_path, override, named):
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_settings({"home": str(tmp_path), "item_segments": override}, environ={})


def test_item_segments_are_in_the_schema_files():
    for dialect in ("sqlite", "postgresql"):
        assert "CREATE VIEW item_segments AS SELECT item_id, user_id, rank, score" in schema_sql(dialect)


def test_item_segments_on_postgresql_with_shards_and_a_rollback(small_inbox, postgres_url):
    from recjobs.publish import rollback_lists

    settings = load_settings({"home": str(small_inbox[0].parents[1]), "database_url": postgres_url,
                              "families": ["popularity"], "publish": {"top_n": 5, "shards": 2},
                              "item_segments": {"top_users": M}}, environ={})
    run_pipeline(settings, DAY)
    engine = engine_for(settings)
    first = segments(engine)
    want = expected_segments(settings).sort_values([C.ITEM, C.RANK])
    assert list(zip(first[C.ITEM], first[C.USER], strict=True)) == list(zip(want[C.ITEM], want[C.USER], strict=True))
    # A second publish of the date, then a rollback: the segments move back with the lists.
    day = pd.Timestamp(DAY).date()
    for shard in range(2):
        rank_shard(settings, day, shard)
    load_published(settings, engine, day)
    moves = rollback_lists(engine)
    assert isinstance(moves["item_segments"], tuple)
    pd.testing.assert_frame_equal(segments(engine), first)
    engine.dispose()
