"""The recjobs schema: one definition for SQLite and PostgreSQL, and the live list views.

The DDL lives here, as SQLAlchemy Core tables, so both dialects come from one
place; ``sql/schema_<dialect>.sql`` are generated from it (``recjobs schema``)
for people who read SQL, and a test keeps them in sync. Each published list is a
versioned table (``recommendations_v<N>``) behind a view of the list's name; the
views (and an empty version 0) are schema too, created with the tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateIndex, CreateTable

from recjobs import columns as C
from recjobs.db.engine import is_sqlite, make_engine, write_tx
from recjobs.errors import DatabaseError

if TYPE_CHECKING:
    from recjobs.settings import Settings

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

publications = sa.Table(
    "publications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),  # recommendations | similar_items
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

recommendations_history = sa.Table(
    "recommendations_history",
    metadata,
    sa.Column(C.RUN_DATE, sa.String(10), nullable=False),
    sa.Column(C.USER, sa.String(128), nullable=False),
    sa.Column(C.ITEM, sa.String(128), nullable=False),
    sa.Column(C.RANK, sa.Integer, nullable=False),
    sa.Column(C.SCORE, sa.Float, nullable=False),
    sa.Column(C.MODEL_VERSION, sa.String(128), nullable=False),
    sa.PrimaryKeyConstraint(C.RUN_DATE, C.USER, C.RANK),
)

popular_items = sa.Table(
    "popular_items",
    metadata,
    sa.Column(C.RANK, sa.Integer, primary_key=True),
    sa.Column(C.ITEM, sa.String(128), nullable=False),
    sa.Column(C.SCORE, sa.Float, nullable=False),
    sa.Column(C.RUN_DATE, sa.String(10), nullable=False),
)

# Cold start per segment (coldstart.segment_prefix): the popular items among each segment's
# users, and each user's segment, so a new user with features gets their segment's list.
# Tables of their own, so popular_items (and every query on it) stays the global list.
segment_popular_items = sa.Table(
    "segment_popular_items",
    metadata,
    sa.Column(C.SEGMENT, sa.String(256), primary_key=True),
    sa.Column(C.RANK, sa.Integer, primary_key=True),
    sa.Column(C.ITEM, sa.String(128), nullable=False),
    sa.Column(C.SCORE, sa.Float, nullable=False),
    sa.Column(C.RUN_DATE, sa.String(10), nullable=False),
)

user_segments = sa.Table(
    "user_segments",
    metadata,
    sa.Column(C.USER, sa.String(128), primary_key=True),
    sa.Column(C.SEGMENT, sa.String(256), nullable=False),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column(C.ITEM, sa.String(128), primary_key=True),
    sa.Column(C.TITLE, sa.Text),
)

# Columns of a published list table; the live one is reached through a view of the
# list's name, repointed in one transaction (see publish.py).
LIST_COLUMNS = {
    "recommendations": (
        sa.Column(C.USER, sa.String(128), nullable=False),
        sa.Column(C.ITEM, sa.String(128), nullable=False),
        sa.Column(C.RANK, sa.Integer, nullable=False),
        sa.Column(C.SCORE, sa.Float, nullable=False),
        sa.Column(C.MODEL_VERSION, sa.String(128), nullable=False),
        sa.Column(C.GENERATED_AT, sa.DateTime(timezone=True), nullable=False),
    ),
    "similar_items": (
        sa.Column(C.ITEM, sa.String(128), nullable=False),
        sa.Column(C.SIMILAR_ITEM, sa.String(128), nullable=False),
        sa.Column(C.RANK, sa.Integer, nullable=False),
        sa.Column(C.SCORE, sa.Float, nullable=False),
        sa.Column(C.MODEL_VERSION, sa.String(128), nullable=False),
        sa.Column(C.GENERATED_AT, sa.DateTime(timezone=True), nullable=False),
    ),
}
LIST_KEY = {"recommendations": C.USER, "similar_items": C.ITEM}


def list_table(kind: str, name: str) -> sa.Table:
    """A versioned table for list ``kind`` ("recommendations" or "similar_items"), unindexed."""
    cols = [c._copy() for c in LIST_COLUMNS[kind]]
    return sa.Table(name, sa.MetaData(), *cols)


def list_index(kind: str, table: sa.Table) -> sa.Index:
    """The read-path index of a list table: one key's list, in rank order."""
    return sa.Index(f"ix_{table.name}_key", table.c[LIST_KEY[kind]], table.c[C.RANK], unique=True)


def view_sql(conn: Connection, kind: str, table_name: str) -> list[str]:
    """Statements that (re)point the view ``kind`` at ``table_name``, in the caller's transaction."""
    cols = ", ".join(c.name for c in LIST_COLUMNS[kind])
    select = f"SELECT {cols} FROM {table_name}"
    if is_sqlite(conn):
        return [f"DROP VIEW IF EXISTS {kind}", f"CREATE VIEW {kind} AS {select}"]
    return [f"CREATE OR REPLACE VIEW {kind} AS {select}"]


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
