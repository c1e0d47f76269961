"""The recjobs schema: one definition for SQLite and PostgreSQL, and the live list views.

The DDL lives here, as SQLAlchemy Core tables, so both dialects come from one
place; ``sql/schema_<dialect>.sql`` are generated from it (``recjobs schema``)
for people who read SQL, and a test keeps them in sync. Each published list is a
versioned table (``recommendations_v<N>``) behind a view of the list's name; the
views (and an empty version 0) are schema too, created with the tables.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateIndex, CreateTable

from recjobs import columns as C
from recjobs.db.engine import is_sqlite, make_engine, write_tx
from recjobs.db.history import partition_existing
from recjobs.errors import DatabaseError

if TYPE_CHECKING:
    from recjobs.settings import Settings

log = logging.getLogger(__name__)
metadata = sa.MetaData()

model_runs = sa.Table(
    "model_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_date", sa.String(10), nullable=False),
    sa.Column("family", sa.String(32), nullable=False),
    sa.Column("model_version", sa.String(128), nullable=False),
    # candidate: trained on the split's training part and evaluated on the holdout;
    # gate: the decision for that date; final: champion retrained on all data;
    # publish / rollback: what went live.
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("k", sa.Integer),
    sa.Column("precision_at_k", sa.Float),
    sa.Column("recall_at_k", sa.Float),
    sa.Column("ndcg_at_k", sa.Float),
    sa.Column("map_at_k", sa.Float),
    sa.Column("coverage", sa.Float),
    sa.Column("eval_users", sa.Integer),
    sa.Column("fit_seconds", sa.Float),
    sa.Column("eval_seconds", sa.Float),
    sa.Column("params", sa.Text),
    sa.Column("data_snapshot", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("artifact_path", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # Beyond accuracy: mean intra-list diversity (1 - cosine similarity of the listed items'
    # features, else of the model's item vectors) and novelty (mean self-information,
    # -log2 of the share of users who interacted with each listed item).
    sa.Column("diversity", sa.Float),
    sa.Column("novelty", sa.Float),
    # Metrics of the lists as the model ranked them, before filters and re-ranking
    # (JSON, same keys as the metric columns); the metric columns hold the lists as published.
    sa.Column("raw_metrics", sa.Text),
    # Gate significance, on candidate rows and the gate row: the paired difference of the
    # gate metric over users (challenger - champion), its confidence interval, the p-value.
    sa.Column("gate_diff", sa.Float),
    sa.Column("gate_ci_low", sa.Float),
    sa.Column("gate_ci_high", sa.Float),
    sa.Column("gate_p_value", sa.Float),
    # Rating prediction, where ratings are explicit: the candidate's RMSE and MAE on the
    # holdout's ratings (NULL for families that predict none) and the bias baseline's
    # (global mean + user and item biases) on the same pairs, measured in the same run.
    sa.Column("rmse", sa.Float),
    sa.Column("mae", sa.Float),
    sa.Column("baseline_rmse", sa.Float),
    sa.Column("baseline_mae", sa.Float),
    # The Airflow task that wrote the row (NULL outside Airflow, e.g. the CLI): the dashboard
    # links a gate or rollback row to that task's log in the Airflow UI.
    sa.Column("airflow_dag_id", sa.String(250)),
    sa.Column("airflow_run_id", sa.String(250)),
    sa.Column("airflow_task_id", sa.String(250)),
)
sa.Index("ix_model_runs_date_stage", model_runs.c.run_date, model_runs.c.stage)

ingest_log = sa.Table(
    "ingest_log",
    metadata,
    sa.Column("content_hash", sa.String(64), primary_key=True),
    sa.Column("source_path", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("rows_read", sa.Integer, nullable=False),
    sa.Column("rows_valid", sa.Integer, nullable=False),
    sa.Column("rows_quarantined", sa.Integer, nullable=False),
    sa.Column("duplicates_dropped", sa.Integer, nullable=False),
    sa.Column("partitions", sa.Text),
    sa.Column("quarantine_path", sa.Text),
    sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
    # ingested | rejected (NULL in rows written before the column existed: ingested). A
    # rejected file is skipped by later inbox runs until forced or delivered corrected.
    sa.Column("status", sa.String(16)),
    sa.Column("reason", sa.Text),
)

# The guards' checks (recjobs.guard): one row per check of a date's input (before the split)
# or output (the champion's lists, before they go live), with the value, the threshold it was
# held to, whether it passed and the stage's decision; an operator's allow is a row too
# (check 'operator_allow'), which later runs of the date honour. A rerun replaces the
# date's rows of the stage, allows excepted.
guard_checks = sa.Table(
    "guard_checks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_date", sa.String(10), nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),  # input | output
    sa.Column("check_name", sa.String(32), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("threshold", sa.Text),
    sa.Column("passed", sa.Boolean, nullable=False),
    # passed | held | allowed (the stage's outcome, on each of its rows)
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("ix_guard_checks_date_stage", guard_checks.c.run_date, guard_checks.c.stage)

publications = sa.Table(
    "publications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),  # recommendations | similar_items | item_segments
    sa.Column("run_date", sa.String(10), nullable=False),
    sa.Column("table_name", sa.String(64), nullable=False, unique=True),
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("row_count", sa.Integer, nullable=False),
    sa.Column("is_live", sa.Boolean, nullable=False, default=False),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("dropped", sa.Boolean, nullable=False, default=False),
    # Order in which versions went live (1, 2, ...) and when: rollback and pruning go by
    # it, not by id or run date, since backfills load older dates after newer ones.
    sa.Column("live_seq", sa.Integer),
    sa.Column("live_at", sa.DateTime(timezone=True)),
    # True once the swap decided this version is history only (an older date than live).
    sa.Column("history_only", sa.Boolean),
)

# Ids are text of any length in both databases (see README "Your own data"). SQLite's
# indexes take keys of any length; a PostgreSQL B-tree entry must fit in a third of a page
# (2,704 bytes), which a long id does not. So on PostgreSQL the tables keyed by ids have no
# B-tree on the id: lookups use a hash index, and uniqueness a B-tree on the id's MD5
# (``_pg_unique``); SQLite keeps its primary keys.
def _pg_lookup(table: str, column: str) -> sa.Index:
    return sa.Index(f"ix_{table}_{column}", column, postgresql_using="hash").ddl_if(dialect="postgresql")


def _pg_unique(table: str, key: str, *rest: str) -> sa.Index:
    expressions = [sa.text(f"decode(md5({key}), 'hex')"), *rest]
    return sa.Index(f"ux_{table}_{key}", *expressions, unique=True).ddl_if(dialect="postgresql")


recommendations_history = sa.Table(
    "recommendations_history",
    metadata,
    sa.Column(C.RUN_DATE, sa.String(10), nullable=False),
    sa.Column(C.USER, sa.Text, nullable=False),
    sa.Column(C.ITEM, sa.Text, nullable=False),
    sa.Column(C.RANK, sa.Integer, nullable=False),
    sa.Column(C.SCORE, sa.Float, nullable=False),
    sa.Column(C.MODEL_VERSION, sa.String(128), nullable=False),
    sa.Column(C.PREDICTED_RATING, sa.Float, nullable=True),
    sa.PrimaryKeyConstraint(C.RUN_DATE, C.USER, C.RANK).ddl_if(dialect="sqlite"),
    # PostgreSQL: a partition a date (recjobs.db.history), indexed by user for reads. Its rows
    # come from a version table whose (user, rank) is unique, so no unique index checks them.
    _pg_lookup("recommendations_history", C.USER),
    postgresql_partition_by=f"LIST ({C.RUN_DATE})",
)

popular_items = sa.Table(
    "popular_items",
    metadata,
    sa.Column(C.RANK, sa.Integer, primary_key=True),
    sa.Column(C.ITEM, sa.Text, nullable=False),
    sa.Column(C.SCORE, sa.Float, nullable=False),
    sa.Column(C.RUN_DATE, sa.String(10), nullable=False),
)

# Cold start per segment (coldstart.segment_prefix): the popular items among each segment's
# users, and each user's segment, so a new user with features gets their segment's list.
# Tables of their own, so popular_items (and every query on it) stays the global list.
segment_popular_items = sa.Table(
    "segment_popular_items",
    metadata,
    sa.Column(C.SEGMENT, sa.Text, nullable=False),
    sa.Column(C.RANK, sa.Integer, nullable=False),
    sa.Column(C.ITEM, sa.Text, nullable=False),
    sa.Column(C.SCORE, sa.Float, nullable=False),
    sa.Column(C.RUN_DATE, sa.String(10), nullable=False),
    sa.PrimaryKeyConstraint(C.SEGMENT, C.RANK).ddl_if(dialect="sqlite"),
    _pg_unique("segment_popular_items", C.SEGMENT, C.RANK),
    _pg_lookup("segment_popular_items", C.SEGMENT),
)

user_segments = sa.Table(
    "user_segments",
    metadata,
    sa.Column(C.USER, sa.Text, nullable=False),
    sa.Column(C.SEGMENT, sa.Text, nullable=False),
    sa.PrimaryKeyConstraint(C.USER).ddl_if(dialect="sqlite"),
    _pg_unique("user_segments", C.USER),
    _pg_lookup("user_segments", C.USER),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column(C.ITEM, sa.Text, nullable=False),
    sa.Column(C.TITLE, sa.Text),
    sa.PrimaryKeyConstraint(C.ITEM).ddl_if(dialect="sqlite"),
    _pg_unique("items", C.ITEM),
    _pg_lookup("items", C.ITEM),
)

# Columns of a published list table; the live one is reached through a view of the
# list's name, repointed in one transaction (see publish.py).
LIST_COLUMNS = {
    "recommendations": (
        sa.Column(C.USER, sa.Text, nullable=False),
        sa.Column(C.ITEM, sa.Text, nullable=False),
        sa.Column(C.RANK, sa.Integer, nullable=False),
        sa.Column(C.SCORE, sa.Float, nullable=False),
        sa.Column(C.MODEL_VERSION, sa.String(128), nullable=False),
        sa.Column(C.GENERATED_AT, sa.DateTime(timezone=True), nullable=False),
        # Last, so tables of earlier releases are the same columns less this one (see view_sql).
        sa.Column(C.PREDICTED_RATING, sa.Float, nullable=True),
    ),
    "similar_items": (
        sa.Column(C.ITEM, sa.Text, nullable=False),
        sa.Column(C.SIMILAR_ITEM, sa.Text, nullable=False),
        sa.Column(C.RANK, sa.Integer, nullable=False),
        sa.Column(C.SCORE, sa.Float, nullable=False),
        sa.Column(C.MODEL_VERSION, sa.String(128), nullable=False),
        sa.Column(C.GENERATED_AT, sa.DateTime(timezone=True), nullable=False),
    ),
    # Per item, the users most likely to want it (settings item_segments), best first.
    "item_segments": (
        sa.Column(C.ITEM, sa.Text, nullable=False),
        sa.Column(C.USER, sa.Text, nullable=False),
        sa.Column(C.RANK, sa.Integer, nullable=False),
        sa.Column(C.SCORE, sa.Float, nullable=False),
        sa.Column(C.MODEL_VERSION, sa.String(128), nullable=False),
        sa.Column(C.GENERATED_AT, sa.DateTime(timezone=True), nullable=False),
    ),
}
LIST_KEY = {"recommendations": C.USER, "similar_items": C.ITEM, "item_segments": C.ITEM}
# The longest key (in UTF-8 bytes) a PostgreSQL B-tree index on (key, rank) surely takes:
# its limit is 2,704 bytes an entry, after compression.
PG_BTREE_KEY_BYTES = 2000


def list_table(kind: str, name: str) -> sa.Table:
    """A versioned table for list ``kind`` ("recommendations", "similar_items", "item_segments"), unindexed."""
    cols = [c._copy() for c in LIST_COLUMNS[kind]]
    return sa.Table(name, sa.MetaData(), *cols)


def list_index(kind: str, table: sa.Table) -> sa.Index:
    """The read-path index of a list table: one key's list, in rank order, unique."""
    return sa.Index(f"ix_{table.name}_key", table.c[LIST_KEY[kind]], table.c[C.RANK], unique=True)


