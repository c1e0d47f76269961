"""A real Celery deployment: recs_nightly on two `airflow celery worker` processes.

The deployment is docker-compose.celery.yaml's: each process gets its compose service's
environment (executor, Redis broker, PostgreSQL result backend, queues, the recjobs_db
connection) with the compose service names mapped to local servers, and the workers run
their services' commands. PostgreSQL (the test server) holds Airflow's metadata and the
recommendations; redis-server runs on a free port in a temporary folder. The scheduler,
dag-processor and API server run beside a training worker (queues training, default) and
a scoring worker (scoring, default). The scoring worker is SIGKILLed, with every process
under it, part-way through its shards; it is restarted, and Airflow's retry (the DAG's
own retry default) must leave the rows of a single-process `recjobs run`: the same ids,
ranks and versions, scores to float32 rounding.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
import sqlalchemy as sa
import yaml

from recjobs.data import write_inbox
from recjobs.pipeline import run_pipeline
from recjobs.runs import RunFolder
from recjobs.settings import load_settings
from tests.conftest import (
    AIRFLOW,
    ROOT,
    SMALL,
    _free_port,
    _health,
    airflow_cli,
    airflow_process_env,
    wait_for,
)

# Real Airflow processes or crash-and-rerun loops: minutes, so outside the fast loop (-m 'not slow').
pytestmark = pytest.mark.slow

DAY = "2026-01-31"
FAMILIES = ["popularity", "als"]
SHARDS = 3
TOP_N = 10
# Several chunks per shard (40 users each), so a kill can land between two of them.
CHUNK_USERS = 16
SCHEDULER_SERVICES = ("airflow-scheduler", "airflow-dag-processor", "airflow-apiserver")
WORKERS = {"training": "airflow-worker-training", "scoring": "airflow-worker-scoring"}
# Node name of a worker in this test; Airflow records it as the task instance's hostname.
NODE_VAR = "TEST_CELERY_NODE"


def worker_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` in this test's workers: their Celery node name.

    Both workers share one machine here, so the machine's name would not tell them apart.
    """
    return os.environ[NODE_VAR]


# -- the compose deployment ---------------------------------------------------------------
def _compose() -> tuple[dict, dict]:
    return (yaml.safe_load((ROOT / "docker-compose.yaml").read_text()),
            yaml.safe_load((ROOT / "docker-compose.celery.yaml").read_text()))


def service_env(service: str) -> dict[str, str]:
    """A service's environment as `docker compose -f docker-compose.yaml -f docker-compose.celery.yaml` gives it."""
    base, override = _compose()
    env = dict(base["services"].get(service, {}).get("environment") or {})
    env.update(override["services"].get(service, {}).get("environment") or {})
    return {k: str(v) for k, v in env.items()}


def worker_command(service: str) -> list[str]:
    """A worker service's command, as `airflow` arguments."""
    return _compose()[1]["services"][service]["command"].split()


def _listens(command: list[str]) -> tuple[list[str], str]:
    queues = command[command.index("--queues") + 1].split(",")
    return queues, command[command.index("--celery-hostname") + 1]


def localised(env: dict[str, str], hosts: dict[str, str], databases: dict[str, str]) -> dict[str, str]:
    """``env`` with compose's service names in URLs mapped to local ``host:port`` and databases.

    Values naming a path inside the containers (/opt/...) are left out: the test has its own.
    psycopg2 (the official image's driver for Airflow's metadata) is not installed here;
    psycopg 3 is, and Airflow 3 uses it the same way.
    """
    out = {}
    for key, value in env.items():
        if value.startswith("/opt/"):
            continue
        if "://" in value:
            prefix = "db+" if value.startswith("db+") else ""
            url = sa.engine.make_url(value[len(prefix):])
            if url.host in hosts:
                host, port = hosts[url.host].rsplit(":", 1)
                url = url.set(host=host, port=int(port))
                if url.database in databases:
                    pg = sa.engine.make_url(databases[url.database])
                    url = sa.engine.URL.create(url.drivername.replace("psycopg2", "psycopg"), pg.username,
                                               pg.password, url.host, url.port, pg.database, url.query)
                value = prefix + url.render_as_string(hide_password=False)
        out[key] = value
    return out


