"""The dashboard without a server: it reads only, and names a broken database without its password.

The served routes (login, 401/403, the page in a browser) are tested against a real
Airflow in tests/test_airflow_server.py; here the page's library and the plugin's
database handling run against real SQLite and PostgreSQL databases and Airflow's real
connection lookup (in a subprocess, with its own AIRFLOW_HOME).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from recjobs.dashboard import NO_SCHEMA, missing_schema, render, sqlite_file_missing
from recjobs.db import make_engine
from tests.conftest import ROOT, _free_port

SECRET = "s3cret-Pw-41"


def _assert_initdb_page_and_nothing_created(engine: sa.Engine) -> None:
    page = render(engine)
    assert NO_SCHEMA in page and "model_runs" in page and "recommendations" in page
    inspector = sa.inspect(engine)
    assert inspector.get_table_names() == [] and inspector.get_view_names() == []


def test_page_on_an_empty_sqlite_database_asks_for_initdb_and_creates_nothing(tmp_path):
    path = tmp_path / "recs.db"
    assert sqlite_file_missing(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    _assert_initdb_page_and_nothing_created(engine)
    assert not sqlite_file_missing(f"sqlite:///{path}")
    assert not sqlite_file_missing("sqlite://") and not sqlite_file_missing("postgresql://h/db")


def test_page_on_an_empty_postgres_database_asks_for_initdb_and_creates_nothing(postgres_url):
    engine = make_engine(postgres_url)
    try:
        assert missing_schema(engine) == ["model_runs", "ingest_log", "publications", "popular_items", "items",
                                          "recommendations"]
        _assert_initdb_page_and_nothing_created(engine)
    finally:
        engine.dispose()


def test_page_after_initdb_has_no_initdb_hint(settings):
    from recjobs.pipeline import engine_for

    engine = engine_for(settings)  # what `recjobs initdb` does
    assert missing_schema(engine) == []
    page = render(engine)
    assert NO_SCHEMA not in page and "No model published yet." in page


# Runs in a fresh interpreter: the plugin module as the API server imports it, Airflow's own
# connection lookup (environment variables, metadata DB, any configured secrets backend).
PROBE = r"""
import json, os, sys
sys.path.insert(0, os.environ["PLUGINS"])
import recjobs_dashboard as plugin

out = {}
for name, uri in json.loads(os.environ["CASES"]).items():
    if uri is None:
        os.environ.pop("AIRFLOW_CONN_RECJOBS_DB", None)
    else:
        os.environ["AIRFLOW_CONN_RECJOBS_DB"] = uri
    try:
        out[name] = {"page": plugin.DashboardDatabase().page(None), "source": plugin.database_url()[1]}
    except plugin.DashboardDatabaseError as exc:
        out[name] = {"error": str(exc)}
print("RESULT " + json.dumps(out))
"""


def _probe(tmp_path: Path, cases: dict[str, str | None], **extra_env: str) -> dict[str, dict[str, str]]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECJOBS_"))},
           "AIRFLOW_HOME": str(tmp_path / "airflow"), "PLUGINS": str(ROOT / "plugins"),
           "CASES": json.dumps(cases), **extra_env}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert SECRET not in out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_plugin_database_errors_name_recjobs_db_without_the_password(tmp_path):
    missing_db = tmp_path / "none" / "recs.db"
    results = _probe(tmp_path, {
        # Defined, but no SQLAlchemy dialect: an error, not a silent fallback to the settings.
        "unusable": f"http://user:{SECRET}@example.invalid/x",
        # Defined, but nothing listens there.
        "unreachable": f"postgresql://user:{SECRET}@127.0.0.1:{_free_port()}/recs",
        # Not defined: the only case that falls back to RECJOBS_DATABASE_URL.
        "undefined": None,
    }, RECJOBS_DATABASE_URL=f"sqlite:///{missing_db}")
    for case in ("unusable", "unreachable"):
        error = results[case]["error"]
        assert "Airflow connection 'recjobs_db'" in error and "user:***@" in error, error
    assert "127.0.0.1" in results["unreachable"]["error"]
    assert NO_SCHEMA in results["undefined"]["page"] and "RECJOBS_DATABASE_URL" in results["undefined"]["source"]
    assert not missing_db.exists() and not missing_db.parent.exists()  # nothing created by reading


def test_plugin_surfaces_a_secrets_backend_failure_instead_of_falling_back(tmp_path):
    # A secrets backend that denies access: Airflow re-raises that (it is authoritative), and the
    # dashboard must report it rather than quietly read the embedded SQLite database.
    backend = tmp_path / "deny_backend.py"
    backend.write_text(
        "from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied\n"
        "from airflow.secrets import BaseSecretsBackend\n\n\n"
        "class Deny(BaseSecretsBackend):\n"
        "    def get_conn_value(self, conn_id, team_name=None):\n"
        f"        raise AirflowSecretsBackendAccessDenied('denied: ' + {SECRET!r})\n")
    results = _probe(tmp_path, {"denied": None}, PYTHONPATH=str(tmp_path),
                     AIRFLOW__SECRETS__BACKEND="deny_backend.Deny")
    error = results["denied"]["error"]
    assert "recjobs_db" in error and "AirflowSecretsBackendAccessDenied" in error, error
