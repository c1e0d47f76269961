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

import datetime as dt
import logging
import os
import re
from typing import Any

from airflow.sdk import Asset, AssetAlias, BaseNotifier
from airflow.sdk.exceptions import AirflowFailException

DB_CONN_ID = "recjobs_db"

log = logging.getLogger("recjobs.dags")

RATINGS_LAKE = Asset(name="recjobs.ratings_lake", uri="recjobs://lake/ratings", group="recjobs")
RECOMMENDATIONS = Asset(name="recjobs.recommendations", uri="recjobs://database/recommendations", group="recjobs")
SIMILAR_ITEMS = Asset(name="recjobs.similar_items", uri="recjobs://database/similar_items", group="recjobs")
ITEM_SEGMENTS = Asset(name="recjobs.item_segments", uri="recjobs://database/item_segments", group="recjobs")
PUBLISHED_ASSETS = {"recommendations": RECOMMENDATIONS, "similar_items": SIMILAR_ITEMS, "item_segments": ITEM_SEGMENTS}
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


def run_date(context: dict[str, Any]) -> str:
    """The partition a run computes: the params' run_date, else its logical date's UTC day."""
    override = (context.get("params") or {}).get("run_date")
    if override:
        return dt.date.fromisoformat(override).isoformat()
    # A run triggered without a logical date (API, `airflow dags trigger` without one) has
    # only run_after: when it was asked to run.
    when = context.get("logical_date") or context["dag_run"].run_after
    return when.astimezone(dt.UTC).date().isoformat()