def test_the_compose_celery_deployment_routes_training_and_scoring_to_their_own_workers():
    """What the slow test below runs, read from the compose files, is the deployment the README describes."""
    train_q = service_env("airflow-dag-processor")["RECJOBS_AIRFLOW__TRAIN_QUEUE"]
    score_q = service_env("airflow-dag-processor")["RECJOBS_AIRFLOW__SCORE_QUEUE"]
    assert (train_q, score_q) == ("training", "scoring")
    assert _listens(worker_command(WORKERS["training"]))[0] == [train_q, "default"]
    assert _listens(worker_command(WORKERS["scoring"]))[0] == [score_q, "default"]
    for service in (*SCHEDULER_SERVICES, "airflow-triggerer", *WORKERS.values()):
        env = service_env(service)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", service
        assert sa.engine.make_url(env["AIRFLOW__CELERY__BROKER_URL"]).host == "redis", service
        backend = sa.engine.make_url(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"))
        assert (backend.host, backend.database) == ("postgres", "airflow"), service
        # The queues are read when the DAG file is parsed: every service must agree.
        assert (env["RECJOBS_AIRFLOW__TRAIN_QUEUE"], env["RECJOBS_AIRFLOW__SCORE_QUEUE"]) == (train_q, score_q)
        assert sa.engine.make_url(env["AIRFLOW_CONN_RECJOBS_DB"]).database == "recjobs", service
        assert env.get("AIRFLOW_CONFIG") == "/opt/airflow/config/airflow.cfg", service  # one JWT secret
    worker = service_env(WORKERS["scoring"])
    assert worker["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert worker["RECJOBS_HOME"] == service_env("airflow-scheduler")["RECJOBS_HOME"]
    # The mapping the slow test applies keeps everything but the addresses.
    local = localised(worker, {"postgres": "127.0.0.1:5999", "redis": "127.0.0.1:6999",
                               "airflow-apiserver": "127.0.0.1:8999"},
                      {"airflow": "postgresql+psycopg://postgres@x/af", "recjobs": "postgresql+psycopg://postgres@x/rec"})
    assert local["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6999/0"
    assert local["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql+psycopg://postgres@127.0.0.1:5999/af"
    assert local["AIRFLOW_CONN_RECJOBS_DB"] == "postgresql://postgres@127.0.0.1:5999/rec"
    assert local["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8999/execution/"
    assert "RECJOBS_HOME" not in local and "AIRFLOW_CONFIG" not in local


RETRIES = (
    "import json\n"
    "from airflow.dag_processing.dagbag import DagBag\n"
    "bag = DagBag()\n"
    "dag = bag.get_dag('recs_nightly')\n"
    "print(json.dumps(None if dag is None else sorted({(t.retries, t.retry_delay.total_seconds()) for t in dag.tasks})))\n"
    "print(json.dumps(sorted(str(e) for e in bag.import_errors.values())))\n"
)


def test_the_dag_retries_by_settings_unless_airflow_config_sets_them(airflow_env):
    def parse(**env: str) -> tuple[list, list[str]]:
        base = {k: v for k, v in airflow_env.items() if k != "AIRFLOW__CORE__DEFAULT_TASK_RETRIES"}
        out = subprocess.run([sys.executable, "-c", RETRIES], env={**base, **env}, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        tasks, errors = out.stdout.strip().splitlines()[-2:]
        return json.loads(tasks), json.loads(errors)

    # The settings' default; airflow.cfg (generated with Airflow's defaults written out) changes nothing.
    assert parse() == ([[2, 60.0]], [])
    assert parse(RECJOBS_AIRFLOW__RETRIES="4", RECJOBS_AIRFLOW__RETRY_DELAY_SECONDS="5") == ([[4, 5.0]], [])
    # Airflow's own config wins where a deployment sets it, its default value (0) included.
    assert parse(AIRFLOW__CORE__DEFAULT_TASK_RETRIES="0", RECJOBS_AIRFLOW__RETRIES="4") == ([[0, 60.0]], [])
    assert parse(AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="7") == ([[2, 7.0]], [])
    # Hostile values: the DAG does not load, and its import error names the setting.
    tasks, errors = parse(RECJOBS_AIRFLOW__RETRIES="-1")
    assert tasks is None and len(errors) == 1 and "airflow.retries" in errors[0], errors
    tasks, errors = parse(RECJOBS_AIRFLOW__RETRY_DELAY_SECONDS="soon; DROP TABLE x")
    assert tasks is None and "airflow.retry_delay_seconds" in errors[0], errors


# -- local servers ------------------------------------------------------------------------
def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_port() -> Iterator[int]:
    """A throwaway redis-server on a free port (no persistence), stopped after the test."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server (Debian package redis-server; scripts/setup_system.sh installs it)")
    base = Path(tempfile.mkdtemp(prefix="recjobs-redis-"))
    port = _free_port()
    with open(base / "log", "w") as log:
        proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(base),
                                 "--save", "", "--appendonly", "no"], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: _redis_ping(port), timeout=30), (base / "log").read_text()[-2000:]
        yield port
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def _databases(server: str, *names: str) -> Iterator[dict[str, str]]:
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    real = {name: f"{name}_{uuid.uuid4().hex[:10]}" for name in names}
    with admin.connect() as conn:
        for db in real.values():
            conn.exec_driver_sql(f"CREATE DATABASE {db}")
    try:
        yield {name: sa.engine.make_url(server).set(database=db).render_as_string(hide_password=False)
               for name, db in real.items()}
    finally:
        with admin.connect() as conn:
            for db in real.values():
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.dispose()


class Cluster:
    """The Airflow processes of the test, each in its own session, logging to its own file."""

    def __init__(self, base: Path, envs: dict[str, dict[str, str]]) -> None:
        self.base, self.envs = base, envs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], **extra: str) -> None:
        with open(self.base / f"{name}.log", "a") as log:
            self.procs[name] = subprocess.Popen([str(AIRFLOW), *args], env={**self.envs[name], **extra},
                                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                                start_new_session=True)

    def kill_tree(self, name: str) -> list[int]:
        """SIGKILL a process, every process under it (the task processes have groups of their own), as a lost machine."""
        proc = self.procs[name]
        tree = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(60)
        return tree

    def tails(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
                         for p in sorted(self.base.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


def _task_instances(meta: sa.Engine, table: str = "task_instance") -> pd.DataFrame:
    with meta.connect() as conn:
        return pd.read_sql(sa.text(f"SELECT task_id, map_index, try_number, state, queue, hostname FROM {table} "
                                   "WHERE dag_id = 'recs_nightly' ORDER BY task_id, map_index, try_number"), conn)


def _run_state(meta: sa.Engine) -> str | None:
    with meta.connect() as conn:
        return conn.execute(sa.text("SELECT state FROM dag_run WHERE dag_id = 'recs_nightly'")).scalar()


def _parsed(meta: sa.Engine) -> bool:
    try:
        with meta.connect() as conn:
            return conn.execute(sa.text("SELECT 1 FROM dag d WHERE dag_id = 'recs_nightly' AND EXISTS "
                                        "(SELECT 1 FROM serialized_dag s WHERE s.dag_id = d.dag_id)")).first() is not None
    except sa.exc.DBAPIError:  # tables not there yet
        return False


def _lists(url: str) -> dict[str, pd.DataFrame]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {"recommendations": pd.read_sql("SELECT user_id, item_id, rank, score, model_version FROM "
                                                   "recommendations ORDER BY user_id, rank", conn),
                    "similar_items": pd.read_sql("SELECT item_id, similar_item_id, rank, score, model_version "
                                                 "FROM similar_items ORDER BY item_id, rank", conn)}
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_recs_nightly_on_celery_workers_survives_a_worker_killed_mid_shard(tmp_path, postgres_server, redis_port):
    if not AIRFLOW.exists():
        pytest.skip(f"airflow is not installed next to {sys.executable}")
    probe = subprocess.run([sys.executable, "-c", "import airflow.providers.celery, celery, redis, asyncpg"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("apache-airflow-providers-celery or asyncpg is not installed (pip install 'recjobs[airflow]')")
    train_cmd, score_cmd = worker_command(WORKERS["training"]), worker_command(WORKERS["scoring"])
    (train_qs, train_node), (score_qs, score_node) = _listens(train_cmd), _listens(score_cmd)
    train_q, score_q = train_qs[0], score_qs[0]
    nodes = {"training": train_node.replace("%h", socket.gethostname()),
             "scoring": score_node.replace("%h", socket.gethostname())}

    with _databases(postgres_server, "airflow", "recjobs", "reference") as dbs:
        api_port = _free_port()
        hosts = {"postgres": "{0.host}:{0.port}".format(sa.engine.make_url(postgres_server)),
                 "redis": f"127.0.0.1:{redis_port}", "airflow-apiserver": f"127.0.0.1:{api_port}"}
        home = tmp_path / "recjobs"
        test_only = {
            "RECJOBS_HOME": str(home),
            "RECJOBS_PUBLISH__SHARDS": str(SHARDS),
            "RECJOBS_PUBLISH__TOP_N": str(TOP_N),
            "RECJOBS_PUBLISH__CHUNK_USERS": str(CHUNK_USERS),
            # The DAG's own retry default (2) applies; only its delay is shortened.
            "RECJOBS_AIRFLOW__RETRY_DELAY_SECONDS": "5",
            # How long a task whose worker died stays "running" before the scheduler fails it
            # (and so retries it): Airflow's default is 300 s.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            # A task the lost worker had taken from Redis but not started stays "queued" until
            # Airflow requeues it: after 600 s by default.
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "15",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__WORKERS": "1",
            # Compose turns the scheduler's health server on: not on its fixed port here.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(_free_port()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the run this test triggers
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        }

        def env_of(service: str, **extra: str) -> dict[str, str]:
            env = airflow_process_env(tmp_path / "airflow", plugins=tmp_path / "no_plugins",
                                      **{**localised(service_env(service), hosts, dbs), **test_only, **extra})
            del env["AIRFLOW__CORE__DEFAULT_TASK_RETRIES"]  # as in compose: the DAG's default applies
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            return env

        envs = {name.removeprefix("airflow-"): env_of(name) for name in SCHEDULER_SERVICES}
        for role, service in WORKERS.items():
            envs[role] = env_of(service, AIRFLOW__CORE__HOSTNAME_CALLABLE="tests.test_celery.worker_hostname",
                                AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(_free_port()),
                                **{NODE_VAR: nodes[role]})
        # Both URLs came from compose: the metadata DB and the recommendations DB.
        assert envs["scheduler"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith(sa.engine.make_url(dbs["airflow"]).database)
        assert envs["scoring"]["AIRFLOW_CONN_RECJOBS_DB"].endswith(sa.engine.make_url(dbs["recjobs"]).database)

        cli = envs["scheduler"]
        out = airflow_cli(cli, "db", "migrate")
        assert out.returncode == 0, out.stderr[-3000:]
        # As compose's airflow-init: the recommendations schema on the recjobs_db database.
        out = subprocess.run([str(AIRFLOW.with_name("recjobs")), "initdb"], capture_output=True, text=True,
                             timeout=300, env={**cli, "RECJOBS_DATABASE_URL": dbs["recjobs"]})
        assert out.returncode == 0, out.stderr[-3000:]
        write_inbox(home / "inbox", SMALL)

        meta = sa.create_engine(dbs["airflow"])
        cluster = Cluster(tmp_path, envs)
        staging = RunFolder.of(load_settings({"home": str(home)}, environ={}), DAY).staging / "recommendations"
        try:
            cluster.start("scheduler", ["scheduler"])
            cluster.start("dag-processor", ["dag-processor"])
            cluster.start("apiserver", ["api-server"])
            cluster.start("training", train_cmd)
            # The scoring worker's first start pauses in every shard after each chunk, so that
            # the test kills it part-way through them.
            cluster.start("scoring", score_cmd, RECJOBS_FAULT_AT="publish.mid_shard=pause:600")
            assert wait_for(lambda: _health(api_port) == 200, timeout=300, interval=2), cluster.tails()
            assert wait_for(lambda: _parsed(meta), timeout=300, interval=2), cluster.tails()
            for role in WORKERS:
                assert wait_for(lambda r=role: " ready." in (tmp_path / f"{r}.log").read_text(errors="replace"),
                                timeout=300, interval=2), cluster.tails()

            out = airflow_cli(cli, "dags", "trigger", "recs_nightly", "--logical-date", f"{DAY}T00:00:00+00:00",
                              "--conf", json.dumps({"run_date": DAY, "families": FAMILIES}))
            assert out.returncode == 0, out.stderr[-3000:]
            assert airflow_cli(cli, "dags", "unpause", "recs_nightly").returncode == 0

            # Every slot of the scoring worker is half-way through a shard (their temporary
            # files exist, and each is paused after a chunk): kill it as a machine dies. Waiting
            # for all slots means no shard it took from Redis is left unstarted.
            slots = min(int(envs["scoring"]["AIRFLOW__CELERY__WORKER_CONCURRENCY"]), SHARDS)
            assert wait_for(lambda: len(list(staging.glob(".part-*.tmp"))) >= slots, timeout=900, interval=0.5), \
                (_task_instances(meta).to_string(), cluster.tails())
            at_kill = _task_instances(meta)
            killed = cluster.kill_tree("scoring")
            cluster.start("scoring", score_cmd)  # the same worker back, without the pause

            assert wait_for(lambda: _run_state(meta) in ("success", "failed"), timeout=1200, interval=3), \
                (_task_instances(meta).to_string(), cluster.tails())
            tis, history = _task_instances(meta), _task_instances(meta, "task_instance_history")
            assert _run_state(meta) == "success", (tis.to_string(), cluster.tails())
            assert not [pid for pid in killed if psutil.pid_exists(pid)
                        and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
            # Why the killed tries start over, from their retry callbacks (run by the dag-processor).
            callbacks = tmp_path / "airflow" / "logs" / "dag_processor"
            expected = [f"rank_shard[{i}] try 1 ended: it ended without reporting back"
                        for i in at_kill[(at_kill.task_id == "rank_shard") & (at_kill.state == "running")].map_index]

            def explained() -> bool:
                text = "".join(p.read_text(errors="replace") for p in callbacks.rglob("recs_nightly.py.log"))
                return all(line in text for line in expected)

            assert wait_for(explained, timeout=180, interval=3), cluster.tails()
        finally:
            cluster.stop()
            meta.dispose()

        # Every shard ran, on the scoring worker only (its killed tries too).
        shards = tis[tis.task_id == "rank_shard"]
        assert sorted(shards.map_index) == list(range(SHARDS))
        assert set(shards.state) == {"success"} and set(shards.queue) == {score_q}
        assert set(shards.hostname) == {nodes["scoring"]}
        was_running = at_kill[(at_kill.task_id == "rank_shard") & (at_kill.state == "running")]
        assert len(was_running) == slots, at_kill.to_string()
        # The killed tries: failed, on the scoring worker, and tried again.
        lost = history[(history.task_id == "rank_shard") & history.map_index.isin(was_running.map_index)
                       & (history.try_number == 1)]
        assert sorted(lost.map_index) == sorted(was_running.map_index), (history.to_string(), at_kill.to_string())
        assert set(lost.state) == {"failed"} and set(lost.hostname) == {nodes["scoring"]}
        assert (shards.set_index("map_index").loc[list(lost.map_index), "try_number"] >= 2).all()
        # Training ran only on the training worker: the candidates, skipped families and the champion.
        training = tis[tis.task_id.str.startswith("train_")]
        assert set(training.queue) == {train_q} and set(training.hostname) == {nodes["training"]}
        ran = training[training.state == "success"].task_id
        assert sorted(ran) == sorted([*(f"train_{f}" for f in FAMILIES), "train_champion"])
        # Everything else went to the default queue, served by both.
        rest = tis[~tis.task_id.str.startswith("train_") & (tis.task_id != "rank_shard")]
        assert set(rest.queue) == {"default"}
        assert set(rest[rest.state == "success"].hostname) <= set(nodes.values())
        # Each retried shard said in its log why it starts over.
        for index in lost.map_index:
            log = next((tmp_path / "airflow" / "logs").glob(
                f"dag_id=recs_nightly/run_id=*/task_id=rank_shard/map_index={index}/attempt=2.log"))
            assert "starting over, because try 1 did not succeed" in log.read_text()

        # The same night in one process (`recjobs run`), unsharded, into another database.
        reference = load_settings({"home": str(tmp_path / "reference"), "database_url": dbs["reference"],
                                   "families": FAMILIES, "publish": {"top_n": TOP_N, "chunk_users": CHUNK_USERS}},
                                  environ={})
        write_inbox(reference.inbox, SMALL)
        run_pipeline(reference, DAY)
        got, want = _lists(dbs["recjobs"]), _lists(dbs["reference"])
        assert len(got["recommendations"]) == SMALL.n_users * TOP_N
        for kind in want:
            # Ids, ranks and versions exactly; scores to float32 rounding: a shard's users are
            # scored in other BLAS blocks than the whole's.
            pd.testing.assert_frame_equal(got[kind].drop(columns="score"), want[kind].drop(columns="score"),
                                          check_exact=True)
            pd.testing.assert_series_equal(got[kind].score, want[kind].score, check_exact=False, rtol=1e-6)