def list_indexes(kind: str, table: sa.Table, conn: Connection, longest_key_bytes: int) -> list[sa.Index]:
    """The indexes of a loaded list table whose longest key has ``longest_key_bytes`` UTF-8 bytes.

    :func:`list_index`, unless the table is on PostgreSQL and a key may be too long for
    a B-tree entry: then a hash index on the key (the read path) and a unique B-tree on
    its MD5 and the rank (what keeps each key's ranks unique).
    """
    if is_sqlite(conn) or longest_key_bytes <= PG_BTREE_KEY_BYTES:
        return [list_index(kind, table)]
    key = LIST_KEY[kind]
    return [sa.Index(f"ix_{table.name}_key", table.c[key], postgresql_using="hash"),
            sa.Index(f"ux_{table.name}_key", sa.text(f"decode(md5({key}), 'hex')"), table.c[C.RANK], unique=True)]


def view_sql(conn: Connection, kind: str, table_name: str) -> list[str]:
    """Statements that (re)point the view ``kind`` at ``table_name``, in the caller's transaction.

    On PostgreSQL ``CREATE OR REPLACE VIEW`` cannot change a column's type, and tables of
    older releases have ``varchar`` ids where newer ones have ``text``: when the types
    differ the view is dropped and created again, in the same transaction (readers see
    the old view or the new one).
    """
    present = {c["name"] for c in sa.inspect(conn).get_columns(table_name)}
    # A version table of an earlier release lacks the nullable columns added since (e.g. a
    # rollback target from before predicted_rating): the view gives NULL for them.
    cols = ", ".join(c.name if c.name in present or not c.nullable
                     else f"CAST(NULL AS {c.type.compile(dialect=conn.dialect)}) AS {c.name}"
                     for c in LIST_COLUMNS[kind])
    select = f"SELECT {cols} FROM {table_name}"
    if is_sqlite(conn):
        return [f"DROP VIEW IF EXISTS {kind}", f"CREATE VIEW {kind} AS {select}"]
    view = _pg_column_types(conn, kind)
    if view and view != _pg_column_types(conn, table_name, list(view)):
        return [f"DROP VIEW {kind}", f"CREATE VIEW {kind} AS {select}"]
    return [f"CREATE OR REPLACE VIEW {kind} AS {select}"]


