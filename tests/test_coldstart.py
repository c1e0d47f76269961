"""Cold start on the real pipeline: new items on their first night, thin users, new users by segment."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs.data import Interactions
from recjobs.models import get_family
from recjobs.pipeline import engine_for, load_published, rank_shard, run_pipeline
from recjobs.ranking import align_seen
from recjobs.settings import load_settings
from tests.conftest import ROOT

DAY = "2026-01-31"
MID = int(dt.datetime(2026, 1, 15, tzinfo=dt.UTC).timestamp())


def _read(engine: sa.Engine, query: str, **params: object) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.text(query), conn, params=params)


def _lists(engine: sa.Engine) -> dict[str, pd.DataFrame]:
    return {
        "recommendations": _read(engine, "SELECT user_id, item_id, rank, score, model_version FROM recommendations "
                                         "ORDER BY user_id, rank"),
        "similar_items": _read(engine, "SELECT item_id, similar_item_id, rank, score FROM similar_items "
                                       "ORDER BY item_id, rank"),
    }


def test_a_new_item_with_features_is_in_lists_on_its_first_night(settings, small_inbox):
    # i_new has a known genre and no ratings; i_odd only a genre no rated item has.
    pd.DataFrame({"item_id": ["i_new", "i_odd"], "feature": ["genre=g0", "genre=never-seen"]}).to_csv(
        settings.inbox / "new_items_features.csv", index=False)
    settings = load_settings({"home": str(settings.home), "families": ["lightfm"],
                              "models": {"lightfm": {"epochs": 10}}, "publish": {"top_n": 10}}, environ={})
    run_pipeline(settings, DAY)
    engine = engine_for(settings)
    lists = _lists(engine)
    recs, similar = lists["recommendations"], lists["similar_items"]
    assert (recs["item_id"] == "i_new").any(), "the new item is in no user's list"
    assert (similar["item_id"] == "i_new").sum() == settings.publish.similar_n
    assert (similar["similar_item_id"] == "i_new").any()
    # The new item's neighbours lean to its genre (g0), by the generated titles.
    titles = _read(engine, "SELECT item_id, title FROM items").set_index("item_id")["title"]
    neighbours = similar.loc[similar["item_id"] == "i_new", "similar_item_id"].head(5)
    assert sum(titles[i].endswith("(g0)") for i in neighbours) >= 3
    # A feature no trained item has gives no representation: not published at all.
    assert not (recs["item_id"] == "i_odd").any() and not (similar["item_id"] == "i_odd").any()
    final = _read(engine, "SELECT reason FROM model_runs WHERE stage = 'final'")
    assert "1 new items scored from their features" in final["reason"].iloc[0]
    # Sharded ranking of the extended model gives the same rows.
    sharded = settings.model_copy(update={"publish": settings.publish.model_copy(update={"shards": 3})})
    for shard in (1, 2, 0):
        rank_shard(sharded, DAY, shard)
    load_published(sharded, engine, DAY)
    for kind, rows in _lists(engine).items():
        pd.testing.assert_frame_equal(rows, lists[kind])


def test_a_user_with_one_interaction_gets_the_neighbours_of_their_item(settings, small_inbox):
    pd.DataFrame({"user_id": ["u_thin"], "item_id": ["i3"], "rating": [4.0], "timestamp": [MID]}).to_csv(
        settings.inbox / "thin_user_ratings.csv", index=False)
    settings = load_settings({"home": str(settings.home), "families": ["als"], "publish": {"top_n": 10}},
                             environ={})
    run_pipeline(settings, DAY)
    engine = engine_for(settings)
    # By default ALS ranks its thin users itself (its user vector is a least-squares fit to them).
    before = _lists(engine)["recommendations"]
    thin = settings.model_copy(update={"coldstart": settings.coldstart.model_copy(
        update={"min_interactions": 3, "thin_user_families": ["als"]})})
    rank_shard(thin, DAY)
    load_published(thin, engine, DAY)
    after, similar = (_lists(engine)[k] for k in ("recommendations", "similar_items"))
    mine = after.loc[after["user_id"] == "u_thin"]
    # One item: the sum of its neighbours' similarities is its similar-items list.
    want = similar.loc[similar["item_id"] == "i3", "similar_item_id"].head(10)
    assert list(mine["item_id"]) == list(want) and len(mine) == 10
    assert list(before.loc[before["user_id"] == "u_thin", "item_id"]) != list(want)
    # Everyone else (at least 5 interactions each) keeps the model's own list.
    others = after["user_id"] != "u_thin"
    pd.testing.assert_frame_equal(after[others].reset_index(drop=True),
                                  before[before["user_id"] != "u_thin"].reset_index(drop=True))


def _segment_inbox(settings) -> None:  # noqa: ANN001
    users = [f"u{i}" for i in range(1, 121)]
    occupation = ["occupation=a" if i <= 60 else "occupation=b" for i in range(1, 121)]
    frame = pd.DataFrame({
        "user_id": [*users, *users, "u_new", "u_lonely"],
        "feature": [*occupation, *(["gender=x"] * 120), "occupation=a", "occupation=c"],
    })
    frame.to_csv(settings.inbox / "user_features.csv", index=False)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_new_users_get_their_segments_popular_items_by_the_documented_query(request, settings, small_inbox,
                                                                            backend):
    _segment_inbox(settings)
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    settings = load_settings({"home": str(settings.home), "database_url": url, "families": ["popularity"],
                              "publish": {"top_n": 10, "popular_n": 20},
                              "coldstart": {"segment_prefix": "occupation=", "min_segment_users": 20}}, environ={})
    run_pipeline(settings, DAY)
    engine = engine_for(settings)
    seg = _read(engine, "SELECT segment, rank, item_id, score FROM segment_popular_items ORDER BY segment, rank")
    assert set(seg["segment"]) == {"occupation=a", "occupation=b"}  # c has one user: no list of its own
    # The lists are the counts of each segment's users per item, ties by item id.
    ratings = pd.read_csv(settings.inbox / "synthetic_ratings.csv", dtype={"user_id": str, "item_id": str})
    in_a = ratings[ratings["user_id"].str[1:].astype(int) <= 60]
    counts = in_a.groupby("item_id")["user_id"].nunique().reset_index(name="n")
    want = counts.sort_values(["n", "item_id"], ascending=[False, True]).head(20)
    got = seg[seg["segment"] == "occupation=a"]
    assert list(got["item_id"]) == list(want["item_id"]) and list(got["score"]) == list(want["n"].astype(float))

    query = (ROOT / "sql" / "coldstart.sql").read_text()
    query = "\n".join(line for line in query.splitlines() if not line.lstrip().startswith("--")).strip().rstrip(";")
    served = {user: _read(engine, query, user_id=user) for user in ("u7", "u_new", "u_lonely", "nobody")}
    assert set(served["u7"]["source"]) == {"personal"}
    assert set(served["u_new"]["source"]) == {"segment"}
    assert list(served["u_new"]["item_id"]) == list(want["item_id"].head(10))
    glob = _read(engine, "SELECT item_id FROM popular_items ORDER BY rank LIMIT 10")
    for user in ("u_lonely", "nobody"):
        assert set(served[user]["source"]) == {"popular"}
        assert list(served[user]["item_id"]) == list(glob["item_id"])


def test_ranking_refuses_a_model_whose_items_do_not_start_with_the_matrix_items():
    frame = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "y"], "rating": [1.0, 1.0, 1.0],
                          "timestamp": pd.to_datetime([1, 2, 3], unit="s", utc=True)})
    seen = Interactions.from_frame(frame)
    model = get_family("popularity")().fit(seen)
    assert align_seen(seen, model) is seen
    model.item_ids = np.asarray(["x", "y", "z"], dtype=object)  # a cold item appended
    padded = align_seen(seen, model)
    assert padded is not None and padded.matrix.shape == (2, 3) and padded.matrix[:, 2].nnz == 0
    model.item_ids = np.asarray(["y", "x", "z"], dtype=object)
    assert align_seen(seen, model) is None
