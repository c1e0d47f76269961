"""Schema upgrades: a database made by an older version gains new columns in place."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from recjobs.db import ensure_schema, make_engine, metadata


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