def _pg_column_types(conn: Connection, relation: str, columns: list[str] | None = None) -> dict[str, str]:
    """Column -> type (as ``format_type`` writes it) of a PostgreSQL table or view; empty if it does not exist."""
    rows = conn.execute(sa.text(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(:r) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"),
        {"r": relation}).all()
    types = dict(rows)
    return types if columns is None else {c: types.get(c, "") for c in columns}


def ensure_live_views(engine: Engine) -> None:
    """Give each list an empty version 0 and its view, so apps' queries work from day one."""
    existing = set(sa.inspect(engine).get_view_names())
    for kind in LIST_COLUMNS:
        if kind in existing:
            continue
        with write_tx(engine) as conn:
            table = list_table(kind, f"{kind}_v0")
            if not sa.inspect(conn).has_table(table.name):
                table.create(conn)
                list_index(kind, table).create(conn)
            for stmt in view_sql(conn, kind, table.name):
                conn.exec_driver_sql(stmt)


def ensure_schema(engine: Engine) -> None:
    """Create the tables, and empty live lists, if they are missing. Idempotent.

    Columns added to a table in a later version are added to an existing database's
    table too (nullable, so old rows stay valid), so upgrading needs no manual step.
    """
    metadata.create_all(engine)
    add_missing_columns(engine)
    if not is_sqlite(engine):
        upgrade_postgresql(engine)
    ensure_live_views(engine)


def add_missing_columns(engine: Engine) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for every column of :data:`metadata` a table lacks.

    Returns the ``table.column`` names added. New columns must be nullable or have a
    server default, since existing rows get no value.
    """
    added = []
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
            added.append(f"{table.name}.{column.name}")
    return added


def _for_dialect(item: sa.Index | sa.Constraint, dialect_name: str) -> bool:
    """Whether ``item`` is created on ``dialect_name`` (its ``ddl_if``, if any)."""
    rule = getattr(item, "_ddl_if", None)
    return rule is None or rule.dialect is None or rule.dialect == dialect_name


def _pg_upgrade_plan(conn: Connection) -> list[str]:
    """The statements that bring a PostgreSQL database of an older release to :data:`metadata`'s ids.

    Older releases had ``varchar(128)`` ids and B-tree primary keys on them; ids are now
    ``text`` (a type change PostgreSQL makes without rewriting the table) with the indexes
    of :func:`_pg_lookup` and :func:`_pg_unique`.
    """
    inspector = sa.inspect(conn)
    plan = []
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"]: c["type"] for c in inspector.get_columns(table.name)}
        widen = [c.name for c in table.columns if isinstance(c.type, sa.Text) and c.name in present
                 and not isinstance(present[c.name], sa.Text)]
        if widen:
            plan.append(f"ALTER TABLE {table.name} " + ", ".join(f"ALTER COLUMN {c} TYPE text" for c in widen))
        pk = inspector.get_pk_constraint(table.name)
        if pk.get("constrained_columns") and not _for_dialect(table.primary_key, "postgresql"):
            plan.append(f"ALTER TABLE {table.name} DROP CONSTRAINT {pk['name']}")
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            if index.name not in indexes and _for_dialect(index, "postgresql"):
                plan.append(str(CreateIndex(index).compile(dialect=conn.dialect)))
    return plan


def upgrade_postgresql(engine: Engine) -> list[str]:
    """Bring a PostgreSQL database made by an older release to the current ids and indexes; returns the statements run.

    Nothing to do (the usual case) costs one catalog read. Otherwise the statements run
    in one transaction, under an advisory lock so that two stages starting at once do
    not both run them. The live views follow at the next swap (:func:`view_sql`).
    """
    with engine.connect() as conn:
        if not _pg_upgrade_plan(conn) and not _history_unpartitioned(conn):
            return []
    with write_tx(engine) as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('recjobs:schema'))"))
        done = []
        if _history_unpartitioned(conn):  # again under the lock: another stage may have done it
            log.warning("upgrading the schema (once): recommendations_history becomes one partition a date; "
                        "copying its rows")
            moved = partition_existing(conn, recommendations_history)
            done.append(f"partitioned recommendations_history by run_date ({moved:,} rows)")
        plan = _pg_upgrade_plan(conn)
        for stmt in plan:
            log.warning("upgrading the schema (once): %s", stmt)
            conn.exec_driver_sql(stmt)
    return done + plan


def _history_unpartitioned(conn: Connection) -> bool:
    """Whether ``recommendations_history`` is an older release's plain table (PostgreSQL)."""
    kind = conn.execute(sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass('recommendations_history')"))
    return kind.scalar() == "r"


def schema_sql(dialect_name: str) -> str:
    """The DDL for ``dialect_name`` (sqlite or postgresql), as a SQL script."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect()}[dialect_name]
    parts = [
        f"-- recjobs schema for {dialect_name}. Generated by `recjobs schema --dialect "
        f"{dialect_name}` from recjobs/db/schema.py; do not edit by hand.",
        "-- The project applies it itself (recjobs initdb, and every stage on start).",
    ]
    for table in metadata.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            if _for_dialect(index, dialect_name):
                parts.append(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";")
    for kind in LIST_COLUMNS:
        table = list_table(kind, f"{kind}_v0")
        parts.append(f"-- {kind}: versioned tables {kind}_v<N>; apps read the view `{kind}`.")
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
        index = list_index(kind, table)
        parts.append(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";")
        cols = ", ".join(c.name for c in LIST_COLUMNS[kind])
        parts.append(f"CREATE VIEW {kind} AS SELECT {cols} FROM {kind}_v0;")
    return "\n\n".join(parts) + "\n"


def engine_for(settings: Settings) -> Engine:
    """An engine on the recommendations database of ``settings``, with the schema in place.

    Raises :class:`~recjobs.errors.DatabaseError` naming the database (password masked)
    when it cannot be reached or its URL is malformed.
    """
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    try:
        ensure_schema(engine)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"recommendations database {settings.db_url_masked}: cannot create or check "
                            f"the schema: {_first_line(exc)}") from None
    return engine


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
