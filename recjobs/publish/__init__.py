"""Publish ranked lists to SQL with no partial reads and no blocked readers.

A list is ranked into staging Parquet files first (:mod:`~recjobs.publish.staging`),
with no database transaction open, then published (:mod:`~recjobs.publish.versions`) in
one transaction: it creates a new versioned table per list (``recommendations_v<N>``),
bulk loads it (:mod:`~recjobs.publish.copy`: binary COPY on PostgreSQL, executemany on
SQLite), indexes and analyzes it, and ends by repointing the stable views
(``recommendations``) at them under bounded lock waits (:mod:`~recjobs.publish.locks`)
together with the fallback lists. Readers therefore see the whole previous set or the
whole new one, and a publish killed before its commit leaves nothing. Older versions are pruned
(:mod:`~recjobs.publish.retention`) and can be rolled back to
(:mod:`~recjobs.publish.rollback`); the fallback lists are small tables replaced whole
(:mod:`~recjobs.publish.tables`).

A publish whose run date is older than the live one (a backfill) is loaded and kept as
history but never made live; its table is the first to be pruned.
"""

from recjobs.errors import PublishError, SwapTimeoutError
from recjobs.publish.copy import binary_copy_rows, bulk_load
from recjobs.publish.locks import SwapPolicy, live_version
from recjobs.publish.retention import prune, prune_history
from recjobs.publish.rollback import rollback, rollback_lists
from recjobs.publish.staging import rank_to_staging, read_staging, staged_version
from recjobs.publish.tables import replace_fallback_lists
from recjobs.publish.versions import (
    PublishResult,
    SwapHook,
    load_staging,
    publish_list,
    publish_lists,
)

__all__ = [
    "PublishError", "PublishResult", "SwapHook", "SwapPolicy", "SwapTimeoutError", "binary_copy_rows", "bulk_load",
    "live_version", "load_staging", "prune", "prune_history", "publish_list", "publish_lists", "rank_to_staging",
    "read_staging", "replace_fallback_lists", "rollback", "rollback_lists", "staged_version",
]
