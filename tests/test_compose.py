"""docker-compose.yaml and the Dockerfile, checked by parsing (no Docker engine runs here)."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml
from sqlalchemy.engine import make_url

from recjobs.db import normalize_url
from tests.conftest import ROOT

AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-init"}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_every_airflow_service_runs_the_project_image_with_dags_and_plugins_mounted():
    compose = load("docker-compose.yaml")
    services = compose["services"]
    assert AIRFLOW_SERVICES <= set(services) and "postgres" in services
    for name in AIRFLOW_SERVICES:
        svc = services[name]
        assert svc["build"] == "." and svc["image"] == "recjobs-airflow:latest", name
        targets = {re.search(r":(/[^:]+)(?::ro|:rw)?$", v).group(1) for v in svc["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins"} <= targets, name
    commands = {services[n]["command"] for n in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands == {"api-server", "scheduler", "dag-processor", "triggerer"}
    init = "\n".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init and "recjobs initdb" in init


def test_recommendations_connection_points_at_the_postgres_service():
    compose = load("docker-compose.yaml")
    postgres_init = (ROOT / "docker" / "postgres-init.sql").read_text()
    assert re.search(r"CREATE DATABASE recjobs\b", postgres_init)
    mounts = compose["services"]["postgres"]["volumes"]
    assert any(m.startswith("./docker/postgres-init.sql:/docker-entrypoint-initdb.d/") for m in mounts)
    uris = [compose["services"][name]["environment"]["AIRFLOW_CONN_RECJOBS_DB"] for name in sorted(AIRFLOW_SERVICES)]
    # Through Airflow's own Connection parsing, as the DAG reads it, then our URL normalisation.
    code = ("from airflow.models.connection import Connection\n"
            f"for uri in {uris!r}: print(Connection(conn_id='recjobs_db', uri=uri).get_uri())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in out.stdout.strip().splitlines()[-len(uris):]:
        url = make_url(normalize_url(line))
        assert (url.host, url.database, url.drivername) == ("postgres", "recjobs", "postgresql+psycopg")
    metadata = compose["services"]["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert make_url(metadata).host == "postgres" and make_url(metadata).database == "airflow"


def test_dockerfile_extends_official_airflow_image_and_installs_project():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python3\.11$", text, re.M)
    assert re.search(r"^ARG AIRFLOW_VERSION=3\.\d+\.\d+$", text, re.M)
    assert '"/opt/recjobs[tf]"' in text and "TF_USE_LEGACY_KERAS=1" in text
    assert "pip install" not in "\n".join(load("docker-compose.yaml")["services"]["airflow-init"]["command"])


def test_celery_override_adds_workers_on_the_same_image():
    override = load("docker-compose.celery.yaml")
    # Its settings are checked against what tests/test_celery.py runs there.
    for name in ("airflow-worker-training", "airflow-worker-scoring"):
        worker = override["services"][name]
        assert worker["image"] == "recjobs-airflow:latest" and worker["command"].startswith("celery worker")
        assert worker["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for name in ("airflow-scheduler", "airflow-apiserver"):
        assert override["services"][name]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
