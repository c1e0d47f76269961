"""The recs_rollback DAG: rollback as a manual run from the Airflow UI (the dashboard links to it).

It parses with the other DAGs (a DagBag in a child process with its own AIRFLOW_HOME), its
`version` param guards against a target that changed since the operator looked, and (slow)
a real `airflow dags test` run moves the live lists back and records its run for the
dashboard's link to the task log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import quote

import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs.dashboard import gate_decisions, published_versions, render
from recjobs.errors import PublishError
from recjobs.publish import publish_list, rollback_lists
from tests.conftest import AIRFLOW, airflow_process_env


def _publish(engine: sa.Engine, *versions: tuple[str, str]) -> None:
    for day, version in versions:
        assert publish_list(engine, "recommendations", day, version, [pd.DataFrame({
            "user_id": ["u1"], "item_id": [f"i-{version}"], "rank": [1], "score": [1.0],
            "model_version": version})], keep_versions=4).live


def _live(engine: sa.Engine) -> str:
    frame = published_versions(engine)
    return str(frame[frame["state"] == "live"]["model_version"].iloc[0])


def test_the_rollback_dag_parses_with_the_other_dags(tmp_path):
    if not AIRFLOW.exists():
        pytest.skip(f"airflow is not installed next to {sys.executable}")
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag()\n"
        "dag = bag.dags['recs_rollback']\n"
        "version = dag.params.get_param('version')\n"
        "print(json.dumps({'errors': {k: str(v)[-500:] for k, v in bag.import_errors.items()},\n"
        "                  'dags': sorted(bag.dag_ids), 'tasks': [t.task_id for t in dag.tasks],\n"
        "                  'schedule': [type(dag.timetable).__name__, dag.max_active_runs],\n"
        "                  'version': [version.value, version.schema], 'doc': dag.doc_md}))\n"
    )
    env = airflow_process_env(tmp_path / "airflow", AIRFLOW__CORE__UNIT_TEST_MODE="False")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["errors"] == {} and got["dags"] == ["recs_inbox", "recs_nightly", "recs_rollback"]
    assert got["tasks"] == ["rollback"] and got["schedule"] == ["NullTimetable", 1]
    assert got["version"][0] is None and got["version"][1]["type"] == ["null", "string"]
    assert "Press *Trigger*" in got["doc"] and "recjobs rollback" in got["doc"]


def test_a_version_that_is_not_the_rollback_target_moves_nothing(engine):
    _publish(engine, ("2026-02-01", "als-a"), ("2026-02-02", "ease-b"))
    for wrong in ("ease-b", "nope", "als-a\x00", ""):
        with pytest.raises(PublishError) as err:
            rollback_lists(engine, expect_version=wrong)
        message = str(err.value)
        assert "\n" not in message and f"version {wrong!r} is not the rollback target" in message
        assert "makes als-a (2026-02-01) live again" in message
        assert _live(engine) == "ease-b"
    assert gate_decisions(engine).empty  # no rollback recorded
    moves = rollback_lists(engine, expect_version="als-a")
    assert moves["recommendations"][1].startswith("recommendations") and _live(engine) == "als-a"


@pytest.mark.slow
def test_a_real_rollback_run_moves_the_lists_back_and_links_its_log(airflow_env, settings, engine):
    _publish(engine, ("2026-02-01", "als-a"), ("2026-02-02", "ease-b"), ("2026-02-03", "ease-c"))
    env = {**airflow_env, "RECJOBS_HOME": str(settings.home)}

    def trigger(version: str, when: str) -> str:
        out = subprocess.run([str(AIRFLOW), "dags", "test", "recs_rollback", when, "-c",
                              json.dumps({"version": version})], env=env, capture_output=True, text=True, timeout=600)
        return out.stdout + out.stderr

    log = trigger("als-a", "2026-02-04T01:00:00+00:00")  # not the target (ease-b): fails, nothing moves
    assert "version 'als-a' is not the rollback target: a rollback now makes ease-b" in log, log[-4000:]
    assert "state=failed" in log.split("Dag run")[-1] and _live(engine) == "ease-c"
    log = trigger("ease-b", "2026-02-04T02:00:00+00:00")
    assert "state=success" in log.split("Dag run")[-1], log[-4000:]
    assert _live(engine) == "ease-b"
    row = gate_decisions(engine).iloc[0]
    assert (row["status"], row["airflow_dag_id"], row["airflow_task_id"]) == ("live", "recs_rollback", "rollback")
    run_id = row["airflow_run_id"]
    assert run_id.startswith("manual__")  # Airflow names a run after when it was asked to run
    page = render(engine, base="/recjobs/")
    assert f"/recjobs/../dags/recs_rollback/runs/{quote(run_id, safe='')}/tasks/rollback" in page
    assert ">rollback log</a>" in page
