"""``recommendations_history``: one date's rows replaced, old dates dropped, on either dialect.

On PostgreSQL the table is partitioned by ``run_date``, one partition a date. A night's
rows go into a new table with no index to maintain row by row, which is then indexed
once and attached in place of the date's old partition (:func:`build_date`, then
:func:`attach_date` inside the swap): at 69M rows, 1.5x faster than inserting into an
indexed table (``scripts/benchmark_e2e.py`` at 10x, README *Measured limits*), and
retention drops whole partitions instead of deleting rows. SQLite keeps one table and
replaces a date's rows with DELETE and INSERT.

Run dates are data (a quote in one must neither break nor inject): they reach SQL as
bound parameters, or as literals the dialect quotes where DDL takes no parameter, and
partition names never contain them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recjobs import columns as C
from recjobs.db.engine import is_sqlite

HISTORY = "recommendations_history"
# Its columns in table order (recjobs.db.schema defines their types; a test keeps the two equal).
COLUMNS = (C.RUN_DATE, C.USER, C.ITEM, C.RANK, C.SCORE, C.MODEL_VERSION, C.PREDICTED_RATING)
_VALUES = ", ".join(COLUMNS[1:])
_BOUND = re.compile(r"^FOR VALUES IN \('(.*)'\)$", re.DOTALL)


@dataclass(frozen=True)
class BuiltDate:
    """A date's rows loaded into ``table`` (PostgreSQL: a partition not yet attached; SQLite: the table itself)."""

    run_date: str
    table: str
    rows: int


def is_partitioned(conn: Connection) -> bool:
    """Whether ``recommendations_history`` is a partitioned table (PostgreSQL, this release's schema)."""
    if is_sqlite(conn):
        return False
    kind = conn.execute(sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": HISTORY}).scalar()
    return kind == "p"


def _literal(conn: Connection, value: str) -> str:
    """``value`` as a SQL string literal of the connection's dialect (for DDL, which takes no parameters)."""
    return str(sa.literal(value, sa.String).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))


def _partition_name(run_date: str) -> str:
    # Unique, so a rerun builds its partition beside the date's live one; the date's digits
    # (when it is one) only to help a reader of the catalog.
    digits = re.sub(r"[^0-9]", "", run_date)[:8] if re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_date) else "x"
    return f"{HISTORY}_{digits}_{uuid.uuid4().hex[:8]}"


def build_date(conn: Connection, run_date: str, select_sql: str, params: Mapping[str, Any] | None = None,
               phase: Callable[[str], None] | None = None) -> BuiltDate:
    """Load ``run_date``'s history rows from ``select_sql`` (columns in the table's order, less ``run_date``).

    PostgreSQL: into a new table, indexed and analyzed, to be attached by
    :func:`attach_date` (readers see nothing of it until then). SQLite: the date's rows
    are replaced in place. Either way, in the caller's transaction. ``phase`` is told
    what each step does (a progress line for a step of minutes).
    """
    say = phase or (lambda _: None)
    bound = {"run_date": run_date, **(params or {})}
    insert = (f"({C.RUN_DATE}, {_VALUES}) SELECT CAST(:run_date AS VARCHAR(10)), {_VALUES} "
              f"FROM ({select_sql}) AS src")
    if not is_partitioned(conn):
        conn.execute(sa.text(f"DELETE FROM {HISTORY} WHERE {C.RUN_DATE} = :run_date"), {"run_date": run_date})
        rows = conn.execute(sa.text(f"INSERT INTO {HISTORY} {insert}"), bound).rowcount
        return BuiltDate(run_date, HISTORY, rows)
    name = _partition_name(run_date)
    # The CHECK implies the partition's bound, so attaching it scans nothing.
    conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE {HISTORY} INCLUDING DEFAULTS, "
                         f"CONSTRAINT {name}_date CHECK ({C.RUN_DATE} = {_literal(conn, run_date)}))")
    say(f"copying into {name}")
    rows = conn.execute(sa.text(f"INSERT INTO {name} {insert}"), bound).rowcount
    # The parent's index (recjobs.db.schema), built once over the loaded rows; ATTACH adopts it.
    say(f"indexing {rows:,} rows of {name}")
    conn.exec_driver_sql(f"CREATE INDEX {name}_user ON {name} USING hash ({C.USER})")
    say(f"analyzing {name}")
    conn.exec_driver_sql(f"ANALYZE {name}")
    return BuiltDate(run_date, name, rows)


