"""The schema: upgrades of a database made by an older version, in place; ids of any length."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs import columns as C
from recjobs.db import (
    LIST_COLUMNS,
    ensure_schema,
    history,
    items,
    make_engine,
    metadata,
    recommendations_history,
    view_sql,
)
from recjobs.publish import publish_list, replace_fallback_lists, rollback
from tests.conftest import ROOT


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:  # noqa: ANN001
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    return request.getfixturevalue("postgres_url")


def test_ensure_schema_adds_columns_missing_from_an_older_database(url):
    engine = make_engine(url)
    # An "older version" of ingest_log: the same table less its nullable columns, with a row in it.
    current = metadata.tables["ingest_log"]
    old = sa.Table("ingest_log", sa.MetaData(),
                   *(c._copy() for c in current.columns if not c.nullable or c.primary_key))
    old.create(engine)
    with engine.begin() as conn:
        conn.execute(old.insert().values(
            content_hash="h", source_path="f.csv", kind="ratings", rows_read=1, rows_valid=1,
            rows_quarantined=0, duplicates_dropped=0, ingested_at=sa.func.now()))
    ensure_schema(engine)
    ensure_schema(engine)  # idempotent
    names = {c["name"] for c in sa.inspect(engine).get_columns("ingest_log")}
    assert names == {c.name for c in current.columns}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT source_path FROM ingest_log")).scalar_one() == "f.csv"
    engine.dispose()


def _long_ids() -> tuple[str, str]:
    """A 2,000- and a 20,000-character id: unicode, quotes, separators; random, so they do not compress."""
    rnd = random.Random(13)
    alphabet = string.ascii_letters + string.digits + "éß漢字🙂 ,'\"\t;%_\\"
    return "".join(rnd.choice(alphabet) for _ in range(2000)), "".join(rnd.choice(alphabet) for _ in range(20000))


def _ranked(keys: list[str], targets: list[str], kind: str, version: str) -> pd.DataFrame:
    key, target = (c.name for c in LIST_COLUMNS[kind][:2])
    return pd.DataFrame({key: [k for k in keys for _ in targets], target: targets * len(keys),
                         C.RANK: list(range(1, len(targets) + 1)) * len(keys), C.SCORE: 1.0, C.MODEL_VERSION: version})


def _list_of(engine: sa.Engine, kind: str, key: str) -> list[str]:
    column = "user_id" if kind == "recommendations" else "item_id"
    target = "item_id" if kind == "recommendations" else "similar_item_id"
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT {target} FROM {kind} WHERE {column} = :k ORDER BY rank"),
                            {"k": key}).scalars().all()


def test_ids_of_any_length_are_published_whole(url):
    engine = make_engine(url)
    ensure_schema(engine)
    two_k, twenty_k = _long_ids()
    ids = [two_k, twenty_k, "short"]
    publish_list(engine, "recommendations", "2026-01-01", "v1", [_ranked(ids, ids, "recommendations", "v1")])
    publish_list(engine, "similar_items", "2026-01-01", "v1", [_ranked(ids, ids[::-1], "similar_items", "v1")],
                 history=False)
    segments = pd.DataFrame({C.USER: [twenty_k, "new user"], C.SEGMENT: [two_k, two_k]})
    with engine.begin() as conn:
        replace_fallback_lists(conn, [{C.RANK: r + 1, C.ITEM: i, C.SCORE: 1.0, C.RUN_DATE: "2026-01-01"}
                                      for r, i in enumerate(ids)],
                               [{C.SEGMENT: two_k, C.RANK: r + 1, C.ITEM: i, C.SCORE: 1.0, C.RUN_DATE: "2026-01-01"}
                                for r, i in enumerate(ids)], segments)
        conn.execute(items.insert(), [{C.ITEM: i, C.TITLE: f"title {n}"} for n, i in enumerate(ids)])
    for key in ids:
        assert _list_of(engine, "recommendations", key) == ids
        assert _list_of(engine, "similar_items", key) == ids[::-1]
    with engine.connect() as conn:
        history = conn.execute(sa.text("SELECT item_id FROM recommendations_history WHERE user_id = :u "
                                       "AND run_date = '2026-01-01' ORDER BY rank"), {"u": twenty_k}).scalars().all()
        popular = conn.execute(sa.text("SELECT item_id FROM popular_items ORDER BY rank")).scalars().all()
        segment = conn.execute(sa.text("SELECT s.item_id FROM segment_popular_items AS s JOIN user_segments AS u "
                                       "ON u.segment = s.segment WHERE u.user_id = :u ORDER BY s.rank"),
                               {"u": "new user"}).scalars().all()
        title = conn.execute(sa.text("SELECT title FROM items WHERE item_id = :i"), {"i": twenty_k}).scalar_one()
    assert history == popular == segment == ids and title == "title 1"
    # The same id twice is still refused (the uniqueness the indexes keep, whatever the length).
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(items.insert(), [{C.ITEM: twenty_k, C.TITLE: "again"}])
    engine.dispose()


def _script(engine: sa.Engine, path: Path) -> None:
    text = path.read_text()
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.connection.dbapi_connection.executescript(text)
        else:
            conn.exec_driver_sql(text)


def test_a_database_of_the_old_schema_is_upgraded_in_place(url):
    engine = make_engine(url)
    _script(engine, ROOT / "tests" / "data" / f"old_schema_{engine.dialect.name}.sql")
    # What the older release published: a live VARCHAR(128) version behind the view, and its history.
    rows = _ranked(["u1", "u2"], ["i1", "i2"], "recommendations", "old").assign(generated_at="2026-01-01 00:00:00+00")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE recommendations_v1 AS SELECT * FROM recommendations_v0")
        conn.execute(sa.text("INSERT INTO recommendations_v1 VALUES (:user_id, :item_id, :rank, :score, "
                             ":model_version, :generated_at)"), rows.to_dict("records"))
        conn.execute(sa.text("INSERT INTO recommendations_history SELECT '2026-01-01', user_id, item_id, rank, "
                             "score, model_version FROM recommendations_v1"))
        conn.execute(sa.text("INSERT INTO publications (kind, run_date, table_name, model_version, row_count, "
                             "is_live, published_at, dropped, live_seq) VALUES ('recommendations', '2026-01-01', "
                             "'recommendations_v1', 'old', 4, :t, '2026-01-01 00:00:00+00', :f, 1)"),
                     {"t": True, "f": False})
        for stmt in view_sql(conn, "recommendations", "recommendations_v1"):
            conn.exec_driver_sql(stmt)
    ensure_schema(engine)
    ensure_schema(engine)  # idempotent
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:  # the old history, moved into one partition a date
            assert list(history.partitions(conn).values()) == ["2026-01-01"]
            assert conn.execute(sa.text("SELECT COUNT(*) FROM recommendations_history")).scalar_one() == 4
        for table in ("recommendations_history", "popular_items", "segment_popular_items", "user_segments", "items"):
            types = {c["name"]: str(c["type"]) for c in sa.inspect(engine).get_columns(table)}
            assert all(types[c] == "TEXT" for c in (C.USER, C.ITEM, C.SEGMENT) if c in types), (table, types)
    two_k, twenty_k = _long_ids()
    ids = [two_k, twenty_k, "u1"]
    assert publish_list(engine, "recommendations", "2026-01-02", "new",
                        [_ranked(ids, ids, "recommendations", "new")]).live
    assert _list_of(engine, "recommendations", twenty_k) == ids
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM recommendations_history")).scalar_one() == 4 + 9
    # Back to the VARCHAR version, and forth again: the view follows each table's column types.
    rollback(engine)
    assert _list_of(engine, "recommendations", "u1") == ["i1", "i2"]
    assert publish_list(engine, "recommendations", "2026-01-03", "newer",
                        [_ranked(ids, ids, "recommendations", "newer")]).live
    assert _list_of(engine, "recommendations", two_k) == ids
    engine.dispose()


def test_history_columns_are_the_tables():
    assert tuple(c.name for c in recommendations_history.columns) == history.COLUMNS
