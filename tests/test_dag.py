"""The Airflow DAG: it imports cleanly and runs to success with `airflow dags test`.

Airflow runs in child processes with their own AIRFLOW_HOME (SQLite metadata DB),
so nothing leaks into or out of the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import sqlalchemy as sa

from recjobs.db import make_engine
from tests.conftest import AIRFLOW


def test_dagbag_has_no_import_errors_and_expected_shape(airflow_env):
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag()\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "dag = bag.get_dag('recs_nightly')\n"
        "print(sorted(t.task_id for t in dag.tasks))\n"
        "print(type(dag.timetable).__name__, dag.max_active_runs, dag.catchup)\n"
        "import sys; print('tensorflow' in sys.modules, 'implicit' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=airflow_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    tasks, timetable, heavy = out.stdout.strip().splitlines()[-3:]
    for fam in ("popularity", "als", "lightfm", "tfrs"):
        assert f"'train_{fam}'" in tasks and f"'evaluate_{fam}'" in tasks
    assert timetable == "CronDataIntervalTimetable 1 False"
    assert heavy == "False False"  # heavy libraries are not imported at parse time
    assert "'rank_shard'" in tasks and "'plan_shards'" in tasks


def test_training_and_ranking_tasks_go_to_the_configured_queues(airflow_env):
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        "dag = DagBag().get_dag('recs_nightly')\n"
        "import json; print(json.dumps({t.task_id: t.queue for t in dag.tasks}))\n"
    )
    env = {**airflow_env, "RECJOBS_AIRFLOW__TRAIN_QUEUE": "gpu", "RECJOBS_AIRFLOW__SCORE_QUEUE": "scoring"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    queues = json.loads(out.stdout.strip().splitlines()[-1])
    assert {queues[f"train_{f}"] for f in ("popularity", "als", "lightfm", "tfrs")} == {"gpu"}
    assert queues["train_champion"] == "gpu" and queues["rank_shard"] == "scoring"
    assert queues["ingest"] == queues["publish"] == "default"


def test_airflow_dags_test_runs_the_pipeline_to_success(airflow_env, tmp_path, small_inbox, settings):
    env = {**airflow_env, "RECJOBS_HOME": str(settings.home), "RECJOBS_PUBLISH__TOP_N": "10",
           "RECJOBS_MODELS__TFRS__MAX_EPOCHS": "5", "RECJOBS_MODELS__LIGHTFM__EPOCHS": "10"}
    # Logical date 2026-02-01: the run's data interval is the day 2026-01-31.
    out = subprocess.run([str(AIRFLOW), "dags", "test", "recs_nightly", "2026-02-01"], env=env,
                         capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    assert "state=success" in log
    engine = make_engine(settings.db_url)
    with engine.connect() as conn:
        recs = pd.read_sql("SELECT * FROM recommendations", conn)
        cands = pd.read_sql(sa.text("SELECT family, status, run_date FROM model_runs WHERE stage='candidate'"), conn)
        pub = conn.execute(sa.text("SELECT run_date FROM publications WHERE is_live = :t AND kind = 'recommendations'"), {"t": True}).scalar_one()
    assert len(recs) == 120 * 10
    assert set(cands["family"]) == {"popularity", "als", "lightfm", "tfrs"}
    assert set(cands["run_date"]) == {"2026-01-31"} and pub == "2026-01-31"


def test_dag_publishes_to_the_recjobs_db_connection_on_postgresql(airflow_env, small_inbox, settings, postgres_url):
    target = make_engine(postgres_url)
    uri = target.url.set(drivername="postgresql").render_as_string(hide_password=False)
    env = {**airflow_env, "RECJOBS_HOME": str(settings.home), "AIRFLOW_CONN_RECJOBS_DB": uri,
           "RECJOBS_FAMILIES": '["popularity", "als"]', "RECJOBS_PUBLISH__TOP_N": "5"}
    out = subprocess.run([str(AIRFLOW), "dags", "test", "recs_nightly", "2026-02-01"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    with target.connect() as conn:
        n = conn.execute(sa.text("SELECT COUNT(*) FROM recommendations")).scalar_one()
        families = set(conn.execute(sa.text("SELECT family FROM model_runs WHERE stage='candidate'")).scalars())
    assert n == 120 * 5 and families == {"popularity", "als"}
    # Nothing went to the embedded SQLite default.
    assert not (settings.home / "recjobs.db").exists()
    target.dispose()


def test_a_failing_family_fails_only_its_task_and_the_run_still_publishes(airflow_env, small_inbox, settings, tmp_path):
    blocker = tmp_path / "no_tf"
    (blocker / "tensorflow").mkdir(parents=True)
    (blocker / "tensorflow" / "__init__.py").write_text("raise ImportError('No module named tensorflow')\n")
    env = {**airflow_env, "RECJOBS_HOME": str(settings.home), "PYTHONPATH": str(blocker),
           "RECJOBS_FAMILIES": '["popularity", "tfrs"]', "RECJOBS_PUBLISH__TOP_N": "5"}
    out = subprocess.run([str(AIRFLOW), "dags", "test", "recs_nightly", "2026-02-01"], env=env,
                         capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert "No module named tensorflow" in log
    engine = make_engine(settings.db_url)
    with engine.connect() as conn:
        cands = dict(conn.execute(sa.text("SELECT family, status FROM model_runs WHERE stage='candidate'")).all())
        n = conn.execute(sa.text("SELECT COUNT(*) FROM recommendations")).scalar_one()
        gate = conn.execute(sa.text("SELECT family FROM model_runs WHERE stage='gate'")).scalar_one()
    assert cands == {"popularity": "promoted", "tfrs": "failed"}
    assert gate == "popularity" and n == 120 * 5


def test_a_broken_recjobs_db_connection_fails_the_tasks_instead_of_publishing_locally(airflow_env, small_inbox,
                                                                                       settings):
    # Malformed JSON: Airflow cannot parse the connection. Before, every task fell back to the
    # embedded SQLite file and the run "succeeded" there.
    broken = '{"conn_type": "postgres", "host": "db.example", "login": "rec", "password": "s3cret-pw", '
    env = {**airflow_env, "RECJOBS_HOME": str(settings.home), "AIRFLOW_CONN_RECJOBS_DB": broken,
           "RECJOBS_FAMILIES": '["popularity"]', "RECJOBS_PUBLISH__TOP_N": "5"}
    out = subprocess.run([str(AIRFLOW), "dags", "test", "recs_nightly", "2026-02-01"], env=env,
                         capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert "Airflow connection 'recjobs_db' is set in AIRFLOW_CONN_RECJOBS_DB but Airflow cannot read it" in log, \
        log[-5000:]
    assert "state=failed" in log and "state=success" not in log.split("Dag run")[-1]
    assert "s3cret-pw" not in log
    # Nothing was written to the embedded SQLite default.
    assert not (settings.home / "recjobs.db").exists()
