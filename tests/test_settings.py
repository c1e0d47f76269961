"""Settings: embedded defaults, environment overrides, unknown keys rejected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from recjobs.data import Lake
from recjobs.settings import SettingsError, load_settings, mask_url


def test_defaults_and_derived_paths(tmp_path):
    s = load_settings({"home": str(tmp_path)}, environ={})
    assert s.db_url == f"sqlite:///{tmp_path / 'recjobs.db'}"
    assert s.inbox == tmp_path / "inbox" and Lake.of(s).ratings == tmp_path / "lake" / "ratings"
    assert s.evaluate.k == 10 and s.publish.top_n == 50 and s.ingest.max_invalid_share == 0.01
    assert s.families == ["popularity", "als", "lightfm", "tfrs", "ease", "itemknn", "userknn", "sequence", "ranker"]


def test_default_home_is_expanded_under_the_users_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = load_settings(environ={})
    assert s.home == tmp_path / ".recjobs" and s.inbox == tmp_path / ".recjobs" / "inbox"
    assert "~" not in s.db_url


def test_environment_overrides_nested_values(tmp_path):
    env = {
        "RECJOBS_HOME": str(tmp_path),
        "RECJOBS_DATABASE_URL": "postgresql://u:p@db/recs",
        "RECJOBS_MODELS__ALS__FACTORS": "16",
        "RECJOBS_FAMILIES": '["tfrs", "als"]',
    }
    s = load_settings(environ=env)
    assert s.database_url == "postgresql://u:p@db/recs" and s.db_url == "postgresql://u:p@db/recs"
    assert s.models.als.factors == 16
    assert s.families == ["als", "tfrs"]  # registry order, whatever the input order
    # Explicit overrides (Airflow params, CLI --set) win over the environment.
    assert load_settings({"models": {"als": {"factors": 8}}}, environ=env).models.als.factors == 8


def test_config_file_layer(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"publish": {"top_n": 7}}))
    assert load_settings(environ={"RECJOBS_CONFIG": str(cfg)}).publish.top_n == 7


@pytest.mark.parametrize(
    ("overrides", "env", "needle"),
    [
        ({}, {"RECJOBS_MODELS__ALS__FACTOR": "8"}, "RECJOBS_MODELS__ALS__FACTOR"),
        ({"publsh": {"top_n": 3}}, {}, "publsh"),
        ({"families": ["als", "svd"]}, {}, "unknown model families ['svd']"),
        ({"ingest": {"max_invalid_share": 2}}, {}, "ingest.max_invalid_share"),
    ],
)
def test_bad_settings_are_rejected_naming_the_key(overrides, env, needle):
    with pytest.raises(SettingsError) as err:
        load_settings(overrides, environ=env)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://airflow:airflow@postgres:5432/recjobs", "postgresql://airflow:***@postgres:5432/recjobs"),
        ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u@h/db?password=pw1&sslmode=require", "postgresql://u@h/db?password=%2A%2A%2A&sslmode=require"),
        ("sqlite:////data/recjobs.db", "sqlite:////data/recjobs.db"),
        ("not a url", "<unparseable database URL>"),
    ],
)
def test_mask_url_hides_passwords(url, masked):
    assert mask_url(url) == masked


def test_cli_never_prints_the_database_password(postgres_url, tmp_path):
    password = "Sup3r-secret-pw"  # the test server trusts every login, so any password is accepted
    url = make_url(postgres_url).set(password=password).render_as_string(hide_password=False)
    masked = make_url(url).render_as_string(hide_password=True)
    assert password in url and password not in masked
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECJOBS_")},
           "RECJOBS_HOME": str(tmp_path / "home"), "RECJOBS_DATABASE_URL": url,
           "RECJOBS_FAMILIES": '["popularity"]'}
    recjobs = str(Path(sys.executable).parent / "recjobs")
    for command in (["settings"], ["initdb"], ["demo"]):
        out = subprocess.run([recjobs, "-v", *command], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert password not in out.stdout + out.stderr, command
        assert masked in out.stdout, (command, out.stdout[-2000:])
    assert json.loads(subprocess.run([recjobs, "settings"], env=env, capture_output=True, text=True,
                                     timeout=120).stdout)["database_url"] == masked
