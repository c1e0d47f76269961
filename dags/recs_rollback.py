"""Roll the live lists back to the version that was live before, from the Airflow UI.

**Using it.** The dashboard's *Published versions* table names the *rollback target* of
the recommendations and links here. Press *Trigger*: with *version* left empty, the live
`recommendations` (and `similar_items` / `item_segments`, if the last publish made them live)
go back to the rollback target, exactly as `recjobs rollback` does. Type the target's
model version in *version* to make sure nothing was published or rolled back since you
looked: a different target fails the run, and nothing moves. Each run goes one version
back; the version rolled back from is retired. The move is recorded in `model_runs`
(stage `rollback`) and shown in the dashboard's gate decisions.

Manual only (no schedule), one run at a time. It does not stop the nightly DAG: the next
night that passes its gate and guards publishes again.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

if str(Path(__file__).parent) not in sys.path:
    # Airflow puts the bundle's folder on sys.path when it parses or runs a DAG; a plain
    # DagBag (`airflow dags list --local`, import tests) does not.
    sys.path.append(str(Path(__file__).parent))

from recjobs_airflow import LIVE_PUBLICATIONS, PUBLISHED_ASSETS, RecjobsNotifier, task_settings

# Inlets: declaring the lists' Assets registers them, so the events added through the alias find them.
LISTS = list(PUBLISHED_ASSETS.values())

log = logging.getLogger("recjobs.dags.recs_rollback")


@dag(
    dag_id="recs_rollback",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"on_failure_callback": RecjobsNotifier("failure")},
    params={
        "version": Param(None, type=["null", "string"], minLength=1, maxLength=128, title="version",
                         description="The model version to go back to, as the dashboard names the rollback "
                                     "target (e.g. als-20260131-full-1a2b3c4d). Empty: the rollback target, "
                                     "whichever it is now."),
    },
    tags=["recjobs"],
    doc_md=__doc__,
)
def recs_rollback() -> None:
    @task(inlets=LISTS, outlets=[LIVE_PUBLICATIONS])
    def rollback() -> dict[str, str]:
        from recjobs.errors import PublishError
        from recjobs.pipeline import engine_for
        from recjobs.publish import SwapPolicy, rollback_lists

        context = get_current_context()
        settings = task_settings()
        version = context["params"].get("version") or None
        try:
            # The same call as `recjobs rollback`; each move is recorded in model_runs by it.
            moves = rollback_lists(engine_for(settings), SwapPolicy.of(settings.publish), expect_version=version)
        except PublishError as exc:
            # Nothing moved (nothing to go back to, or not the version asked for): a retry would not help.
            raise AirflowFailException(str(exc)) from None
        shown: dict[str, str] = {}
        for kind, move in moves.items():
            if isinstance(move, str):
                shown[kind] = move
            else:
                shown[kind] = f"live view moved from {move[0]} back to {move[1]}"
                # Downstream DAGs scheduled on the lists see the change, as after a publish.
                context["outlet_events"][LIVE_PUBLICATIONS].add(PUBLISHED_ASSETS[kind], extra={
                    "table": str(move[1]), "rollback_from": str(move[0])})
            log.info("%s: %s", kind, shown[kind])
        return shown

    rollback()


recs_rollback()
