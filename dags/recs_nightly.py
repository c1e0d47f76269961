"""Nightly recommendations: ingest -> split -> train/evaluate each family -> gate -> retrain -> rank shards -> publish.

Every task is a thin call into ``recjobs``; tasks hand each other dates and paths,
never data. Heavy libraries (TensorFlow, implicit, LightFM) are imported inside the
tasks that need them, never at parse time.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSkipException,
)
from airflow.timetables.interval import CronDataIntervalTimetable

FAMILIES = ["popularity", "als", "lightfm", "tfrs"]
DB_CONN_ID = "recjobs_db"


def _queues() -> tuple[dict[str, str], dict[str, str]]:
    """Task kwargs routing training and ranking to the queues in settings (`airflow.*`)."""
    # Parse time: only pydantic settings are imported here, nothing heavy.
    from recjobs.settings import load_settings

    routes = load_settings().airflow
    return ({"queue": routes.train_queue} if routes.train_queue else {},
            {"queue": routes.score_queue} if routes.score_queue else {})


TRAIN_QUEUE, SCORE_QUEUE = _queues()


class DatabaseConnectionError(RuntimeError):
    """The ``recjobs_db`` connection exists but cannot be used; never fall back then."""


def _redact(text: str) -> str:
    # Messages may quote a URI or the connection's JSON: keep the password out of logs.
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r'("password"\s*:\s*)"(?:[^"\\]|\\.)*"', r'\1"***"', text)


def _database_url() -> str | None:
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
            f"Airflow connection {DB_CONN_ID!r} cannot be used: {type(exc).__name__}: {_redact(str(exc))}; "
            "refusing to fall back to the embedded database"
        ) from None


def _settings(params: dict[str, Any]):  # noqa: ANN202 - recjobs.settings.Settings, imported lazily
    from recjobs.settings import load_settings

    overrides: dict[str, Any] = {
        "families": params.get("families") or None,
        "train_window_days": params.get("train_window_days"),
        "database_url": _database_url(),
    }
    return load_settings(overrides)


def _run_date(context: dict[str, Any]) -> str:
    """The partition this run computes: the params' run_date, else the data interval's start day."""
    override = context["params"].get("run_date")
    if override:
        return dt.date.fromisoformat(override).isoformat()
    start = context.get("data_interval_start") or context["logical_date"]
    return start.date().isoformat()


@dag(
    dag_id="recs_nightly",
    # A data-interval timetable: each run covers one whole UTC day and its logical
    # date names that day (a plain cron string would give a zero-length interval).
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # Retries come from Airflow's own [core] default_task_retries / default_task_retry_delay,
    # so operators tune them per deployment (docker-compose.yaml sets one retry).
    params={
        "families": Param(None, type=["null", "array"], items={"enum": FAMILIES}, minItems=1,
                          description="Model families to train (default: the settings', RECJOBS_FAMILIES)."),
        "run_date": Param(None, type=["null", "string"], format="date",
                          description="Compute this date instead of the run's data interval (YYYY-MM-DD)."),
        "train_window_days": Param(None, type=["null", "integer"], minimum=1,
                                   description="Train on the last N days only (default: all history)."),
    },
    tags=["recjobs"],
    doc_md=__doc__,
)
def recs_nightly() -> None:
    @task
    def ingest() -> int:
        from recjobs.ingest import ingest_inbox
        from recjobs.pipeline import engine_for

        settings = _settings(get_current_context()["params"])
        reports = ingest_inbox(settings, engine_for(settings))
        for r in reports:
            print(r.summary())
        return sum(r.rows_valid for r in reports)

    @task
    def split() -> str:
        from recjobs.pipeline import prepare

        context = get_current_context()
        return str(prepare(_settings(context["params"]), _run_date(context)))

    def train_and_evaluate(family: str):  # noqa: ANN202 - returns the two task objects
        @task(task_id=f"train_{family}", **TRAIN_QUEUE)
        def train() -> str:
            from recjobs.pipeline import engine_for, record_failure, train_candidate

            context = get_current_context()
            settings = _settings(context["params"])
            if family not in settings.families:
                raise AirflowSkipException(f"{family} not in params.families")
            engine = engine_for(settings)
            try:
                return str(train_candidate(settings, engine, _run_date(context), family))
            except Exception as exc:
                record_failure(engine, _run_date(context), family, exc)
                raise

        @task(task_id=f"evaluate_{family}")
        def evaluate() -> float:
            from recjobs.pipeline import engine_for, evaluate_candidate

            context = get_current_context()
            settings = _settings(context["params"])
            return evaluate_candidate(settings, engine_for(settings), _run_date(context), family).ndcg

        return train(), evaluate()

    # all_done: a family that failed must not stop the others from being gated and published.
    # No depends_on_past: a failed night would block every later one (and Airflow's deadlock
    # detection does not see it). Gate order comes from model_runs instead: see below.
    @task(trigger_rule="all_done")
    def promote() -> str:
        from recjobs.pipeline import NoCandidatesError, earlier_dates_in_flight, engine_for
        from recjobs.pipeline import promote as gate

        context = get_current_context()
        settings = _settings(context["params"])
        engine = engine_for(settings)
        day = _run_date(context)
        note = ""
        # The gate compares with the champion of the latest earlier gate. When a backfill runs
        # several dates at once, wait (in up_for_reschedule, holding no worker slot) for earlier
        # dates still in flight, at most gate.wait_timeout_minutes from the first attempt.
        pending = earlier_dates_in_flight(settings, engine, day)
        if pending:
            now = dt.datetime.now(dt.UTC)
            waited = now - (context["ti"].get_first_reschedule_date(context) or now)
            limit = dt.timedelta(minutes=settings.gate.wait_timeout_minutes)
            dates = ", ".join(map(str, pending))
            if waited < limit:
                print(f"waiting for the gate of earlier date(s) {dates} (waited {waited}, at most {limit})")
                raise AirflowRescheduleException(now + dt.timedelta(seconds=settings.gate.wait_poll_seconds))
            note = f"stopped waiting for earlier date(s) {dates} after {waited} (gate.wait_timeout_minutes)"
        try:
            decision = gate(settings, engine, day, note=note)
        except NoCandidatesError as exc:
            # Recorded in model_runs (status no_candidates); retrying cannot produce candidates.
            raise AirflowFailException(str(exc)) from None
        print(decision.reason)
        return decision.family

    @task(**TRAIN_QUEUE)
    def train_champion() -> str:
        from recjobs.pipeline import engine_for, train_final

        context = get_current_context()
        settings = _settings(context["params"])
        return str(train_final(settings, engine_for(settings), _run_date(context)))

    @task
    def plan_shards() -> list[int]:
        context = get_current_context()
        return list(range(_settings(context["params"]).publish.shards))

    # One mapped task per shard: with Celery or Kubernetes they rank on several workers at once.
    @task(**SCORE_QUEUE)
    def rank_shard(shard: int) -> list[str]:
        from recjobs.pipeline import rank_shard as rank

        context = get_current_context()
        return [str(p) for p in rank(_settings(context["params"]), _run_date(context), shard)]

    @task
    def publish() -> int:
        from recjobs.pipeline import engine_for, load_published

        context = get_current_context()
        settings = _settings(context["params"])
        results = load_published(settings, engine_for(settings), _run_date(context))
        for r in results:
            print(f"{r.kind}: {r.rows} rows in {r.table_name} ({'live' if r.live else 'history only'})")
        return results[0].rows

    prepared = split()
    ingest() >> prepared
    gate = promote()
    for family in FAMILIES:
        trained, evaluated = train_and_evaluate(family)
        prepared >> trained >> evaluated >> gate
    shards = plan_shards()
    gate >> train_champion() >> shards
    rank_shard.expand(shard=shards) >> publish()


recs_nightly()
