"""Publishing to real SQLite and PostgreSQL: atomic swaps, retention, rollback, backfills."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter

import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs import columns as C
from recjobs.db import ensure_schema, history, make_engine, popular_items
from recjobs.publish import (
    SwapPolicy,
    live_version,
    prune_history,
    publish_list,
    publish_lists,
    rollback,
)
from tests.conftest import ROOT, wait_for

USERS = 400
TOP = 25


def frames(version: str, offset: int = 0, chunk: int = 50, pause: threading.Event | None = None):  # noqa: ANN201
    """A ranked list per user, yielded in chunks (optionally waiting, to hold the load open)."""
    for lo in range(0, USERS, chunk):
        users = [f"u{u:04d}" for u in range(lo, min(lo + chunk, USERS))]
        yield pd.DataFrame({
            C.USER: [u for u in users for _ in range(TOP)],
            C.ITEM: [f"i{(r + offset) % 97}" for _ in users for r in range(TOP)],
            C.RANK: [r + 1 for _ in users for r in range(TOP)],
            C.SCORE: [1.0 / (r + 1) for _ in users for r in range(TOP)],
            C.MODEL_VERSION: version,
        })
        if pause is not None:
            pause.wait(0.05)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):  # noqa: ANN001, ANN201
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'recs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


def snapshot(engine) -> tuple[int, set[str]]:  # noqa: ANN001
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT model_version, COUNT(*) AS n FROM recommendations GROUP BY model_version")).all()
    return sum(r.n for r in rows), {r.model_version for r in rows}


def test_empty_view_exists_before_first_publish(db):
    assert snapshot(db) == (0, set())
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM similar_items")).scalar_one() == 0


def test_reader_never_sees_partial_set_during_publish(db):
    publish_list(db, "recommendations", "2026-01-01", "v1", frames("v1"))
    reader = make_engine(db.url.render_as_string(hide_password=False))
    seen: Counter[tuple[int, frozenset[str]]] = Counter()
    done = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not done.is_set():
                total, versions = snapshot(reader)
                seen[(total, frozenset(versions))] += 1
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        # The pause between chunks keeps the load transaction open while the reader reads.
        result = publish_list(db, "recommendations", "2026-01-02", "v2", frames("v2", 3, pause=threading.Event()))
        assert wait_for(lambda: seen[(USERS * TOP, frozenset({"v2"}))] > 0, timeout=10)
    finally:
        done.set()
        thread.join(30)
        reader.dispose()
    assert not errors, errors
    assert result.live and result.rows == USERS * TOP
    assert set(seen) <= {(USERS * TOP, frozenset({"v1"})), (USERS * TOP, frozenset({"v2"}))}, seen
    assert seen[(USERS * TOP, frozenset({"v1"}))] > 0
    assert snapshot(db) == (USERS * TOP, {"v2"})


def test_retention_keeps_last_versions_and_rollback_restores_previous(db):
    for n in range(1, 5):
        publish_list(db, "recommendations", f"2026-01-0{n}", f"v{n}", frames(f"v{n}", n), keep_versions=2)
    tables = set(sa.inspect(db).get_table_names())
    kept = {t for t in tables if t.startswith("recommendations_v") and t != "recommendations_v0"}
    assert len(kept) == 2
    assert snapshot(db)[1] == {"v4"}
    old, new = rollback(db)
    assert snapshot(db) == (USERS * TOP, {"v3"})
    assert live_version(db).model_version == "v3"
    with pytest.raises(RuntimeError, match="no earlier kept version"):
        rollback(db)


def test_backfill_of_older_date_is_history_and_never_replaces_live(db):
    publish_list(db, "recommendations", "2026-01-05", "new", frames("new"))
    result = publish_list(db, "recommendations", "2026-01-03", "old", frames("old", 1))
    assert not result.live
    assert snapshot(db)[1] == {"new"}
    with db.connect() as conn:
        hist = dict(conn.execute(sa.text(
            "SELECT run_date, COUNT(*) FROM recommendations_history GROUP BY run_date")).all())
    assert hist == {"2026-01-03": USERS * TOP, "2026-01-05": USERS * TOP}
    # A rerun of the live date replaces its history rows rather than adding to them.
    publish_list(db, "recommendations", "2026-01-05", "new", frames("new"))
    with db.connect() as conn:
        n = conn.execute(sa.text("SELECT COUNT(*) FROM recommendations_history WHERE run_date='2026-01-05'")).scalar_one()
    assert n == USERS * TOP


def test_app_query_reads_one_users_list_in_rank_order(db):
    publish_list(db, "recommendations", "2026-01-01", "v1", frames("v1"))
    with db.connect() as conn:
        rows = conn.execute(sa.text("SELECT item_id, score FROM recommendations WHERE user_id = :u ORDER BY rank"),
                            {"u": "u0007"}).all()
    assert len(rows) == TOP and rows[0].score == 1.0 and rows[1].score == 0.5


def _queries() -> list[str]:
    text = (ROOT / "sql" / "queries.sql").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [q.strip() for q in body.split(";") if q.strip()]


def test_every_example_query_runs_on_published_data(db):
    publish_list(db, "recommendations", "2026-01-01", "v1", frames("v1"))
    publish_list(db, "similar_items", "2026-01-01", "v1", (
        f.rename(columns={C.USER: C.ITEM, C.ITEM: C.SIMILAR_ITEM}) for f in frames("v1")))
    publish_list(db, "item_segments", "2026-01-01", "v1", (
        f.rename(columns={C.USER: C.ITEM, C.ITEM: C.USER}) for f in frames("v1")))
    with db.begin() as conn:
        conn.execute(popular_items.insert(), [{C.RANK: r, C.ITEM: f"i{r}", C.SCORE: 10.0 - r, C.RUN_DATE: "2026-01-01"}
                                              for r in range(1, 6)])
    params = {"user_id": "u0003", "item_id": "u0003", "run_date": "2026-01-01"}
    queries = _queries()
    assert len(queries) == 8
    with db.connect() as conn:
        results = [conn.execute(sa.text(q), {k: v for k, v in params.items() if f":{k}" in q}).all() for q in queries]
        unknown = conn.execute(sa.text(queries[1]), {"user_id": "nobody"}).all()
    assert [len(r) for r in results[:4]] == [10, 10, 10, TOP]
    assert {r.source for r in results[1]} == {"personal"}
    assert [r.source for r in unknown] == ["popular"] * 5 and unknown[0].item_id == "i1"
    assert results[4][0].model_version == "v1"
    assert len(results[6]) == TOP and results[6][0].score == 1.0  # a campaign's audience, best first
    assert len(results[7]) == TOP and results[7][0].predicted_rating is None  # these lists predict no ratings


def test_cli_rollback_repoints_live_lists_and_records_it(tmp_path):
    import os
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = make_engine(url)
    ensure_schema(engine)
    publish_list(engine, "recommendations", "2026-01-01", "als-20260101-full-a", frames("als-20260101-full-a"))
    publish_list(engine, "recommendations", "2026-01-02", "als-20260102-full-b", frames("als-20260102-full-b", 2))
    env = {**os.environ, "RECJOBS_HOME": str(tmp_path), "RECJOBS_DATABASE_URL": url}
    out = subprocess.run([sys.executable, "-m", "recjobs.cli", "rollback"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert snapshot(engine) == (USERS * TOP, {"als-20260101-full-a"})
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT family, status, reason FROM model_runs WHERE stage = 'rollback'")).one()
    assert row.family == "als" and "rolled back" in row.reason


KILLED_PUBLISH = """
import sys, time
sys.path.insert(0, {root!r})
from recjobs.db import make_engine
from recjobs.publish import publish_list
from tests.test_publish import frames