class GuardHeld(AirflowFailException):
    """A guard held the night (recjobs.guard): the task fails without retries, and the failure
    alert says which checks failed and how to let the night through.

    ``stage``: the guard (``input`` or ``output``); ``told``: an earlier task of the run
    already alerted about it (the gate, after the split was held), so no second message.
    """

    def __init__(self, message: str, stage: str, told: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.told = told


class RecjobsNotifier(BaseNotifier):
    """E-mails what happened through the settings' ``alerts`` (off by default): a task failure, a night a
    guard held (:class:`GuardHeld`: the failed checks and how to let it through) or a promotion.

    Attach it as ``on_failure_callback`` (``RecjobsNotifier("failure")``: names the task and its
    exception's first line) or as the gate task's ``on_success_callback``
    (``RecjobsNotifier("promotion")``: sent only when the gate promoted a new champion). The
    text is built by ``recjobs.alerts``; a message that cannot be sent is logged, and the
    task's outcome stays as it was.
    """

    def __init__(self, event: str) -> None:
        super().__init__()
        if event not in ("failure", "promotion"):
            raise ValueError(f"RecjobsNotifier: unknown event {event!r}; use 'failure' or 'promotion'")
        self.event = event

    def notify(self, context: dict[str, Any]) -> None:  # type: ignore[override]
        """Build the message from the callback's context and send it, if alerts are on."""
        from recjobs import alerts
        from recjobs.errors import RecjobsError
        from recjobs.settings import load_settings

        params = context.get("params") or {}
        try:
            # The failure message needs no database: it is sent even when the failure was the database.
            settings = load_settings() if self.event == "failure" else task_settings(params)
            if not settings.alerts.enabled or (self.event == "promotion" and not settings.alerts.on_promotion):
                return
            day = run_date(context)
            url = settings.alerts.dashboard_url
            if self.event == "failure" and isinstance(context.get("exception"), GuardHeld):
                held: GuardHeld = context["exception"]
                if held.told:
                    log.info("no alert: the %s guard's hold of %s was alerted by an earlier task", held.stage, day)
                    return
                message = _guarded(context, held, day, url)
                if message is not None:
                    alerts.send(settings.alerts, message)
                    return
            if self.event == "failure":
                ti, error = context["ti"], context.get("exception")
                # Passwords out of the whole text first: recjobs then takes its first line, and a
                # line cut short could end inside one.
                shown = None if error is None else redact(f"{type(error).__name__}: {error}")
                message = alerts.failure_alert(
                    day, _name(ti), shown,
                    dag_id=ti.dag_id, run_id=ti.run_id, try_number=ti.try_number, max_tries=ti.max_tries + 1,
                    log_url=getattr(ti, "log_url", None), dashboard_url=url)
            else:
                from recjobs.pipeline import engine_for

                message = alerts.promotion_of(settings, engine_for(settings), day, dashboard_url=url)
                if message is None:
                    return
            alerts.send(settings.alerts, message)
        except (RecjobsError, DatabaseConnectionError) as exc:
            log.error("recjobs %s alert not sent: %s", self.event, redact(str(exc)))


def _guarded(context: dict[str, Any], held: GuardHeld, day: str, url: str | None) -> Any:  # noqa: ANN401
    """The held night's alert from the checks the guard recorded, or None (then the plain failure
    alert goes out) when they cannot be read."""
    from sqlalchemy.exc import SQLAlchemyError

    from recjobs import alerts
    from recjobs.errors import RecjobsError
    from recjobs.pipeline import engine_for

    ti = context["ti"]
    try:
        engine = engine_for(task_settings(context.get("params")))
        return alerts.guarded_of(engine, day, held.stage, run_id=ti.run_id, log_url=getattr(ti, "log_url", None),
                                 dashboard_url=url)
    except (SQLAlchemyError, RecjobsError, DatabaseConnectionError) as exc:
        log.error("the %s guard's checks of %s cannot be read (%s): sending the plain failure alert",
                  held.stage, day, redact(str(exc)))
        return None


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


def _deployment_sets(key: str) -> bool:
    """Whether this deployment set Airflow's ``[core] key`` (a variable, or airflow.cfg off the default)."""
    from airflow.sdk import conf

    if f"AIRFLOW__CORE__{key.upper()}" in os.environ:
        return True
    # A generated airflow.cfg writes Airflow's defaults out: a value equal to the default says nothing.
    return conf.get("core", key, fallback=None) != conf.get_default_value("core", key)


def task_defaults() -> dict[str, Any]:
    """``default_args`` for the nightly DAG: retries, their delay, and a log line on each retry.

    Retries follow Airflow's ``[core] default_task_retries`` / ``default_task_retry_delay``
    where the deployment sets them, else the settings' ``airflow.retries`` /
    ``airflow.retry_delay_seconds``. Read when the DAG file is parsed.
    """
    from airflow.sdk import conf

    from recjobs.settings import load_settings

    own = load_settings().airflow
    retries = (conf.getint("core", "default_task_retries") if _deployment_sets("default_task_retries")
               else own.retries)
    delay = (conf.getfloat("core", "default_task_retry_delay") if _deployment_sets("default_task_retry_delay")
             else own.retry_delay_seconds)
    return {"retries": retries, "retry_delay": dt.timedelta(seconds=delay),
            "on_retry_callback": log_retry, "on_execute_callback": log_start_over}


def _name(ti: Any) -> str:  # noqa: ANN401 - a RuntimeTaskInstance
    index = getattr(ti, "map_index", -1)
    return ti.task_id if index is None or index < 0 else f"{ti.task_id}[{index}]"


def log_retry(context: dict[str, Any]) -> None:
    """``on_retry_callback``: why this try ended, and that the task will start over."""
    ti = context["ti"]
    error = context.get("exception")
    # No exception: the try ended outside the task's own code, and this callback runs in the
    # dag-processor. The scheduler's log says which (no heartbeat, or the executor reported a failure).
    why = (f"{type(error).__name__}: {redact(str(error))}" if error is not None else
           "it ended without reporting back (its worker was lost or killed, or could not reach "
           "the API server; the scheduler's log says which)")
    log.warning("%s try %s ended: %s; it starts over as try %s of %s", _name(ti), ti.try_number, why,
                ti.try_number + 1, ti.max_tries + 1)


def log_start_over(context: dict[str, Any]) -> None:
    """``on_execute_callback``: on a retry, say that the task starts over and why that is safe."""
    ti = context["ti"]
    if ti.try_number > 1:
        log.warning("%s try %s of %s: starting over, because try %s did not succeed (its log, or the "
                    "scheduler's, says why); the task rewrites its own outputs whole, so nothing of that "
                    "try is kept", _name(ti), ti.try_number, ti.max_tries + 1, ti.try_number - 1)
