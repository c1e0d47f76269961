"""Nightly recommendations: ingest -> split -> train/evaluate each family -> gate -> retrain -> rank shards -> publish.

**How it works inside.** Every task is a thin call into ``recjobs``; tasks hand each other dates and paths,
never data. Heavy libraries (TensorFlow, implicit, LightFM) are imported inside the
tasks that need them, never at parse time.

**Which day a run computes** (`run_date`): the `run_date` param when given, else the
day (UTC) of the run's logical date. A scheduled run's logical date is the start of the
day it covers, so the run after midnight computes the day that just ended. A manual
trigger's logical date is when it was triggered (the form's *Logical date*, default
now), so it computes today with the data up to now; tonight's run recomputes today with
the whole day and replaces it.

**Guards**: `split` first runs the input guard, `publish` the output guard (README
'Guards'); a held night fails that task with the checks that failed, and yesterday's
lists stay live. After looking, trigger the day again with *Let the guards through*
(`guard_allow`), or run `recjobs guard allow --date D` and clear the run's tasks.

**Assets**: `ingest` and `split` read `recjobs.ratings_lake`; `ingest` emits an event
for it when it added rows; `publish` emits `recjobs.recommendations` and
`recjobs.similar_items` (and `recjobs.item_segments`) events only for the lists it made live (not for a backfilled
date kept as history only). Schedule downstream DAGs on them (`from recjobs_airflow
import RECOMMENDATIONS`).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSkipException,
)
from airflow.timetables.interval import CronDataIntervalTimetable

if str(Path(__file__).parent) not in sys.path:
    # Airflow puts the bundle's folder on sys.path when it parses or runs a DAG; a plain
    # DagBag (`airflow dags list --local`, import tests) does not.
    sys.path.append(str(Path(__file__).parent))

from recjobs_airflow import (
    ITEM_SEGMENTS,
    LAKE_UPDATES,
    LIVE_PUBLICATIONS,
    PUBLISHED_ASSETS,
    RATINGS_LAKE,
    RECOMMENDATIONS,
    SIMILAR_ITEMS,
    GuardHeld,
    RecjobsNotifier,
    report_ingest,
    run_date,
    task_defaults,
    task_settings,
)

# Parse time: only pydantic settings are imported here, nothing heavy.
from recjobs.settings import BUILT_ON_PEERS, FAMILIES, Settings, load_settings, mask_url

log = logging.getLogger("recjobs.dags.recs_nightly")


# Parse time: the settings the DAG's shape, queues, docs and form show.
_SETTINGS = load_settings()


def _queues() -> tuple[dict[str, str], dict[str, str]]:
    """Task kwargs routing training and ranking to the queues in settings (`airflow.*`)."""
    routes = _SETTINGS.airflow
    return ({"queue": routes.train_queue} if routes.train_queue else {},
            {"queue": routes.score_queue} if routes.score_queue else {})


TRAIN_QUEUE, SCORE_QUEUE = _queues()


def _docs(settings: Settings) -> str:
    """The DAG's docs: how to use it, with this deployment's values (read when the file is parsed),
    then how it works inside (this module's docstring)."""
    title, _, inside = (__doc__ or "").partition("\n\n")
    families = ", ".join(settings.families)
    opt_in = " and ".join(f for f in FAMILIES if f not in Settings.model_fields["families"].default)
    alerts = (f"on: failures and promotions are e-mailed to {', '.join(settings.alerts.to)}"
              if settings.alerts.enabled else "off (turn them on with RECJOBS_ALERTS__ENABLED, README 'Alerts')")
    return f"""{title}

**Using it.**

- **Deliver data** into the inbox, `{settings.inbox}` (`RECJOBS_INBOX_DIR`, else
  `<RECJOBS_HOME>/inbox`): rating files (CSV, TSV, MovieLens, Parquet) and side files.
  Each run's `ingest` task ingests what is new there; `recs_inbox` does so as files land.
- **Every night** after midnight UTC a run computes the day that just ended. **Trigger**
  one to compute today now, or pick a day in *Run date*; a *Backfill* computes each day of
  its range (leave *Run date* empty there, or every run computes that one day).
- **Families** trained and gated: {families} (the settings' `RECJOBS_FAMILIES`; by default
  all but {opt_in}, which are opt-in). Tick others in the trigger form's *Model families* for one run;
  the tasks of the families left out end as skipped and their log says why.
- **See the results** in the *Recs* dashboard (the navigation's *Recs*, served at
  `/recjobs/`): the champion, each family's metrics by night, the gate's decisions and a
  user lookup. Apps read the `recommendations` view (`sql/queries.sql`).
- **Roll back** the last publish by triggering the `recs_rollback` DAG (the dashboard's
  *Published versions* links to it), or with `recjobs rollback`.
- **Alerts** are {alerts}.
- The day a run computes is logged first thing in its `ingest` task ("this run computes ...").

{inside}"""



@dag(
    dag_id="recs_nightly",
    # A data-interval timetable: each run covers one whole UTC day and its logical
    # date names that day (a plain cron string would give a zero-length interval).
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # Retries: settings' airflow.retries / retry_delay_seconds, unless the deployment sets
    # Airflow's [core] default_task_retries / default_task_retry_delay; each retry says why.
    # Alerts: a task that fails for good (retries spent) e-mails what failed (settings' alerts).
    default_args={**task_defaults(), "on_failure_callback": RecjobsNotifier("failure")},
    params={
        # Top-level `examples` make the trigger form a multi-select of these values (with
        # only `items.enum` it is a free-text box); `items.enum` still validates API/CLI input.
        "families": Param(None, type=["null", "array"], items={"enum": list(FAMILIES)}, examples=list(FAMILIES),
                          uniqueItems=True, minItems=1, title="Model families",
                          description="Families to train and gate. Empty: the settings' families, now "
                                      f"{', '.join(_SETTINGS.families)} (RECJOBS_FAMILIES)."),
        # format=date: the form shows the browser's calendar, which displays the day in the
        # browser's locale but sends YYYY-MM-DD; the help text must not name another format.
        "run_date": Param(None, type=["null", "string"], format="date", title="Run date",
                          description="The day (UTC) to compute: pick it in the calendar (in --conf or the "
                                      "API: \"2026-01-31\"). Empty: the day of the run's logical date, "
                                      "for a manual run the data up to now. In a backfill leave it empty: "
                                      "set, every run of the backfill computes this one day."),
        "train_window_days": Param(None, type=["null", "integer"], minimum=1, title="Training window (days)",
                                   description="Train on the last N days only. Empty: all history."),
        "guard_allow": Param(False, type="boolean", title="Let the guards through",
                             description="Publish this run's day even if the input or output guard would hold it "
                                         "(recorded in guard_checks, as `recjobs guard allow --date D`). Use it "
                                         "after looking at why the night was held."),
    },
    tags=["recjobs"],
    # What the docs say first is how to use it; then how it works inside (this module's docstring).
    doc_md=_docs(_SETTINGS),
)
def recs_nightly() -> None:
    @task(inlets=[RATINGS_LAKE], outlets=[LAKE_UPDATES])
    def ingest() -> int:
        from recjobs.ingest import ingest_inbox
        from recjobs.pipeline import engine_for

        context = get_current_context()
        # The runs list shows the run's id and logical date, not the day it computes: say it here.
        day = run_date(context)
        log.info("this run computes %s (%s)", day,
                 "the run_date param" if context["params"].get("run_date") else "the day of its logical date")
        if context["params"].get("run_date") and str(context["dag_run"].run_type) == "backfill":
            log.warning("this backfill run computes %s, the run_date param, not the day of its logical date: "
                        "with run_date set, every run of the backfill computes that one day", day)
        settings = task_settings(context["params"])
        reports = ingest_inbox(settings, engine_for(settings))
        extra = report_ingest(settings, reports)
        if extra:
            context["outlet_events"][LAKE_UPDATES].add(RATINGS_LAKE, extra=extra)
        return sum(r.rows_valid for r in reports)

    @task(inlets=[RATINGS_LAKE])
    def split() -> str:
        from recjobs.errors import GuardedError
        from recjobs.pipeline import engine_for, guard_and_prepare

        context = get_current_context()
        settings = task_settings(context["params"])
        try:
            # The input guard first (README 'Guards'; guard_allow lets the date through), then
            # the split, from one read of the lake.
            return str(guard_and_prepare(settings, engine_for(settings), run_date(context),
                                         allow_night=bool(context["params"].get("guard_allow"))))
        except GuardedError as exc:
            # Recorded (guard_checks, a 'guarded' gate row); a retry would hold it again.
            raise GuardHeld(str(exc), "input") from None

    def train_and_evaluate(family: str):  # noqa: ANN202 - returns the two task objects
        @task(task_id=f"train_{family}", **TRAIN_QUEUE)
        def train() -> str:
            from recjobs.pipeline import engine_for, record_failure, train_candidate

            context = get_current_context()
            settings = task_settings(context["params"])
            if family not in settings.families:
                # The skip exception's text is not in the task's log: say why there.
                source = "params.families" if context["params"].get("families") else "the settings' RECJOBS_FAMILIES"
                why = f"{family} is not in {source}: {', '.join(settings.families)}"
                log.info("skipped: %s", why)
                raise AirflowSkipException(why)
            engine = engine_for(settings)
            try:
                return str(train_candidate(settings, engine, run_date(context), family))
            except Exception as exc:
                record_failure(engine, run_date(context), family, exc)
                raise

        @task(task_id=f"evaluate_{family}")
        def evaluate() -> float:
            from recjobs.pipeline import engine_for, evaluate_candidate

            context = get_current_context()
            settings = task_settings(context["params"])
            return evaluate_candidate(settings, engine_for(settings), run_date(context), family).ndcg

        return train(), evaluate()

    # all_done: a family that failed must not stop the others from being gated and published.
    # No depends_on_past: a failed night would block every later one (and Airflow's deadlock
    # detection does not see it). Gate order comes from model_runs instead: see below.
    @task(trigger_rule="all_done", on_success_callback=RecjobsNotifier("promotion"))
    def promote() -> str:
        from recjobs.errors import GuardedError
        from recjobs.pipeline import NoCandidatesError, earlier_dates_in_flight, engine_for
        from recjobs.pipeline import promote as gate

        context = get_current_context()
        settings = task_settings(context["params"])
        engine = engine_for(settings)
        day = run_date(context)
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
                log.info("waiting for the gate of earlier date(s) %s (waited %s, at most %s)", dates, waited, limit)
                raise AirflowRescheduleException(now + dt.timedelta(seconds=settings.gate.wait_poll_seconds))
            note = f"stopped waiting for earlier date(s) {dates} after {waited} (gate.wait_timeout_minutes)"
        try:
            decision = gate(settings, engine, day, note=note)  # logs the decision and its reason
        except GuardedError as exc:
            # The input guard held the date: its split failed and alerted already.
            raise GuardHeld(str(exc), "input", told=True) from None
        except NoCandidatesError as exc:
            # Recorded in model_runs (status no_candidates); retrying cannot produce candidates.
            raise AirflowFailException(str(exc)) from None
        return decision.family

    @task(**TRAIN_QUEUE)
    def train_champion() -> str:
        from recjobs.pipeline import engine_for, train_final

        context = get_current_context()
        settings = task_settings(context["params"])
        return str(train_final(settings, engine_for(settings), run_date(context)))

    @task
    def plan_shards() -> list[int]:
        context = get_current_context()
        return list(range(task_settings(context["params"]).publish.shards))

    # One mapped task per shard: with Celery or Kubernetes they rank on several workers at once.
    @task(**SCORE_QUEUE)
    def rank_shard(shard: int) -> list[str]:
        from recjobs.pipeline import rank_shard as rank

        context = get_current_context()
        return [str(p) for p in rank(task_settings(context["params"]), run_date(context), shard)]

    # Inlets: publish reads the live lists (which version is live, what to prune); declaring the
    # Assets here also registers them, so the events added through the alias find them.
    @task(inlets=[RECOMMENDATIONS, SIMILAR_ITEMS, ITEM_SEGMENTS], outlets=[LIVE_PUBLICATIONS])
    def publish() -> int:
        from recjobs.errors import GuardedError
        from recjobs.pipeline import engine_for, load_published

        context = get_current_context()
        settings = task_settings(context["params"])
        day = run_date(context)
        try:
            results = load_published(settings, engine_for(settings), day)  # logs each list, live or not
        except GuardedError as exc:
            # The output guard kept the lists as history only (recorded); the live lists stay.
            raise GuardHeld(str(exc), "output") from None
        for r in results:
            if r.live:
                # Plain str/int: the extra goes to Airflow as msgpack (table_name is SQLAlchemy's quoted_name).
                context["outlet_events"][LIVE_PUBLICATIONS].add(PUBLISHED_ASSETS[r.kind], extra={
                    "run_date": str(day), "table": str(r.table_name), "rows": int(r.rows),
                    "database": str(mask_url(settings.db_url))})
            else:
                log.info("no %s Asset event: %s is kept as history only", r.kind, day)
        return results[0].rows

    prepared = split()
    ingest() >> prepared
    gate = promote()
    # A family built on others (the ranker) trains after them, whatever their outcome, so it
    # reuses the models they fitted (recjobs.pipeline.candidates.night_candidates) and fits
    # only what failed or was not trained; an empty task waits for them all (all_done).
    peers_done = EmptyOperator(task_id="peers_trained", trigger_rule="all_done")
    for family in FAMILIES:
        trained, evaluated = train_and_evaluate(family)
        prepared >> trained >> evaluated >> gate
        if family in BUILT_ON_PEERS:
            peers_done >> trained
        else:
            trained >> peers_done
    shards = plan_shards()
    gate >> train_champion() >> shards
    rank_shard.expand(shard=shards) >> publish()


recs_nightly()
