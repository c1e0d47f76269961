"""The fallback lists: small tables replaced whole in one transaction.

``popular_items`` (the global list for users with no personal list), and per segment
``segment_popular_items`` with each user's segment in ``user_segments``
(``coldstart.segment_prefix``). Their rows come from :mod:`recjobs.ranking.coldstart`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from sqlalchemy.engine import Connection

from recjobs.db.schema import popular_items, segment_popular_items, user_segments


def replace_fallback_lists(conn: Connection, popular: Sequence[dict[str, Any]],
                           segment_rows: Sequence[dict[str, Any]], segments: pd.DataFrame | None) -> None:
    """Replace the fallback tables inside the caller's transaction.

    With segments off (``segments`` None) the segment tables are emptied, so a
    turned-off setting leaves no stale lists for the fallback query to find.
    """
    conn.execute(popular_items.delete())
    if popular:
        conn.execute(popular_items.insert(), list(popular))
    conn.execute(segment_popular_items.delete())
    conn.execute(user_segments.delete())
    if segments is None:
        return
    # Never an insert of no rows: SQLAlchemy would send one row of defaults (NULLs).
    if segment_rows:
        conn.execute(segment_popular_items.insert(), list(segment_rows))
    if len(segments):
        conn.execute(user_segments.insert(), segments.to_dict("records"))


__all__ = ["replace_fallback_lists"]
