"""Business rules and re-ranking at publish: the real pipeline on generated data, real SQLite."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from recjobs.data import generate
from recjobs.errors import RulesError
from recjobs.evaluation import list_diversity, unit_rows
from recjobs.ingest import ingest_inbox
from recjobs.pipeline import (
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
from recjobs.ranking import load_rules
from recjobs.ranking.rerank import ItemSignals, _pack, greedy_rerank
from recjobs.settings import load_settings
from tests.conftest import SMALL

DAY = "2026-01-31"
TOP_N = 10


def _published(home, family: str = "als", **overrides):  # noqa: ANN001, ANN003, ANN202
    """Settings and engine after a real run up to the final model (not yet published)."""
    settings = load_settings({"home": str(home), "families": [family], "publish": {"top_n": TOP_N},
                              **overrides}, environ={})
    engine = engine_for(settings)
    ingest_inbox(settings, engine)
    prepare(settings, DAY)
    train_candidate(settings, engine, DAY, family)
    evaluate_candidate(settings, engine, DAY, family)
    promote(settings, engine, DAY)
    train_final(settings, engine, DAY)
    return settings, engine


def _table(engine, sql: str) -> pd.DataFrame:  # noqa: ANN001
    with engine.connect() as conn:
        return pd.read_sql(sa.text(sql), conn)


def _genres() -> pd.Series:
    features = generate(SMALL)["item_features"]
    return features.set_index("item_id")["feature"]


def test_excluded_items_never_appear_in_any_published_list(tmp_path, settings, small_inbox):
    ratings = generate(SMALL)["ratings"]
    # The most popular items: without the rule they head many lists.
    popular = ratings["item_id"].value_counts().index[:5].tolist()
    rules_dir = settings.home / "rules"
    rules_dir.mkdir(parents=True)
    pd.DataFrame({"item_id": popular}).to_csv(rules_dir / "withdrawn.csv", index=False)
    # Per-user exclusions from a table in the recommendations database: u1 may not get
    # half the catalogue (until a later date); u2's pair has expired.
    half = [f"i{i}" for i in range(1, 41)]
    engine = engine_for(settings)
    pd.DataFrame({"user_id": ["u1"] * len(half) + ["u2"], "item_id": half + ["i50"],
                  "until": ["2026-03-01"] * len(half) + ["2026-01-01"]}).to_sql("user_blocks", engine, index=False)
    rules = {"exclude_items": "rules/withdrawn.csv", "user_exclusions": "user_blocks"}
    settings, engine = _published(settings.home, rules=rules)
    publish(settings, engine, DAY)

    recs = _table(engine, "SELECT * FROM recommendations")
    sims = _table(engine, "SELECT * FROM similar_items")
    history = _table(engine, "SELECT * FROM recommendations_history")
    popular_list = _table(engine, "SELECT * FROM popular_items")
    assert len(sims) and len(popular_list)
    for column in (recs["item_id"], sims["similar_item_id"], history["item_id"], popular_list["item_id"]):
        assert not set(column) & set(popular)
    assert not set(recs.loc[recs["user_id"] == "u1", "item_id"]) & set(half)
    # Deeper candidates fill every list: each user still gets N items.
    assert (recs.groupby("user_id").size() == TOP_N).all() and recs["user_id"].nunique() == SMALL.n_users
    assert (sims.groupby("item_id").size() == settings.publish.similar_n).all()
    # The gate saw the lists as published; the raw ranking's metrics are kept beside them.
    cand = _table(engine, "SELECT * FROM model_runs WHERE stage = 'candidate'").iloc[0]
    raw = json.loads(cand["raw_metrics"])
    assert set(raw) >= {"ndcg_at_k", "precision_at_k", "recall_at_k", "map_at_k", "coverage"}
    assert raw["ndcg_at_k"] != cand["ndcg_at_k"]


def test_genre_cap_holds_for_every_user_and_mmr_raises_diversity(tmp_path, settings, small_inbox):
    cap = 3
    settings, engine = _published(settings.home, rerank={"category_cap": cap, "mmr_lambda": 0.5})
    publish(settings, engine, DAY)
    recs = _table(engine, "SELECT user_id, item_id, rank FROM recommendations")
    recs["genre"] = recs["item_id"].map(_genres())
    assert recs["genre"].notna().all()
    assert recs.groupby(["user_id", "genre"]).size().max() <= cap
    # 6 genres x 3 leave room for 10 items: every user's list is full.
    assert (recs.groupby("user_id").size() == TOP_N).all()
    assert (recs.groupby("user_id")["rank"].apply(lambda r: sorted(r) == list(range(1, TOP_N + 1)))).all()
    cand = _table(engine, "SELECT * FROM model_runs WHERE stage = 'candidate'").iloc[0]
    raw = json.loads(cand["raw_metrics"])
    assert cand["diversity"] > raw["diversity"]


def test_neutral_settings_record_no_raw_metrics(tmp_path, settings, small_inbox):
    settings, engine = _published(settings.home, family="popularity")
    cand = _table(engine, "SELECT * FROM model_runs WHERE stage = 'candidate'").iloc[0]
    assert cand["raw_metrics"] is None and cand["ndcg_at_k"] > 0


def test_mmr_increases_intra_list_diversity_on_a_known_case():
    # Two tight clusters; the model's top 6 are all from cluster A, cluster B follows.
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    vectors = np.stack([a + 0.01 * i * b for i in range(6)] + [b + 0.01 * i * a for i in range(6)])
    top = np.arange(12)[None, :]
    scores = np.linspace(1.0, 0.5, 12, dtype=np.float32)[None, :]
    signals = ItemSignals(vectors=unit_rows(vectors)[0].astype(np.float32))
    plain, _ = greedy_rerank(top, scores, 4, signals, mmr_lambda=1.0)
    mixed, mixed_scores = greedy_rerank(top, scores, 4, signals, mmr_lambda=0.5)
    assert plain.tolist() == [[0, 1, 2, 3]]
    assert set(mixed[0]) & set(range(6, 12))  # cluster B enters the list
    unit, usable = unit_rows(vectors)
    assert list_diversity(mixed, unit, usable)[0] > list_diversity(plain, unit, usable)[0] + 0.3
    # Published scores stay the model's.
    assert np.allclose(mixed_scores[0], scores[0, mixed[0]])


def test_category_cap_leaves_a_list_short_when_the_catalogue_cannot_fill_it():
    members = np.array([[1, 0]] * 5 + [[0, 1]], bool)  # five items of genre 0, one of genre 1
    signals = ItemSignals(categories=_pack(members), members=members)
    top = np.arange(6)[None, :]
    got, _ = greedy_rerank(top, np.linspace(1, 0, 6, dtype=np.float32)[None, :], 5, signals, category_cap=2)
    assert got.tolist() == [[0, 1, 5, -1, -1]]


def test_sharded_and_unsharded_publish_give_identical_rows_with_reranking(tmp_path, settings, small_inbox):
    ratings = generate(SMALL)["ratings"]
    (settings.home / "rules").mkdir(parents=True)
    pd.DataFrame({"item_id": ratings["item_id"].value_counts().index[:3]}).to_parquet(
        settings.home / "rules" / "out.parquet")
    rerank = {"mmr_lambda": 0.6, "category_cap": 3, "freshness_boost": 0.3, "freshness_days": 30}
    whole, engine = _published(settings.home, rerank=rerank, rules={"exclude_items": "rules/out.parquet"})
    publish(whole, engine, DAY)
    key = {"recommendations": "user_id", "similar_items": "item_id"}
    expected = {k: _table(engine, f"SELECT * FROM {k} ORDER BY {v}, rank").drop(columns="generated_at")
                for k, v in key.items()}
    sharded = whole.model_copy(update={"publish": whole.publish.model_copy(update={"shards": 3, "chunk_users": 7})})
    for shard in (2, 0, 1):
        rank_shard(sharded, DAY, shard)
    load_published(sharded, engine, DAY)
    for kind, rows in expected.items():
        got = _table(engine, f"SELECT * FROM {kind} ORDER BY {key[kind]}, rank").drop(columns="generated_at")
        pd.testing.assert_frame_equal(got, rows)
    assert len(expected["recommendations"]) == SMALL.n_users * TOP_N


def test_rules_errors_name_the_setting_and_source(tmp_path, settings):
    users, items = np.array(["u1", "u2"], object), np.array(["i1", "i2", "i3"], object)
    day = dt.date(2026, 1, 31)
    missing = settings.model_copy(update={"rules": settings.rules.model_copy(update={"exclude_items": "nope.csv"})})
    with pytest.raises(RulesError, match=r"rules.exclude_items = 'nope.csv': no such file"):
        load_rules(missing, day, users, items)
    path = tmp_path / "pairs.csv"
    path.write_text("user_id,item_id,until\nu1,i1,2026-02-01\nu1,i2,2026-01-30\nu2,i3,\nu9,i1,\n")
    ok = settings.model_copy(update={"rules": settings.rules.model_copy(update={"user_exclusions": str(path)})})
    rules = load_rules(ok, day, users, items)
    # u1/i2 expired the day before; u9 is unknown.
    assert rules.blocked is None and rules.user_excluded.toarray().tolist() == [[1, 0, 0], [0, 0, 1]]
    path.write_text("user_id,item_id,until\nu1,i1,soon\n")
    with pytest.raises(RulesError, match=r"until is not an ISO 8601 date in line\(s\) 2"):
        load_rules(ok, day, users, items)
    bad_table = settings.model_copy(update={"rules": settings.rules.model_copy(update={"allow_items": "no_such"})})
    with pytest.raises(RulesError, match="rules.allow_items = 'no_such': cannot read table no_such"):
        load_rules(bad_table, day, users, items)


def test_rerank_settings_are_checked(tmp_path):
    from recjobs.settings import SettingsError

    with pytest.raises(SettingsError, match="max_depth 2 is below depth 3"):
        load_settings({"home": str(tmp_path), "rerank": {"max_depth": 2}}, environ={})
    with pytest.raises(SettingsError, match="rules.exclude_items"):
        load_settings({"home": str(tmp_path), "rules": {"exclude_items": " "}}, environ={})
    env = load_settings({"home": str(tmp_path)}, environ={"RECJOBS_RULES__EXCLUDE_ITEMS": "withdrawn_items"})
    assert env.rules.exclude_items == "withdrawn_items" and not env.rerank.active


# -- issue 16: rules sources read ids as ingest does, and fail in one line ----------------

USERS = np.array(["u1", " pad user ", "239"], object)
ITEMS = np.array(["i1", " pad item ", "pad item", "239", "7.5"], object)


def _with_rules(settings, **rules):  # noqa: ANN001, ANN003, ANN202
    return settings.model_copy(update={"rules": settings.rules.model_copy(update=rules)})


def _blocked(settings, **rules) -> list[str]:  # noqa: ANN001, ANN003
    blocked = load_rules(_with_rules(settings, **rules), dt.date(2026, 1, 31), USERS, ITEMS).blocked
    return sorted(ITEMS[blocked]) if blocked is not None else []


def test_rules_sources_read_ids_by_the_ingest_rule(tmp_path, settings):
    # Issue 16 #6: float ids from Parquet ("239.0") matched nothing; #19: ids lost the
    # spaces a quoted CSV field (or a table's text) keeps.
    pd.DataFrame({"item_id": [239.0, 7.5]}).to_parquet(tmp_path / "withdrawn.parquet")
    assert _blocked(settings, exclude_items=str(tmp_path / "withdrawn.parquet")) == ["239", "7.5"]
    (tmp_path / "withdrawn.csv").write_text('item_id\n" pad item "\n i1 \n')
    assert _blocked(settings, exclude_items=str(tmp_path / "withdrawn.csv")) == [" pad item ", "i1"]
    (tmp_path / "allowed.tsv").write_text('item_id\tnote\n"pad item"\tx\n')
    assert _blocked(settings, allow_items=str(tmp_path / "allowed.tsv")) == [" pad item ", "239", "7.5", "i1"]
    engine = engine_for(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE withdrawn_real (item_id REAL)")  # read back as floats
        conn.exec_driver_sql("INSERT INTO withdrawn_real VALUES (239.0)")
        conn.exec_driver_sql("CREATE TABLE withdrawn_text (item_id TEXT)")
        conn.exec_driver_sql("INSERT INTO withdrawn_text VALUES (' pad item ')")
        conn.exec_driver_sql("CREATE TABLE user_pairs (user_id TEXT, item_id INTEGER, until TEXT)")
        conn.exec_driver_sql("INSERT INTO user_pairs VALUES (' pad user ', 239, NULL), ('u1', 239, '2026-01-30')")
    engine.dispose()
    assert _blocked(settings, exclude_items="withdrawn_real") == ["239"]
    assert _blocked(settings, exclude_items="withdrawn_text") == [" pad item "]
    rules = load_rules(_with_rules(settings, user_exclusions="user_pairs"), dt.date(2026, 1, 31), USERS, ITEMS)
    assert rules.user_excluded.toarray()[:, 3].tolist() == [0, 1, 0]  # u1's pair expired


@pytest.mark.parametrize(
    ("setting", "content", "expected"),
    [
        ("exclude_items", "item\ni1\n", r"missing column\(s\) \['item_id'\]"),
        ("exclude_items", "", "file is empty"),
        ("exclude_items", b"item_id\n\xff\n", r"malformed line\(s\) 2 \(line is not valid UTF-8\)"),
        ("exclude_items", 'item_id\n"i1\n', r"malformed line\(s\) 2 \(unterminated quote\)"),
        ("exclude_items", "item_id,x\ni1,1,2\n", r"malformed line\(s\) 2 \(expected 2 fields, found 3\)"),
        ("exclude_items", "item_id\n\"\"\n", r"empty item_id in line\(s\) 2"),
        ("user_exclusions", "user_id,item_id,until\nu1,i1,2026-02-01\nu1,i1,1/2/2026\n",
         r"until is not an ISO 8601 date in line\(s\) 3"),
        ("user_exclusions", "user_id,item_id,until\nu1,i1,1767225600\n", r"until is not an ISO 8601 date"),
        ("user_exclusions", "user_id,item_id,until\nu1,i1,99999-01-01\n", r"until is not an ISO 8601 date"),
    ],
)
def test_a_malformed_rules_file_fails_in_one_line_naming_the_setting(tmp_path, settings, setting, content,
                                                                      expected):
    path = tmp_path / "rules.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RulesError, match=rf"rules.{setting} = '{path}': .*{expected}"):
        load_rules(_with_rules(settings, **{setting: str(path)}), dt.date(2026, 1, 31), USERS, ITEMS)


def test_malformed_parquet_rules_and_a_missing_table_name_the_setting(tmp_path, settings):
    # Issue 16 #17: a table missing from an existing database escaped as pandas'
    # DatabaseError, never naming rules.allow_items.
    engine_for(settings).dispose()  # the database exists
    cases = {
        "allow_items": ("no_such_table", r"cannot read table no_such_table in sqlite"),
        "exclude_items": (str(tmp_path / "lists.parquet"), "cannot be an id"),
        "user_exclusions": (str(tmp_path / "numbers.parquet"), "until is not a date: it is a column of numbers"),
    }
    pq.write_table(pa.table({"item_id": pa.array([[1, 2]])}), tmp_path / "lists.parquet")
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": ["i1"], "until": [2.5]}), tmp_path / "numbers.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    cases["exclude_items "] = (str(tmp_path / "broken.parquet"), "not a readable Parquet file")
    for setting, (source, expected) in cases.items():
        name = setting.strip()
        with pytest.raises(RulesError, match=rf"^rules.{name} = '{source}': .*{expected}"):
            load_rules(_with_rules(settings, **{name: source}), dt.date(2026, 1, 31), USERS, ITEMS)
    # Dates and timestamps from Parquet are dates.
    pq.write_table(pa.table({"user_id": ["u1", "u1"], "item_id": ["i1", "239"],
                             "until": pa.array([dt.date(2026, 2, 1), dt.date(2026, 1, 30)])}),
                   tmp_path / "dated.parquet")
    rules = load_rules(_with_rules(settings, user_exclusions=str(tmp_path / "dated.parquet")),
                       dt.date(2026, 1, 31), USERS, ITEMS)
    assert rules.user_excluded.toarray()[0].tolist() == [1, 0, 0, 0, 0]
