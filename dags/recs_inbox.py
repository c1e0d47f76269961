"""Ingest rating and side files as soon as they land in the inbox, beside the nightly run.

One run at a time, one after another (`@continuous`): `wait_for_files` checks the inbox
every minute in *reschedule* mode (between checks it holds no worker slot) until a file
with new content has stopped changing for 30 s, then `ingest` ingests the inbox exactly
as the nightly `ingest` task does and emits a `recjobs.ratings_lake` Asset event naming
the files and rows. A run that finds nothing for a day ends as skipped and the next one
starts waiting.

Paused when first deployed, like every DAG: unpause it to use it. Running it beside
`recs_nightly` is safe: every writer to the lake takes its lock, and content ingested by
one is skipped by the other. Files stay in the inbox (they are remembered by content
hash), so delivering the same file again changes nothing; copy a file in under a
temporary name that does not end in .csv/.tsv/.data/.dat/.parquet and rename it when
complete.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path

import pendulum
from airflow.sdk import PokeReturnValue, dag, get_current_context, task

if str(Path(__file__).parent) not in sys.path:
    # Airflow puts the bundle's folder on sys.path when it parses or runs a DAG; a plain
    # DagBag (`airflow dags list --local`, import tests) does not.
    sys.path.append(str(Path(__file__).parent))

from recjobs_airflow import LAKE_UPDATES, RATINGS_LAKE, report_ingest, task_settings

log = logging.getLogger("recjobs.dags.recs_inbox")

POKE_SECONDS = 60
# A file modified more recently than this may still be being copied in.
SETTLE_SECONDS = 30.0
# A run that found nothing for this long ends (skipped) and the next run starts waiting.
WAIT_SECONDS = 24 * 3600


@dag(
    dag_id="recs_inbox",
    schedule="@continuous",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["recjobs"],
    doc_md=__doc__,
)
def recs_inbox() -> None:
    @task.sensor(poke_interval=POKE_SECONDS, timeout=WAIT_SECONDS, mode="reschedule", soft_fail=True)
    def wait_for_files() -> PokeReturnValue:
        from recjobs.ingest import pending_inbox_files
        from recjobs.pipeline import engine_for

        context = get_current_context()
        ti = context["ti"]
        if ti.get_first_reschedule_date(context) is None:
            # Continuous runs follow each other at once: after a failed ingest (a file that
            # cannot be read) wait one poke interval instead of failing again in a tight loop.
            previous = ti.get_previous_dagrun()
            if previous is not None and previous.state == "failed":
                log.info("the previous run failed: checking the inbox again in %ds", POKE_SECONDS)
                return PokeReturnValue(is_done=False)
        settings = task_settings()
        engine = engine_for(settings)
        try:
            pending = pending_inbox_files(settings, engine, settle_seconds=SETTLE_SECONDS,
                                          now=dt.datetime.now(dt.UTC).timestamp())
        finally:
            engine.dispose()
        if pending:
            log.info("new in %s: %s", settings.inbox, ", ".join(p.name for p in pending))
        return PokeReturnValue(is_done=bool(pending), xcom_value=[str(p) for p in pending])

    @task(inlets=[RATINGS_LAKE], outlets=[LAKE_UPDATES])
    def ingest(files: list[str]) -> int:
        from recjobs.ingest import ingest_inbox
        from recjobs.pipeline import engine_for

        context = get_current_context()
        settings = task_settings()
        # The whole inbox, not only `files`: anything that landed since the check is taken too,
        # and content ingested meanwhile by the nightly run is skipped.
        reports = ingest_inbox(settings, engine_for(settings))
        extra = report_ingest(settings, reports)
        if extra:
            context["outlet_events"][LAKE_UPDATES].add(RATINGS_LAKE, extra=extra)
        return sum(r.rows_valid for r in reports)

    ingest(wait_for_files())


recs_inbox()
