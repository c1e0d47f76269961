"""Shared fixtures: isolated settings, generated data, real SQLite and PostgreSQL databases."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from recjobs.data import SyntheticSpec, generate, write_inbox
from recjobs.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("RECJOBS_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
PG_BIN = Path(os.environ.get("RECJOBS_PG_BIN", "/usr/lib/postgresql/15/bin"))
SMALL = SyntheticSpec(n_users=120, n_items=80, mean_interactions=25, days=60, seed=3)
AIRFLOW = Path(sys.executable).with_name("airflow")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must not pick up a developer's own RECJOBS_* settings.
    for name in list(os.environ):
        if name.startswith("RECJOBS_") and name not in {"RECJOBS_TEST_POSTGRES_URL", "RECJOBS_ML100K"}:
            monkeypatch.delenv(name)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"home": str(tmp_path / "home")}, environ={})


@pytest.fixture
def engine(settings: Settings) -> Iterator[sa.Engine]:
    from recjobs.pipeline import engine_for

    eng = engine_for(settings)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def small_data():
    return generate(SMALL)


@pytest.fixture
def small_inbox(settings: Settings) -> list[Path]:
    return write_inbox(settings.inbox, SMALL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; run the server tools as the postgres user then.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a real PostgreSQL server: RECJOBS_TEST_POSTGRES_URL, or a throwaway cluster."""
    url = os.environ.get("RECJOBS_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL server binaries at {PG_BIN} and RECJOBS_TEST_POSTGRES_URL unset")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    base = Path(tempfile.mkdtemp(prefix="recjobs-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    port = _free_port()
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                 "--no-sync", "-E", "UTF8"]), check=True, capture_output=True)
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                                 f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the test server for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = sa.engine.make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def airflow_process_env(airflow_home: Path, plugins: Path = ROOT / "plugins", **extra: str) -> dict[str, str]:
    """Environment for an Airflow CLI or server process of our own: its own home, our DAGs.

    The test process's own AIRFLOW_* and RECJOBS_* settings are left out, so nothing
    leaks into or out of it.
    """
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECJOBS_"))},
        "PATH": f"{AIRFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The DAG files do not change while a test runs: parse each once (a new file is still
        # parsed at once) instead of every 30 s, CPU that the scheduler's tasks need on a small machine.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
        # A failing task fails at once: these tests are about other things (the DAG's own retry
        # default, see recjobs_airflow.task_defaults, is exercised by tests/test_celery.py).
        "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "0",
        **extra,
    }


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict[str, str]:  # noqa: ANN001
    """A migrated Airflow metadata DB (SQLite) for `airflow dags test` / `tasks test` runs."""
    if not AIRFLOW.exists():
        pytest.skip(f"airflow is not installed next to {sys.executable}")
    env = airflow_process_env(tmp_path_factory.mktemp("airflow"), AIRFLOW__CORE__UNIT_TEST_MODE="False")
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return env


def airflow_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``airflow *args`` in ``env`` (text output captured), retried while the metadata DB is locked."""
    for _attempt in range(5):
        out = subprocess.run([str(AIRFLOW), *args], env=env, capture_output=True, text=True, timeout=300)
        # A standalone's metadata database is SQLite: on a busy machine a CLI call can meet
        # the scheduler's write lock. The failed attempt rolled back, so trying again is safe.
        if out.returncode == 0 or "database is locked" not in out.stderr:
            break
        time.sleep(5)
    return out


def parsed_dag(airflow_db: Path, dag_id: str) -> tuple[bool, str | None] | None:
    """(is_paused, next_dagrun) of ``dag_id`` once the dag-processor has stored it, else None.

    Read from the standalone's SQLite metadata DB (read-only): polling with an `airflow`
    CLI call instead costs seconds of CPU per poll, taken from the scheduler beside it.
    """
    try:
        with contextlib.closing(sqlite3.connect(f"file:{airflow_db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT d.is_paused, d.next_dagrun FROM dag d WHERE d.dag_id = ? AND EXISTS "
                               "(SELECT 1 FROM serialized_dag s WHERE s.dag_id = d.dag_id)", (dag_id,)).fetchone()
    except sqlite3.OperationalError:  # no database or tables yet, or locked past the timeout
        return None
    return None if row is None else (bool(row[0]), row[1])


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5) as resp:
            return resp.status
    except OSError:  # not listening yet, or an HTTP error status
        return 0


@contextlib.contextmanager
def airflow_standalone(env: dict[str, str], port: int, log_path: Path, timeout: float = 300) -> Iterator[None]:
    """A real `airflow standalone` (scheduler, API server, dag-processor, triggerer), healthy on ``port``.

    Its output goes to ``log_path`` (quoted when it does not come up); the whole process
    group is stopped on exit.
    """
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(AIRFLOW), "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            up = wait_for(lambda: _health(port) == 200, timeout=timeout, interval=2)
            assert up, log_path.read_text()[-4000:]
            yield
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