def slow():
    for i, f in enumerate(frames("v-killed", 5)):
        if i == 2:
            print("loading", flush=True)
            time.sleep(60)
        yield f

publish_list(make_engine({url!r}), "recommendations", "2026-01-09", "v-killed", slow())
"""


def test_publish_killed_mid_load_leaves_live_set_and_next_publish_works(db):
    import os
    import signal
    import subprocess
    import sys

    publish_list(db, "recommendations", "2026-01-01", "v1", frames("v1"))
    url = db.url.render_as_string(hide_password=False)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PUBLISH.format(root=str(ROOT), url=url)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "loading"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert snapshot(db) == (USERS * TOP, {"v1"})
    with db.connect() as conn:
        versions = conn.execute(sa.text("SELECT model_version FROM publications")).scalars().all()
    assert versions == ["v1"]  # the killed load's bookkeeping rolled back with it
    result = publish_list(db, "recommendations", "2026-01-10", "v2", frames("v2"))
    assert result.live and snapshot(db) == (USERS * TOP, {"v2"})


def live_tables(engine) -> dict[str, str]:  # noqa: ANN001
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT kind, model_version FROM publications WHERE is_live = :t"), {"t": True}).all()
    return {r.kind: r.model_version for r in rows}


def test_rollback_after_backfill_returns_to_previous_live_version(db):
    # Backfills load older dates after newer ones: ids no longer follow the live order.
    publish_list(db, "recommendations", "2026-01-05", "v5", frames("v5"), keep_versions=3)
    publish_list(db, "recommendations", "2026-01-06", "v6", frames("v6", 1), keep_versions=3)
    for day in ("2026-01-03", "2026-01-04"):
        assert not publish_list(db, "recommendations", day, f"old{day[-1]}", frames("old", 2), keep_versions=3).live
    # Pruning kept the version rollback needs; the backfill tables went first.
    with db.connect() as conn:
        kept = conn.execute(sa.text(
            "SELECT model_version FROM publications WHERE dropped = :f ORDER BY id"), {"f": False}).scalars().all()
    assert kept == ["v5", "v6", "old4"]
    rollback(db)
    assert snapshot(db) == (USERS * TOP, {"v5"})


def test_rollback_never_goes_to_a_backfilled_date(db):
    publish_list(db, "recommendations", "2026-01-05", "v5", frames("v5"))
    publish_list(db, "recommendations", "2026-01-03", "old3", frames("old3", 2))
    publish_list(db, "recommendations", "2026-01-06", "v6", frames("v6", 1))
    rollback(db)
    assert snapshot(db) == (USERS * TOP, {"v5"})
    with pytest.raises(RuntimeError, match="no earlier kept version"):
        rollback(db)
    assert snapshot(db) == (USERS * TOP, {"v5"})
    # The next publish goes live, and rolling it back returns to v5 again, not forth to v6.
    publish_list(db, "recommendations", "2026-01-07", "v7", frames("v7", 3))
    rollback(db)
    assert live_version(db).model_version == "v5"


def test_rollback_works_on_versions_published_before_live_order_was_recorded(db):
    for n in (1, 2, 3):
        publish_list(db, "recommendations", f"2026-01-0{n}", f"v{n}", frames(f"v{n}", n))
    publish_list(db, "recommendations", "2026-01-01", "old1", frames("old1", 4))  # a backfill
    with db.begin() as conn:  # as an upgraded database has them: the new columns empty
        conn.execute(sa.text("UPDATE publications SET live_seq = NULL, live_at = NULL, history_only = NULL"))
    rollback(db)
    assert live_version(db).model_version == "v2"
    rollback(db)
    assert live_version(db).model_version == "v1"


def _similar(version: str, offset: int = 0):  # noqa: ANN202
    return (f.rename(columns={C.USER: C.ITEM, C.ITEM: C.SIMILAR_ITEM}) for f in frames(version, offset))


def test_cli_rollback_moves_similar_items_only_if_the_last_publish_did(db, tmp_path):
    import os
    import subprocess
    import sys

    for day, version in (("2026-01-01", "als-20260101-full-a"), ("2026-01-02", "als-20260102-full-b")):
        publish_list(db, "recommendations", day, version, frames(version))
        publish_list(db, "similar_items", day, version, _similar(version), history=False)
    # A popularity champion: recommendations only, no item vectors so no similar_items.
    publish_list(db, "recommendations", "2026-01-03", "popularity-20260103-full-c", frames("pop", 1))
    env = {**os.environ, "RECJOBS_HOME": str(tmp_path), "RECJOBS_DATABASE_URL": db.url.render_as_string(False)}

    def cli_rollback() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "recjobs.cli", "rollback"], env=env, capture_output=True,
                              text=True, timeout=120)

    out = cli_rollback()
    assert out.returncode == 0, out.stderr
    assert "similar_items: not moved" in out.stdout
    assert live_tables(db) == {"recommendations": "als-20260102-full-b", "similar_items": "als-20260102-full-b"}
    # Now the live lists came from one publish: both go back together.
    out = cli_rollback()
    assert out.returncode == 0, out.stderr
    assert live_tables(db) == {"recommendations": "als-20260101-full-a", "similar_items": "als-20260101-full-a"}
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(DISTINCT model_version) FROM similar_items")).scalar_one() == 1
        reasons = conn.execute(sa.text("SELECT reason FROM model_runs WHERE stage = 'rollback'")).scalars().all()
    assert len(reasons) == 3 and sum(r.startswith("similar_items") for r in reasons) == 1


def test_history_is_pruned_to_history_days_behind_the_newest_date(db):
    for day in ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05"):
        publish_list(db, "recommendations", day, "v", frames("v"), keep_versions=1, history_days=2)
    with db.connect() as conn:
        dates = conn.execute(sa.text("SELECT DISTINCT run_date FROM recommendations_history ORDER BY run_date")).scalars().all()
    assert dates == ["2026-01-03", "2026-01-05"]
    publish_list(db, "recommendations", "2026-01-06", "v", frames("v"))  # None: keep everything
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(DISTINCT run_date) FROM recommendations_history")).scalar_one() == 3


def test_retention_deletions_are_warnings_naming_the_setting(tmp_path, caplog):
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    ensure_schema(engine)
    with caplog.at_level(logging.INFO, logger="recjobs.publish"):
        for n, day in enumerate(("2026-01-01", "2026-01-02", "2026-01-05"), start=1):
            publish_list(engine, "recommendations", day, f"v{n}", frames(f"v{n}"), keep_versions=1, history_days=2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # The history of 01-01 and 01-02 goes: more than two days behind 01-05.
    assert any(w.startswith(f"retention deleted {2 * USERS * TOP} recommendations_history rows of dates before "
                            "2026-01-03: publish.history_days=2 (RECJOBS_PUBLISH__HISTORY_DAYS") for w in warnings)
    assert "retention dropped 1 earlier recommendations version(s) (v1 of 2026-01-01): publish.keep_versions=1 " \
           "(RECJOBS_PUBLISH__KEEP_VERSIONS) are kept" in warnings
    engine.dispose()


def test_history_insert_binds_the_run_date(db):
    # A run date is data, not SQL: a quote in it must not break (or inject into) the insert.
    publish_list(db, "recommendations", "2026'01-01", "v1", frames("v1"))
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT DISTINCT run_date FROM recommendations_history")).scalars().all() == [
            "2026'01-01"]


def _days_from_today(n: int) -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=n)).isoformat()


def _history_dates(engine) -> list[str]:  # noqa: ANN001
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT DISTINCT run_date FROM recommendations_history ORDER BY run_date")).scalars().all()


def test_a_forced_future_date_neither_erases_real_history_nor_blocks_later_nights(db):
    # A mistyped year published with the guard off (runs.max_future_days=null): retention
    # measures history_days from the newest real date, and later real nights still go live.
    real = [_days_from_today(-3), _days_from_today(-2)]
    for day in real:
        publish_list(db, "recommendations", day, f"v{day}", frames("v"), history_days=30)
    typo = _days_from_today(36 * 365)
    assert publish_list(db, "recommendations", typo, "typo", frames("typo", 1), history_days=30).live
    assert _history_dates(db) == [*real, typo]
    tonight = _days_from_today(0)
    result = publish_list(db, "recommendations", tonight, "tonight", frames("tonight", 2), history_days=30)
    assert result.live and snapshot(db)[1] == {"tonight"}
    assert _history_dates(db) == [*real, tonight, typo]


def test_history_of_the_newest_dates_is_kept_even_when_every_date_looks_future(db):
    # A clock set in the past makes every date look future: the newest keep_versions dates
    # still keep their history, so one outlier date can never empty it.
    for day in ("2026-01-01", "2026-01-02", "2026-01-03", "2062-01-31"):
        publish_list(db, "recommendations", day, "v", frames("v"))
    assert prune_history(db, history_days=2, keep_dates=3, horizon=dt.date(2000, 1, 1)) == USERS * TOP
    assert _history_dates(db) == ["2026-01-02", "2026-01-03", "2062-01-31"]


def test_predicted_ratings_load_where_staged_and_read_as_null_elsewhere(db):
    from recjobs.db import view_sql

    def rated(version: str):  # noqa: ANN202
        for frame in frames(version):
            yield frame.assign(**{C.PREDICTED_RATING: 3.5})

    publish_list(db, "recommendations", "2026-01-01", "rated", rated("rated"))
    with db.connect() as conn:
        got = conn.execute(sa.text("SELECT DISTINCT predicted_rating FROM recommendations")).scalars().all()
        hist = conn.execute(sa.text("SELECT DISTINCT predicted_rating FROM recommendations_history")).scalars().all()
    assert got == [3.5] and hist == [3.5]
    # A family without rating predictions stages none: the column is NULL, not an error.
    publish_list(db, "recommendations", "2026-01-02", "plain", frames("plain"))
    with db.connect() as conn:
        got = conn.execute(sa.text("SELECT DISTINCT predicted_rating FROM recommendations")).scalars().all()
    assert got == [None]
    # A version table of an earlier release has no such column (a rollback target): the
    # view reads NULL for it.
    with db.begin() as conn:
        conn.execute(sa.text("CREATE TABLE recommendations_old (user_id TEXT NOT NULL, item_id TEXT NOT NULL, "
                             "rank INTEGER NOT NULL, score FLOAT NOT NULL, model_version VARCHAR(128) NOT NULL, "
                             "generated_at TIMESTAMP WITH TIME ZONE NOT NULL)"))
        conn.execute(sa.text("INSERT INTO recommendations_old VALUES ('u1', 'i1', 1, 0.5, 'old', "
                             "'2025-12-31 00:00:00+00:00')"))
        for statement in view_sql(conn, "recommendations", "recommendations_old"):
            conn.execute(sa.text(statement))
    with db.connect() as conn:
        row = conn.execute(sa.text("SELECT user_id, model_version, predicted_rating FROM recommendations")).one()
    assert tuple(row) == ("u1", "old", None)


def _history_tables(engine) -> tuple[dict[str, str], set[str]]:  # noqa: ANN001
    """PostgreSQL: the history's partitions (name -> date), and every table named like one."""
    with engine.connect() as conn:
        parts = history.partitions(conn)
        tables = set(conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'recommendations\\_history\\_%'")).scalars())
    return parts, tables


def test_postgresql_history_is_one_partition_a_date_replaced_whole_by_a_rerun(postgres_url):
    engine = make_engine(postgres_url)
    ensure_schema(engine)
    odd = "2026'01-0"  # a quote in a date is data in the partition's bound too
    for day, version in (("2026-01-01", "a"), ("2026-01-02", "b"), ("2026-01-02", "c"), (odd, "d")):
        publish_list(engine, "recommendations", day, version, frames(version))
    parts, tables = _history_tables(engine)
    assert sorted(parts.values()) == ["2026'01-0", "2026-01-01", "2026-01-02"] and set(parts) == tables
    with engine.connect() as conn:
        by_date = dict(conn.execute(sa.text(
            "SELECT run_date, string_agg(DISTINCT model_version, ',') FROM recommendations_history "
            "GROUP BY run_date")).all())
        # Reads by user use the parent's index on every partition.
        plan = "\n".join(conn.execute(sa.text(
            "EXPLAIN SELECT * FROM recommendations_history WHERE user_id = 'u0001'")).scalars())
    assert by_date == {"2026-01-01": "a", "2026-01-02": "c", odd: "d"}
    assert "Index Scan" in plan or "Bitmap Index Scan" in plan, plan
    # Retention drops whole partitions and counts their rows.
    assert prune_history(engine, history_days=0, keep_dates=1, horizon=dt.date(2026, 1, 2)) == 2 * USERS * TOP
    parts, tables = _history_tables(engine)
    assert list(parts.values()) == ["2026-01-02"] and set(parts) == tables
    engine.dispose()


def test_postgresql_history_of_a_failed_publish_leaves_no_partition_and_keeps_the_old(postgres_url):
    engine = make_engine(postgres_url)
    ensure_schema(engine)
    publish_list(engine, "recommendations", "2026-01-01", "old", frames("old"))
    before = _history_tables(engine)

    def fail(conn, results) -> None:  # noqa: ANN001
        raise RuntimeError("the ledger write failed")

    with pytest.raises(RuntimeError, match="ledger"):
        publish_lists(engine, "2026-01-01", "new", {"recommendations": frames("new")}, in_swap=fail)
    assert _history_tables(engine) == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT DISTINCT model_version FROM recommendations_history")).scalars().all() == [
            "old"]
    engine.dispose()


def test_postgresql_history_retention_waits_for_no_reader(postgres_url):
    # Dropping a date's partition needs the history's ACCESS EXCLUSIVE lock: a reader inside a
    # transaction keeps it; retention gives up after one lock timeout and the next prune drops it.
    engine = make_engine(postgres_url)
    ensure_schema(engine)
    for day in ("2026-01-01", "2026-01-05"):
        publish_list(engine, "recommendations", day, "v", frames("v"))
    reader = engine.connect()
    reader.execute(sa.text("SELECT COUNT(*) FROM recommendations_history")).scalar_one()
    try:
        assert prune_history(engine, history_days=2, horizon=dt.date(2026, 1, 5),
                             swap=SwapPolicy(lock_timeout_ms=100)) == 0
        assert sorted(_history_tables(engine)[0].values()) == ["2026-01-01", "2026-01-05"]
    finally:
        reader.rollback()
        reader.close()
    assert prune_history(engine, history_days=2, horizon=dt.date(2026, 1, 5)) == USERS * TOP
    assert list(_history_tables(engine)[0].values()) == ["2026-01-05"]
    engine.dispose()
