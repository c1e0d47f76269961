"""Publish ranked lists to SQL with no partial reads.

Each publish loads a new versioned table (``recommendations_v<N>``) in one
transaction: create, bulk load (COPY on PostgreSQL, executemany on SQLite),
index, analyze. A second, short transaction repoints the stable view
(``recommendations``) at it. Readers therefore see the whole previous set or the
whole new one. Old versions are dropped only after that commit, keeping the last
few for :func:`rollback`.

A publish whose run date is older than the live one (a backfill) is loaded and
kept as history but never made live.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recjobs import columns as C
from recjobs.db import LIST_COLUMNS, list_index, list_table, publications, recommendations_history

log = logging.getLogger(__name__)
KINDS = tuple(LIST_COLUMNS)


@dataclass(frozen=True)
class PublishResult:
    kind: str
    publication_id: int
    table_name: str
    rows: int
    live: bool
    seconds: float


def _is_sqlite(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "sqlite"


def _view_sql(conn: Connection, kind: str, table_name: str) -> list[str]:
    cols = ", ".join(c.name for c in LIST_COLUMNS[kind])
    select = f"SELECT {cols} FROM {table_name}"
    if _is_sqlite(conn):
        return [f"DROP VIEW IF EXISTS {kind}", f"CREATE VIEW {kind} AS {select}"]
    return [f"CREATE OR REPLACE VIEW {kind} AS {select}"]


def ensure_live_views(engine: Engine) -> None:
    """Give each list an empty version 0 and its view, so apps' queries work from day one."""
    existing = set(sa.inspect(engine).get_view_names())
    for kind in KINDS:
        if kind in existing:
            continue
        with _write_tx(engine) as conn:
            table = list_table(kind, f"{kind}_v0")
            if not sa.inspect(conn).has_table(table.name):
                table.create(conn)
                list_index(kind, table).create(conn)
            for stmt in _view_sql(conn, kind, table.name):
                conn.exec_driver_sql(stmt)


def _write_tx(engine: Engine):  # noqa: ANN202 - a context manager of Connection
    # SQLite: take the write lock at BEGIN so the swap cannot fail half-way on a busy lock.
    return engine.execution_options(sqlite_immediate=True).begin()


def _bulk_load(conn: Connection, table_name: str, columns: list[str], frames: Iterable[pd.DataFrame]) -> int:
    rows = 0
    if _is_sqlite(conn):
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {table_name} ({', '.join(columns)}) VALUES ({marks})"
        cursor = conn.connection.dbapi_connection.cursor()
        for frame in frames:
            # Zipped column lists build rows ~6x faster than DataFrame.itertuples.
            cursor.executemany(sql, zip(*(frame[c].tolist() for c in columns), strict=True))
            rows += len(frame)
        cursor.close()
        return rows
    dbapi = conn.connection.dbapi_connection
    options = pacsv.WriteOptions(include_header=False)
    with dbapi.cursor() as cur:
        with cur.copy(f"COPY {table_name} ({', '.join(columns)}) FROM STDIN (FORMAT csv)") as copy:
            for frame in frames:
                # Arrow's CSV writer (quoting every string, so '' stays distinct from NULL)
                # formats ~20x faster than pandas.to_csv, which otherwise bounds the COPY.
                buf = io.BytesIO()
                pacsv.write_csv(pa.Table.from_pandas(frame[columns], preserve_index=False), buf, options)
                copy.write(buf.getbuffer())
                rows += len(frame)
    return rows


def _lock_swaps(conn: Connection, kind: str) -> None:
    """Serialise swaps of one list, so the newer-date check and the swap act as one step."""
    # SQLite: BEGIN IMMEDIATE already holds the database's single write lock.
    if not _is_sqlite(conn):
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"recjobs:{kind}"})


def _live(conn: Connection, kind: str) -> sa.Row | None:
    return conn.execute(
        sa.select(publications).where(publications.c.kind == kind, publications.c.is_live.is_(True))
    ).first()


