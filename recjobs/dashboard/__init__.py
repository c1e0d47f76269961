"""The dashboard, independent of any web framework: ``data`` (what it shows, read from the
database and run folders), ``charts`` (Vega-Lite specs), ``page`` (the HTML) and
``embedding_map`` (the champion's item vectors in 2-D). The Airflow plugin serves it."""

from recjobs.dashboard.charts import (
    GENRE_PALETTE,
    METRICS,
    PALETTE,
    embedding_map_spec,
    metric_chart_spec,
    metric_chart_specs,
    overlap_chart_spec,
)
from recjobs.dashboard.data import (
    Champion,
    ItemLookup,
    LiveArtifact,
    UserLookup,
    champion,
    champion_map,
    close_ids,
    failed_nights,
    full_matrix,
    gate_decisions,
    ingest_by_date,
    item_titles,
    list_overlap,
    live_artifact,
    lookup_item,
    lookup_user,
    metrics_by_date,
    missing_schema,
    published_versions,
    sqlite_file_missing,
)
from recjobs.dashboard.embedding_map import (
    NO_GENRE,
    EmbeddingMap,
    build_map,
    item_genres,
    load_map,
    project_2d,
)
from recjobs.dashboard.page import (
    DASH,
    NO_SCHEMA,
    ROLLBACK_DAG,
    VEGA_BUNDLE_PATH,
    render,
    render_no_schema,
    vega_embed_bundle,
    warm_up,
)

__all__ = [
    "DASH", "GENRE_PALETTE", "METRICS", "NO_GENRE", "NO_SCHEMA", "PALETTE", "ROLLBACK_DAG", "VEGA_BUNDLE_PATH", "Champion", "EmbeddingMap", "ItemLookup",
    "LiveArtifact", "UserLookup", "build_map", "champion", "champion_map", "close_ids", "embedding_map_spec",
    "failed_nights", "full_matrix", "gate_decisions", "ingest_by_date", "item_genres", "item_titles", "list_overlap", "live_artifact", "load_map", "lookup_item", "lookup_user",
    "metric_chart_spec", "metric_chart_specs", "metrics_by_date", "overlap_chart_spec", "missing_schema", "project_2d", "published_versions", "render",
    "render_no_schema", "sqlite_file_missing", "vega_embed_bundle", "warm_up",
]