def attach_date(conn: Connection, built: BuiltDate) -> None:
    """Make ``built`` the history of its date, replacing the date's old partition (PostgreSQL; SQLite: nothing left).

    Dropping the old partition takes a lock every reader of the history waits for, so
    this belongs in the publish's swap, whose lock waits are bounded and retried.
    """
    if built.table == HISTORY:
        return
    for name, run_date in partitions(conn).items():
        if run_date == built.run_date:
            conn.exec_driver_sql(f"DROP TABLE {name}")
    conn.exec_driver_sql(f"ALTER TABLE {HISTORY} ATTACH PARTITION {built.table} "
                         f"FOR VALUES IN ({_literal(conn, built.run_date)})")


def partitions(conn: Connection) -> dict[str, str]:
    """Partition name -> its run date, of a partitioned ``recommendations_history``."""
    rows = conn.execute(sa.text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t) ORDER BY c.relname"),
        {"t": HISTORY}).all()
    found = {}
    for name, bound in rows:
        match = _BOUND.match(bound or "")
        if match is None:  # not one of ours (a DEFAULT partition someone added): never touched
            continue
        found[name] = match.group(1).replace("''", "'")
    return found


def dates(conn: Connection) -> list[str]:
    """The run dates in the history, newest first (PostgreSQL: from the catalog, no row read)."""
    if is_partitioned(conn):
        return sorted(set(partitions(conn).values()), reverse=True)
    return list(conn.execute(sa.text(f"SELECT DISTINCT {C.RUN_DATE} FROM {HISTORY} "
                                     f"ORDER BY {C.RUN_DATE} DESC")).scalars())


def drop_before(conn: Connection, cutoff: str) -> int:
    """Remove every date before ``cutoff`` from the history; returns the rows removed."""
    if not is_partitioned(conn):
        return conn.execute(sa.text(f"DELETE FROM {HISTORY} WHERE {C.RUN_DATE} < :cutoff"),
                            {"cutoff": cutoff}).rowcount
    removed = 0
    for name, run_date in partitions(conn).items():
        if run_date < cutoff:
            removed += conn.execute(sa.text(f"SELECT COUNT(*) FROM {name}")).scalar_one()
            conn.exec_driver_sql(f"DROP TABLE {name}")
    return removed


def partition_existing(conn: Connection, table: sa.Table) -> int:
    """Turn an unpartitioned PostgreSQL ``recommendations_history`` (an older release's) into partitions.

    ``table`` is this release's definition (partitioned). Every date's rows are copied
    into its own partition, then the old table is dropped; returns the rows moved. A
    one-time cost, run by the schema upgrade in its transaction.
    """
    old = f"{HISTORY}_unpartitioned"
    indexes = [index["name"] for index in sa.inspect(conn).get_indexes(HISTORY)]
    conn.exec_driver_sql(f"ALTER TABLE {HISTORY} RENAME TO {old}")
    for name in indexes:  # their names are the new table's
        conn.exec_driver_sql(f"DROP INDEX {name}")
    table.create(conn)
    moved = 0
    days = conn.execute(sa.text(f"SELECT DISTINCT {C.RUN_DATE} FROM {old} ORDER BY {C.RUN_DATE}")).scalars().all()
    for run_date in days:
        built = build_date(conn, run_date, f"SELECT {_VALUES} FROM {old} WHERE {C.RUN_DATE} = :day", {"day": run_date})
        attach_date(conn, built)
        moved += built.rows
    conn.exec_driver_sql(f"DROP TABLE {old}")
    return moved


__all__ = ["COLUMNS", "HISTORY", "BuiltDate", "attach_date", "build_date", "dates", "drop_before", "is_partitioned",
           "partition_existing", "partitions"]