def publish_list(
    engine: Engine,
    kind: str,
    run_date: str,
    model_version: str,
    frames: Iterable[pd.DataFrame],
    keep_versions: int = 3,
    history: bool = True,
) -> PublishResult:
    """Load ``frames`` as a new version of list ``kind`` and make it live if it is not older.

    ``frames`` yield the list's columns (without ``generated_at``, which is added).
    """
    start = dt.datetime.now(dt.UTC)
    generated_at = start.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    columns = [c.name for c in LIST_COLUMNS[kind]]

    def stamped() -> Iterable[pd.DataFrame]:
        for frame in frames:
            yield frame.assign(**{C.GENERATED_AT: generated_at})

    with _write_tx(engine) as conn:
        pub_id = conn.execute(
            publications.insert()
            .values(
                kind=kind,
                run_date=run_date,
                table_name=f"{kind}_pending",
                model_version=model_version,
                row_count=0,
                is_live=False,
                dropped=False,
                published_at=start,
            )
            .returning(publications.c.id)
        ).scalar_one()
        table = list_table(kind, f"{kind}_v{pub_id}")
        conn.execute(publications.update().where(publications.c.id == pub_id).values(table_name=table.name))
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table.name}")
        table.create(conn)
        n_rows = _bulk_load(conn, table.name, columns, stamped())
        # The index after the load: building it once is cheaper than maintaining it per row.
        list_index(kind, table).create(conn)
        conn.exec_driver_sql(f"ANALYZE {table.name}")
        conn.execute(publications.update().where(publications.c.id == pub_id).values(row_count=n_rows))
        if history and kind == "recommendations":
            conn.execute(recommendations_history.delete().where(recommendations_history.c.run_date == run_date))
            cols = [C.USER, C.ITEM, C.RANK, C.SCORE, C.MODEL_VERSION]
            conn.exec_driver_sql(
                f"INSERT INTO recommendations_history ({C.RUN_DATE}, {', '.join(cols)}) "
                f"SELECT '{run_date}', {', '.join(cols)} FROM {table.name}"
            )
    log.info("loaded %d rows into %s", n_rows, table.name)

    with _write_tx(engine) as conn:
        _lock_swaps(conn, kind)
        live = _live(conn, kind)
        make_live = live is None or live.run_date <= run_date
        if make_live:
            for stmt in _view_sql(conn, kind, table.name):
                conn.exec_driver_sql(stmt)
            conn.execute(publications.update().where(publications.c.kind == kind).values(is_live=False))
            conn.execute(publications.update().where(publications.c.id == pub_id).values(is_live=True))
        else:
            log.info(
                "%s for %s kept as history only: live set is from %s", kind, run_date, live.run_date
            )
    prune(engine, kind, keep_versions)
    seconds = (dt.datetime.now(dt.UTC) - start).total_seconds()
    return PublishResult(kind, pub_id, table.name, n_rows, make_live, seconds)


def prune(engine: Engine, kind: str, keep_versions: int) -> list[str]:
    """Drop all but the newest ``keep_versions`` tables of ``kind`` (never the live one)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(publications.c.id, publications.c.table_name, publications.c.is_live)
            .where(publications.c.kind == kind, publications.c.dropped.is_(False))
            .order_by(publications.c.id.desc())
        ).all()
        conn.rollback()
    doomed = [r for r in rows[keep_versions:] if not r.is_live]
    dropped = []
    for row in doomed:
        with _write_tx(engine) as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {row.table_name}")
            conn.execute(publications.update().where(publications.c.id == row.id).values(dropped=True))
        dropped.append(row.table_name)
    return dropped


def rollback(engine: Engine, kind: str = "recommendations") -> tuple[str, str]:
    """Repoint ``kind`` at the previous kept version; returns (old table, new table)."""
    with _write_tx(engine) as conn:
        _lock_swaps(conn, kind)
        live = _live(conn, kind)
        if live is None:
            raise RuntimeError(f"nothing published for {kind}: no version to roll back from")
        previous = conn.execute(
            sa.select(publications)
            .where(
                publications.c.kind == kind,
                publications.c.dropped.is_(False),
                publications.c.id < live.id,
            )
            .order_by(publications.c.id.desc())
        ).first()
        if previous is None:
            raise RuntimeError(f"{kind}: no earlier kept version than {live.table_name} to roll back to")
        for stmt in _view_sql(conn, kind, previous.table_name):
            conn.exec_driver_sql(stmt)
        conn.execute(publications.update().where(publications.c.kind == kind).values(is_live=False))
        conn.execute(publications.update().where(publications.c.id == previous.id).values(is_live=True))
        # A rolled-back-from version must not be swapped back in by pruning order; mark it dropped
        # after removing it, so the next rollback goes further back rather than forth.
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {live.table_name}")
        conn.execute(publications.update().where(publications.c.id == live.id).values(dropped=True))
    return live.table_name, previous.table_name


def live_version(engine: Engine, kind: str = "recommendations") -> sa.Row | None:
    """The live publication row of ``kind``, or None."""
    with engine.connect() as conn:
        return _live(conn, kind)
