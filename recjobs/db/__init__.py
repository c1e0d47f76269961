"""The recommendations database: engines, the schema (tables and live list views), and the
``model_runs`` ledger (:mod:`recjobs.db.ledger`, the only writer of its rows), and
``recommendations_history`` (:mod:`recjobs.db.history`, the only writer of its rows)."""

from recjobs.db import history, ledger
from recjobs.db.engine import is_sqlite, libpq_uri, make_engine, normalize_url, write_tx
from recjobs.db.schema import (
    LIST_COLUMNS,
    LIST_KEY,
    add_missing_columns,
    engine_for,
    ensure_live_views,
    ensure_schema,
    ingest_log,
    items,
    list_index,
    list_indexes,
    list_table,
    metadata,
    model_runs,
    popular_items,
    publications,
    recommendations_history,
    schema_sql,
    segment_popular_items,
    upgrade_postgresql,
    user_segments,
    view_sql,
)

__all__ = [
    "LIST_COLUMNS", "LIST_KEY", "add_missing_columns", "engine_for", "ensure_live_views", "ensure_schema",
    "history", "ingest_log", "is_sqlite", "items", "ledger", "libpq_uri", "list_index", "list_indexes", "list_table",
    "make_engine", "metadata", "model_runs", "normalize_url", "popular_items", "publications", "recommendations_history",
    "schema_sql", "segment_popular_items", "upgrade_postgresql", "user_segments", "view_sql", "write_tx",
]
