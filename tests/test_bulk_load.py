"""The bulk load of a publish: binary COPY built from Arrow on PostgreSQL, executemany on SQLite.

Rows must arrive exactly as staged (types, NULL vs '', float bits, microseconds), and a
load killed part-way must leave the live list and the bookkeeping as they were.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from recjobs import columns as C
from recjobs.db import ensure_schema, libpq_uri, make_engine
from recjobs.publish import bulk_load, load_staging, publish_list, rank_to_staging, read_staging
from tests.conftest import ROOT

UTC = dt.UTC
# Floats whose bits a text round trip could bend: negative zero, the smallest subnormal,
# the largest double, and values with 17 significant digits.
AWKWARD_FLOATS = [-0.0, 5e-324, 1.7976931348623157e308, 1 / 3, -2.2250738585072014e-308, 0.1 + 0.2, 1e-300]
AWKWARD_TEXT = ["", " ", "é€😀", 'quo"te,comma', "tab\tnew\nline\\back", "NULL", "\\N", "x" * 128]


@pytest.fixture
def pg(postgres_url: str) -> sa.Engine:
    engine = make_engine(postgres_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


def float_bits(values) -> list[int]:  # noqa: ANN001
    return np.asarray(values, dtype=np.float64).view(np.int64).tolist()


def test_every_supported_type_round_trips_exactly_with_nulls(pg):
    with pg.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE scratch (s varchar(128), t text, h int2, i int4, b int8, f float8, r float4, ok bool, "
            "tz timestamptz, naive timestamp)")
    frame = pd.DataFrame({
        "s": ["a", "", None, "é€😀"],
        "t": [None, "", "tab\tnew\nline", "\\N"],
        "h": pd.array([-32768, None, 0, 32767], "Int16"),
        "i": pd.array([1, None, -2**31, 2**31 - 1], "Int64"),
        "b": [-2**63, 0, 2**63 - 1, 7],
        "f": [math.pi, None, float("-inf"), -0.0],
        "r": [1.5, None, 3.25, float("inf")],
        "ok": pd.array([True, None, False, True], "boolean"),
        "tz": ["2026-01-01 00:00:00.123456+00:00", None, "1999-12-31T23:59:59.999999+02:00", "2000-01-01 00:00:00Z"],
        "naive": pd.to_datetime(["2026-01-01 00:00:00.000001", None, "1970-01-01 00:00:00.5", "2262-01-01 00:00:00.0"]),
    })
    # Arrow input keeps NaN a number (pandas treats it as missing), nanoseconds are truncated,
    # and a number loaded into text becomes its decimal text.
    arrow = pa.table({
        "s": ["z"], "t": pa.array([42], pa.int64()), "h": pa.array([1], pa.int16()), "i": pa.array([2], pa.int32()), "b": [3],
        "f": [float("nan")], "r": pa.array([float("nan")], pa.float32()), "ok": [False],
        "tz": pa.array([1_767_225_600_123_456_789], pa.timestamp("ns", tz="Europe/Paris")),
        "naive": pa.array([dt.datetime(1969, 7, 20, 20, 17, 40)], pa.timestamp("us")),
    })
    columns = list(frame.columns)
    with pg.begin() as conn:
        assert bulk_load(conn, "scratch", columns, [frame, frame.iloc[:0], arrow]) == 5
    with pg.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql(f"SELECT {', '.join(columns)} FROM scratch").all()]
    assert rows[:4] == [
        ("a", None, -32768, 1, -2**63, math.pi, 1.5, True, dt.datetime(2026, 1, 1, 0, 0, 0, 123456, UTC),
         dt.datetime(2026, 1, 1, 0, 0, 0, 1)),
        ("", "", None, None, 0, None, None, None, None, None),
        (None, "tab\tnew\nline", 0, -2**31, 2**63 - 1, float("-inf"), 3.25, False,
         dt.datetime(1999, 12, 31, 21, 59, 59, 999999, UTC), dt.datetime(1970, 1, 1, 0, 0, 0, 500000)),
        ("é€😀", "\\N", 32767, 2**31 - 1, 7, -0.0, float("inf"), True, dt.datetime(2000, 1, 1, tzinfo=UTC),
         dt.datetime(2262, 1, 1)),
    ]
    assert math.copysign(1, rows[3][5]) == -1  # negative zero kept its sign
    last = rows[4]
    assert last[:5] == ("z", "42", 1, 2, 3) and math.isnan(last[5]) and math.isnan(last[6]) and last[7] is False
    assert last[8] == dt.datetime(2026, 1, 1, 0, 0, 0, 123456, UTC)
    assert last[9] == dt.datetime(1969, 7, 20, 20, 17, 40)


def test_unsupported_column_type_is_refused_by_name(pg):
    with pg.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch (n numeric)")
    with pytest.raises(TypeError, match=r"n \(numeric\)"), pg.begin() as conn:
        bulk_load(conn, "scratch", ["n"], [pd.DataFrame({"n": [1.5]})])


def test_values_out_of_range_fail_the_load_rather_than_wrap(pg):
    with pg.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch (i int4)")
    with pytest.raises(pa.ArrowInvalid), pg.begin() as conn:
        bulk_load(conn, "scratch", ["i"], [pd.DataFrame({"i": [2**31]})])


def staged_frames(n_users: int, version: str) -> list[pd.DataFrame]:
    users = [f"u{u}" for u in range(n_users)]
    per = len(AWKWARD_FLOATS)
    return [pd.DataFrame({
        C.USER: np.repeat(users, per),
        C.ITEM: [AWKWARD_TEXT[(u + r) % len(AWKWARD_TEXT)] for u in range(n_users) for r in range(per)],
        C.RANK: np.tile(np.arange(1, per + 1, dtype=np.int32), n_users),
        C.SCORE: np.tile(AWKWARD_FLOATS, n_users),
        C.MODEL_VERSION: version,
    })]


def test_staged_rows_arrive_exactly_on_postgresql(pg, tmp_path):
    # Items include '' and awkward text; (user, rank) stays unique as the list's index requires.
    # Predicted ratings: the awkward floats, NULL on every third rank.
    frames = [f.assign(**{C.PREDICTED_RATING: np.where(f[C.RANK] % 3 == 0, np.nan, f[C.SCORE])})
              for f in staged_frames(50, "v1")]
    path = rank_to_staging(frames, "recommendations", tmp_path / "recs.parquet")
    result = load_staging(pg, "recommendations", path, "2026-01-01", "v1")
    staged = pq.read_table(path).to_pandas()
    with pg.connect() as conn:
        loaded = pd.read_sql(sa.text(f"SELECT * FROM {result.table_name} ORDER BY {C.USER}, {C.RANK}"), conn)
        published_at = conn.execute(sa.text("SELECT published_at FROM publications WHERE id = :i"),
                                    {"i": result.publication_id}).scalar_one()
        types = dict(conn.execute(sa.text(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = :t"),
            {"t": result.table_name}).all())
    staged = staged.sort_values([C.USER, C.RANK], ignore_index=True)
    assert result.rows == len(staged) == len(loaded)
    for col in (C.USER, C.ITEM, C.MODEL_VERSION):
        assert loaded[col].tolist() == staged[col].tolist()
    assert "" in loaded[C.ITEM].tolist() and loaded[C.ITEM].notna().all()
    assert loaded[C.RANK].tolist() == staged[C.RANK].tolist()
    assert float_bits(loaded[C.SCORE]) == float_bits(staged[C.SCORE])
    # generated_at is the publish's start, to the microsecond, on every row.
    assert set(loaded[C.GENERATED_AT].dt.to_pydatetime()) == {published_at}
    rated = loaded[C.RANK] % 3 != 0
    assert loaded.loc[~rated, C.PREDICTED_RATING].isna().all()
    assert float_bits(loaded.loc[rated, C.PREDICTED_RATING]) == float_bits(staged.loc[rated, C.SCORE])
    assert types == {C.USER: "text", C.ITEM: "text", C.RANK: "integer",
                     C.SCORE: "double precision", C.MODEL_VERSION: "character varying",
                     C.GENERATED_AT: "timestamp with time zone", C.PREDICTED_RATING: "double precision"}


def test_libpq_uri_carries_credentials_for_adbc(postgres_url):
    adbc = pytest.importorskip("adbc_driver_postgresql.dbapi")
    with adbc.connect(libpq_uri(postgres_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        libpq_uri("sqlite:///x.db")


KILLED_LOAD = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from recjobs.db import make_engine
from recjobs.publish import publish_list, read_staging

frames = read_staging(Path({path!r}), batch_rows=100)  # several frames: killed after the first
publish_list(make_engine({url!r}), "recommendations", "2026-01-09", "v-killed", frames)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_load_killed_mid_way_leaves_live_list_and_bookkeeping(backend, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'recs.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    ensure_schema(engine)
    publish_list(engine, "recommendations", "2026-01-01", "v1", staged_frames(20, "v1"))
    path = rank_to_staging(staged_frames(80, "v-killed"), "recommendations", tmp_path / "killed.parquet")
    assert sum(len(f) for f in read_staging(path, batch_rows=100)) > 100
    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT * FROM publications ORDER BY id")).all()
        tables_before = set(sa.inspect(conn).get_table_names())
    env = {**os.environ, "RECJOBS_FAULT_AT": "publish.mid_load"}
    script = KILLED_LOAD.format(root=str(ROOT), path=str(path), url=engine.url.render_as_string(hide_password=False))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with engine.connect() as conn:
        live = conn.execute(sa.text(f"SELECT {C.MODEL_VERSION}, COUNT(*) FROM recommendations GROUP BY 1")).all()
        assert live == [("v1", 20 * len(AWKWARD_FLOATS))]
        assert conn.execute(sa.text("SELECT * FROM publications ORDER BY id")).all() == before
        assert conn.execute(sa.text("SELECT COUNT(*) FROM recommendations_history WHERE run_date = '2026-01-09'")
                            ).scalar_one() == 0
        assert set(sa.inspect(conn).get_table_names()) == tables_before  # the half-loaded table went too
    # The next publish runs normally over whatever the killed one left.
    result = load_staging(engine, "recommendations", path, "2026-01-10", "v-killed")
    assert result.live and result.rows == 80 * len(AWKWARD_FLOATS)
    engine.dispose()


def test_sqlite_and_arrow_frames_load_the_same_rows(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'recs.db'}")
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch (s varchar(128), f float8)")
        frames = [pd.DataFrame({"s": ["", "a", None], "f": [-0.0, 5e-324, 1.5]}),
                  pa.table({"s": ["é", None], "f": [1 / 3, 2.0]})]
        assert bulk_load(conn, "scratch", ["s", "f"], frames) == 5
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT s, f FROM scratch").all()
    assert [r.s for r in rows] == ["", "a", None, "é", None]
    # SQLite itself stores a whole-number REAL as an integer, so -0.0 comes back as 0.
    assert float_bits([r.f for r in rows]) == float_bits([0.0, 5e-324, 1.5, 1 / 3, 2.0])
    engine.dispose()



def test_text_is_sent_as_utf8_whatever_the_database_encoding(postgres_url):
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = sa.engine.make_url(postgres_url).database + "_latin1"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
    engine = make_engine(sa.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE scratch (s text)")
            bulk_load(conn, "scratch", ["s"], [pd.DataFrame({"s": ["é", "Zürich"]})])
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT s, length(s) FROM scratch").all() == [("é", 1), ("Zürich", 6)]
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
