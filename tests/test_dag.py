"""The Airflow DAG: it imports cleanly and runs to success with `airflow dags test`.

Airflow runs in child processes with their own AIRFLOW_HOME (SQLite metadata DB),
so nothing leaks into or out of the test process.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from recjobs.data import Lake
from recjobs.db import make_engine
from recjobs.settings import BUILT_ON_PEERS, FAMILIES
from tests.conftest import AIRFLOW, ROOT
from tests.smtp_sink import start_sink

# Real Airflow processes or crash-and-rerun loops: minutes, so outside the fast loop (-m 'not slow').
pytestmark = pytest.mark.slow


def test_dagbag_has_no_import_errors_and_expected_shape(airflow_env):
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag()\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "dag = bag.get_dag('recs_nightly')\n"
        "inbox = bag.get_dag('recs_inbox')\n"
        "def names(objs): return sorted(o.name for o in objs)\n"
        "print(json.dumps({\n"
        "    'tasks': sorted(t.task_id for t in dag.tasks),\n"
        "    'upstream': {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},\n"
        "    'rules': {t.task_id: getattr(t.trigger_rule, 'value', t.trigger_rule) for t in dag.tasks},\n"
        "    'timetable': [type(dag.timetable).__name__, dag.max_active_runs, dag.catchup],\n"
        "    'heavy': ['tensorflow' in sys.modules, 'implicit' in sys.modules],\n"
        "    'lineage': {t.task_id: [names(t.inlets), names(t.outlets)] for t in [*dag.tasks, *inbox.tasks]\n"
        "                if t.inlets or t.outlets},\n"
        "    'params': {k: {**dag.params.get_param(k).schema, 'help': dag.params.get_param(k).description}\n"
        "               for k in dag.params},\n"
        "    'doc': dag.doc_md,\n"
        "    'inbox': [sorted(t.task_id for t in inbox.tasks), type(inbox.timetable).__name__,\n"
        "              inbox.get_task('wait_for_files').mode],\n"
        "}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=airflow_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    tasks = got["tasks"]
    for fam in FAMILIES:  # one train/evaluate pair per registered family
        assert f"train_{fam}" in tasks and f"evaluate_{fam}" in tasks
    # A family built on others trains after all of them, whatever their outcome (it reuses their models).
    others = {f"train_{f}" for f in FAMILIES if f not in BUILT_ON_PEERS}
    assert set(got["upstream"]["peers_trained"]) == others and got["rules"]["peers_trained"] == "all_done"
    for fam in BUILT_ON_PEERS:
        assert set(got["upstream"][f"train_{fam}"]) == {"split", "peers_trained"}
        assert got["rules"][f"train_{fam}"] == "all_success"
    assert got["timetable"] == ["CronDataIntervalTimetable", 1, False]
    assert got["heavy"] == [False, False]  # heavy libraries are not imported at parse time
    assert "rank_shard" in tasks and "plan_shards" in tasks
    # Assets: the lake is read by ingest and split; events go through aliases so that only a
    # real change (rows ingested, lists made live) emits one.
    lake, recs, similar = "recjobs.ratings_lake", "recjobs.recommendations", "recjobs.similar_items"
    assert got["lineage"] == {
        "ingest": [[lake], ["recjobs.lake_updates"]],
        "split": [[lake], []],
        "publish": [["recjobs.item_segments", recs, similar], ["recjobs.live_publications"]],
    }
    assert got["inbox"] == [["ingest", "wait_for_files"], "ContinuousTimetable", "reschedule"]
    # The trigger form: `examples` make families a multi-select of the known families (the UI
    # renders an array with top-level examples or enum as one); run_date a date picker whose
    # help names no other format.
    families, run_date = got["params"]["families"], got["params"]["run_date"]
    assert families["examples"] == list(FAMILIES) and families["items"] == {"enum": list(FAMILIES)}
    assert run_date["format"] == "date" and "YYYY" not in run_date["help"]
    # An operator lets a held night through (README 'Guards'); off unless set.
    assert got["params"]["guard_allow"]["type"] == "boolean" and "guard" in got["params"]["guard_allow"]["help"]
    assert "In a backfill leave it empty" in run_date["help"]  # the backfill dialog shows this param too
    # The form names the settings' families that an empty field means.
    assert families["help"].endswith("Empty: the settings' families, now "
                                     "popularity, als, lightfm, tfrs, ease, itemknn, sequence (RECJOBS_FAMILIES).")
    # The DAG's docs start with how to use it: the inbox, the families, the dashboard.
    use = got["doc"].split("**How it works inside.**")[0]
    assert "**Using it.**" in use
    assert "into the inbox, `" in use and "Families** trained and gated: popularity, als," in use
    assert "*Recs* dashboard" in use and "`/recjobs/`" in use and "Alerts** are off" in use
    # Tasks log through `logging`: print() output lands after the task in Airflow's log, some lines twice.
    for source in (ROOT / "dags").glob("*.py"):
        assert "print(" not in source.read_text(), source


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


def _asset_events(airflow_env: dict[str, str], after: int = 0) -> list[tuple[int, str, dict, str]]:
    """(id, asset name, extra, source task) of the asset events in this Airflow's metadata DB."""
    db = Path(airflow_env["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT e.id, a.name, e.extra, e.source_task_id FROM asset_event e "
                            "JOIN asset a ON a.id = e.asset_id WHERE e.id > ? ORDER BY e.id", (after,)).fetchall()
    return [(i, name, json.loads(extra or "{}"), task) for i, name, extra, task in rows]


def test_airflow_dags_test_runs_the_pipeline_to_success(airflow_env, tmp_path, small_inbox, settings):
    env = {**airflow_env, "RECJOBS_HOME": str(settings.home), "RECJOBS_PUBLISH__TOP_N": "10",
           "RECJOBS_FAMILIES": '["popularity", "als", "lightfm", "tfrs"]',
           "RECJOBS_MODELS__TFRS__MAX_EPOCHS": "5", "RECJOBS_MODELS__LIGHTFM__EPOCHS": "10"}
    before = max([e[0] for e in _asset_events(airflow_env)], default=0)
    # A manual run without run_date computes the day of its logical date: 2026-02-01.
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
    assert set(cands["run_date"]) == {"2026-02-01"} and pub == "2026-02-01"
    # TensorFlow trained in this process and said nothing on stderr (Airflow shows stderr as ERROR).
    for noise in ("cuInit", "cuda drivers", "NodeDef mentions attribute", "oneDNN", "absl::InitializeLog"):
        assert noise not in log, noise
    # Asset events: the lake (ingest added rows), and both lists, which went live.
    events = {name: (extra, task) for _, name, extra, task in _asset_events(airflow_env, before)}
    assert set(events) == {"recjobs.ratings_lake", "recjobs.recommendations", "recjobs.similar_items"}
    lake, lake_task = events["recjobs.ratings_lake"]
    assert lake_task == "ingest" and lake["rows"] > 0 and "synthetic_ratings.csv" in lake["files"]
    extra, task = events["recjobs.recommendations"]
    assert task == "publish" and extra["run_date"] == "2026-02-01" and extra["rows"] == 120 * 10
    assert extra["database"] == settings.db_url_masked and extra["table"].startswith("recommendations_v")
    assert events["recjobs.similar_items"][0]["run_date"] == "2026-02-01"
    assert "not found; cannot create asset event" not in log  # the Assets are registered by the DAG


def test_inbox_dag_ingests_new_files_and_emits_the_lake_asset(airflow_env, small_inbox, settings):
    # Delivered a minute ago: settled (the sensor leaves files changed in the last 30 s alone).
    old = time.time() - 60
    for path in small_inbox:
        os.utime(path, (old, old))
    before = max([e[0] for e in _asset_events(airflow_env)], default=0)
    env = {**airflow_env, "RECJOBS_HOME": str(settings.home)}
    out = subprocess.run([str(AIRFLOW), "dags", "test", "recs_inbox"], env=env,
                         capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "state=success" in log, log[-5000:]
    assert sorted(p.name for p in Lake.of(settings).ratings.glob("dt=*"))  # the lake has partitions
    events = _asset_events(airflow_env, before)
    assert [(name, task) for _, name, _, task in events] == [("recjobs.ratings_lake", "ingest")]
    assert sorted(events[0][2]["files"]) == sorted(p.name for p in small_inbox)


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
    # In front of PYTHONPATH, not instead of it: a checkout run with PYTHONPATH=<checkout> keeps its recjobs.
    path = os.pathsep.join(p for p in (str(blocker), airflow_env.get("PYTHONPATH")) if p)
    env = {**airflow_env, "RECJOBS_HOME": str(settings.home), "PYTHONPATH": path,
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
    # No task succeeded, but the empty one that only waits for the families' training.
    succeeded, task = set(), None
    for line in log.split("Dag run")[-1].splitlines():
        started = re.search(r"\[DAG TEST\] starting task_id=(\S+)", line)
        task = started.group(1) if started else task
        if "state=success" in line:
            succeeded.add(task)
    assert "state=failed" in log and succeeded <= {"peers_trained"}, succeeded
    assert "s3cret-pw" not in log
    # Nothing was written to the embedded SQLite default.
    assert not (settings.home / "recjobs.db").exists()


@pytest.mark.slow
def test_a_night_the_input_guard_holds_fails_its_split_and_guard_allow_publishes_it(airflow_env, settings):
    from recjobs.pipeline import run_pipeline
    from recjobs.settings import load_settings
    from tests.test_guard import DAYS, GUARD, night, write_nights

    write_nights(settings.inbox, last_night_rows=4)
    sink, server = start_sink()  # the held night's alert, through the DAG's real notifier
    env = {**airflow_env, "RECJOBS_HOME": str(settings.home), "RECJOBS_FAMILIES": '["popularity"]',
           "RECJOBS_PUBLISH__TOP_N": "5", **{f"RECJOBS_GUARD__{k.upper()}": str(v) for k, v in GUARD.items()},
           "RECJOBS_ALERTS__ENABLED": "true", "RECJOBS_ALERTS__SMTP_HOST": sink.host,
           "RECJOBS_ALERTS__SMTP_PORT": str(sink.port), "RECJOBS_ALERTS__TO": '["ops@example.com"]',
           "RECJOBS_ALERTS__ON_PROMOTION": "false"}
    own = load_settings({"home": str(settings.home), "families": ["popularity"], "publish": {"top_n": 5},
                         "guard": GUARD}, environ={})
    run_pipeline(own, night(DAYS - 2))  # yesterday is live
    tonight = night(DAYS - 1)
    engine = make_engine(settings.db_url)

    def live() -> str:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT run_date FROM publications WHERE is_live = :t AND "
                                        "kind = 'recommendations'"), {"t": True}).scalar_one()

    try:
        held = subprocess.run([str(AIRFLOW), "dags", "test", "recs_nightly", f"{tonight}T01:00:00+00:00", "-c",
                               json.dumps({"run_date": tonight})], env=env, capture_output=True, text=True,
                              timeout=900)
    finally:
        server.shutdown()
        server.server_close()
    log = held.stdout + held.stderr
    assert f"input guard held {tonight}: rows_ratio" in log, log[-5000:]
    assert "state=failed" in log.split("Dag run")[-1] and live() == night(DAYS - 2)
    # One message (the split's; the gate that fails after it sends none): the checks and the way through.
    (mail,) = sink.messages()
    assert mail.subject == f"[recjobs] {tonight}: held by the input guard (2 checks failed)", log[-5000:]
    assert "\n  - rows_ratio = 0.06667 (threshold 0.3..3 x trailing median 60)\n" in mail.body
    assert f"recjobs guard allow --date {tonight}, then clear the run's split task" in mail.body
    assert "Run: recs_nightly manual__" in mail.body and "Task log: http" in mail.body
    let = subprocess.run([str(AIRFLOW), "dags", "test", "recs_nightly", f"{tonight}T02:00:00+00:00", "-c",
                          json.dumps({"run_date": tonight, "guard_allow": True})], env=env, capture_output=True,
                         text=True, timeout=900)
    assert let.returncode == 0 and "state=success" in let.stdout + let.stderr, (let.stdout + let.stderr)[-5000:]
    assert live() == tonight
    engine.dispose()


@pytest.mark.slow
def test_the_dags_notifier_mails_a_failed_task_and_the_promotion(airflow_env, small_inbox, settings, tmp_path):
    # One real run: train_tfrs fails (TensorFlow cannot be imported), popularity is promoted and
    # published. The notifier (on_failure_callback / promote's on_success_callback) mails both
    # to a real SMTP server in this process.
    blocker = tmp_path / "no_tf"
    (blocker / "tensorflow").mkdir(parents=True)
    (blocker / "tensorflow" / "__init__.py").write_text("raise ImportError('No module named tensorflow')\n")
    sink, server = start_sink()
    path = os.pathsep.join(p for p in (str(blocker), airflow_env.get("PYTHONPATH")) if p)
    env = {**airflow_env, "RECJOBS_HOME": str(settings.home), "PYTHONPATH": path,
           "RECJOBS_FAMILIES": '["popularity", "tfrs"]', "RECJOBS_PUBLISH__TOP_N": "5",
           "RECJOBS_ALERTS__ENABLED": "true", "RECJOBS_ALERTS__SMTP_HOST": sink.host,
           "RECJOBS_ALERTS__SMTP_PORT": str(sink.port), "RECJOBS_ALERTS__TO": '["ops@example.com"]',
           "RECJOBS_ALERTS__DASHBOARD_URL": "https://airflow.example.com/recjobs/"}
    try:
        out = subprocess.run([str(AIRFLOW), "dags", "test", "recs_nightly", "2026-02-01"], env=env,
                             capture_output=True, text=True, timeout=900)
    finally:
        server.shutdown()
        server.server_close()
    log = out.stdout + out.stderr
    got = {m.subject: m for m in sink.messages()}
    failed = "[recjobs] 2026-02-01: train_tfrs failed: ImportError: No module named tensorflow"
    promoted = "[recjobs] 2026-02-01: popularity promoted to champion"
    assert sorted(got) == sorted([failed, promoted]), log[-5000:]
    body = got[failed].body
    assert body.startswith("The recjobs run for 2026-02-01 failed in task train_tfrs (try 1 of 1).\n"), body
    assert "Error: ImportError: No module named tensorflow\n" in body
    assert "The family tfrs is left out of this night's gate" in body
    assert "Run: recs_nightly manual__" in body and "Task log: http" in body
    assert body.endswith("Dashboard: https://airflow.example.com/recjobs/\n")
    assert got[failed].rcpt_to == ["ops@example.com"]
    assert "The gate of 2026-02-01 promoted popularity (popularity-20260201-" in got[promoted].body
    assert "There was no champion before: this is the first." in got[promoted].body
    # The skipped families' logs say why they were skipped.
    assert "skipped: als is not in the settings' RECJOBS_FAMILIES: popularity, tfrs" in log
    assert "this run computes 2026-02-01 (the day of its logical date)" in log
