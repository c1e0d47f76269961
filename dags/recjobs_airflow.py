"""What the recjobs DAGs share: their Airflow Assets and how they find settings and the database.

Downstream DAGs import the Assets from here (this folder is on Airflow's ``sys.path``)::

    from recjobs_airflow import RECOMMENDATIONS

    @dag(schedule=[RECOMMENDATIONS], ...)

Asset names and URIs are stable identifiers, not locations: the database behind
``recommendations`` is the ``recjobs_db`` connection, read when a task runs, and can change
without orphaning the DAGs scheduled on it. Each event's ``extra`` says where and what:
``run_date``, ``table``, ``rows``, ``database`` (URL without its password) for the lists;
``files``, ``rows``, ``lake`` for the lake.

Events go through the aliases below so that a task emits one only when something changed:
a publish only when its lists went live (a backfilled date kept as history only emits
nothing), an ingest only when a file added rows to the lake.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from airflow.sdk import Asset, AssetAlias

DB_CONN_ID = "recjobs_db"

log = logging.getLogger("recjobs.dags")

RATINGS_LAKE = Asset(name="recjobs.ratings_lake", uri="recjobs://lake/ratings", group="recjobs")
RECOMMENDATIONS = Asset(name="recjobs.recommendations", uri="recjobs://database/recommendations", group="recjobs")
SIMILAR_ITEMS = Asset(name="recjobs.similar_items", uri="recjobs://database/similar_items", group="recjobs")
PUBLISHED_ASSETS = {"recommendations": RECOMMENDATIONS, "similar_items": SIMILAR_ITEMS}
# A task names the alias as its outlet and adds an event for a real Asset only when it changed it.
LAKE_UPDATES = AssetAlias(name="recjobs.lake_updates", group="recjobs")
LIVE_PUBLICATIONS = AssetAlias(name="recjobs.live_publications", group="recjobs")


class DatabaseConnectionError(RuntimeError):
    """The ``recjobs_db`` connection exists but cannot be used; never fall back then."""


def redact(text: str) -> str:
    """``text`` with passwords in URIs or a connection's JSON shown as ``***``."""
    # Messages may quote a URI or the connection's JSON: keep the password out of logs.
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r'("password"\s*:\s*)"(?:[^"\\]|\\.)*"', r'\1"***"', text)


def database_url() -> str | None:
    """The recommendations database from the ``recjobs_db`` connection, if one is defined.

    Only a connection that does not exist falls back to RECJOBS_DATABASE_URL / the embedded
    SQLite default; any other failure fails the task, so nothing is published elsewhere.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    env_name = f"AIRFLOW_CONN_{DB_CONN_ID.upper()}"
    try:
        return BaseHook.get_connection(DB_CONN_ID).get_uri()
    except AirflowNotFoundException:
        # The task SDK also reports "not found" when a secrets backend fails to parse the
        # connection (it logs the error at debug level and tries the next backend), so a
        # defined but malformed AIRFLOW_CONN_RECJOBS_DB lands here too.
        if os.environ.get(env_name):
            raise DatabaseConnectionError(
                f"Airflow connection {DB_CONN_ID!r} is set in {env_name} but Airflow cannot read it "
                "(a malformed URI or JSON?); refusing to fall back to the embedded database"
            ) from None
        return None
    except Exception as exc:
        raise DatabaseConnectionError(
            f"Airflow connection {DB_CONN_ID!r} cannot be used: {type(exc).__name__}: {redact(str(exc))}; "
            "refusing to fall back to the embedded database"
        ) from None


def task_settings(params: dict[str, Any] | None = None):  # noqa: ANN201 - recjobs.settings.Settings, lazily
    """Settings for a task: ``RECJOBS_*`` and the run's params, on the ``recjobs_db`` database."""
    from recjobs.settings import load_settings

    params = params or {}
    overrides: dict[str, Any] = {
        "families": params.get("families") or None,
        "train_window_days": params.get("train_window_days"),
        "database_url": database_url(),
    }
    return load_settings(overrides)


def report_ingest(settings: Any, reports: list[Any]) -> dict[str, Any] | None:  # noqa: ANN401
    """Log what an inbox ingest added; the lake Asset event's extra, or None when nothing new went in."""
    new = [r for r in reports if not r.skipped]
    rows = int(sum(r.rows_valid for r in new))
    # Each file was logged by recjobs as it went; this is the total, once.
    log.info("inbox %s: %d new file(s), %d valid rows; %d seen before", settings.inbox, len(new), rows,
             len(reports) - len(new))
    if not new:
        return None
    return {"files": [os.path.basename(r.source_path) for r in new], "rows": rows, "lake": str(settings.lake)}
