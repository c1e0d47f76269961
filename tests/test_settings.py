"""Settings: embedded defaults, environment overrides, unknown keys rejected."""

from __future__ import annotations

import importlib.util
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
    # userknn and ranker are opt-in: the ranker cannot yet fit a 10-minute night at full size.
    assert s.families == ["popularity", "als", "lightfm", "tfrs", "ease", "itemknn", "sequence"]


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


@pytest.mark.slow
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


# -- the RECJOBS_ namespace: what is a setting and what is not (issue 16, defect 16) ---------------
@pytest.mark.parametrize("name", ["RECJOBS_TEST_POSTGRES_URL", "RECJOBS_TEST_ANYTHING_ELSE", "RECJOBS_ML100K",
                                  "RECJOBS_PG_BIN", "RECJOBS_FAULT_AT", "RECJOBS_CONFIG"])
def test_test_and_tool_variables_are_not_settings(name, tmp_path):
    env = {"RECJOBS_HOME": str(tmp_path), name: "postgresql://u:p@h/db" if "URL" in name else ""}
    if name == "RECJOBS_CONFIG":
        (tmp_path / "c.json").write_text("{}")
        env[name] = str(tmp_path / "c.json")
    assert load_settings(environ=env).home == tmp_path


def test_a_misspelt_setting_near_the_test_namespace_is_still_an_error(tmp_path):
    with pytest.raises(SettingsError, match="RECJOBS_TESTS"):
        load_settings(environ={"RECJOBS_HOME": str(tmp_path), "RECJOBS_TESTS__X": "1"})


def _cli(env: dict[str, str], *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """The real console script with exactly ``env``'s RECJOBS_* variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECJOBS_")}
    recjobs = str(Path(sys.executable).parent / "recjobs")
    return subprocess.run([recjobs, *args], env={**base, **env}, capture_output=True, text=True, timeout=timeout)


def test_every_command_works_with_the_test_suites_own_variables_exported(tmp_path):
    # The README tells developers to export RECJOBS_TEST_POSTGRES_URL; that must not break the CLI.
    env = {"RECJOBS_HOME": str(tmp_path / "home"), "RECJOBS_TEST_POSTGRES_URL": "postgresql://postgres@h:1/x",
           "RECJOBS_ML100K": str(tmp_path)}
    out = _cli(env, "settings")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert "test_postgres_url" not in shown and "ml100k" not in shown
    out = _cli(env, "initdb")
    assert out.returncode == 0 and (tmp_path / "home" / "recjobs.db").exists(), out.stderr


# -- NaN and infinities, from every source (defect 23, the settings part) ----------------------------
NON_FINITE = ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e999"]


@pytest.mark.parametrize("raw", NON_FINITE)
@pytest.mark.parametrize("key", ["ingest.rating_max", "gate.margin", "models.als.max_seconds"])
def test_nan_and_infinities_are_refused_from_the_environment(key, raw, tmp_path):
    env_name = "RECJOBS_" + key.upper().replace(".", "__")
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"RECJOBS_HOME": str(tmp_path), env_name: raw})
    assert key in str(err.value) and env_name in str(err.value) and "finite" in str(err.value)


@pytest.mark.parametrize("raw", NON_FINITE)
def test_nan_and_infinities_are_refused_from_set(raw, tmp_path, capsys):
    from recjobs.cli import main

    assert main(["settings", "--set", f"home={tmp_path}", "--set", f"ingest.rating_max={raw}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ingest.rating_max" in err and "finite" in err


@pytest.mark.parametrize("text", ['{"ingest": {"rating_max": NaN}}', '{"ingest": {"rating_min": -Infinity}}',
                                  '{"gate": {"margin": 1e999}}', '{"ingest": {"rating_max": "nan"}}'])
def test_nan_and_infinities_are_refused_from_the_config_file(text, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(text)
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"RECJOBS_HOME": str(tmp_path), "RECJOBS_CONFIG": str(cfg)})
    assert str(cfg) in str(err.value) and "finite" in str(err.value)


def test_nan_from_the_environment_is_one_line_from_the_command(tmp_path):
    out = _cli({"RECJOBS_HOME": str(tmp_path), "RECJOBS_INGEST__RATING_MAX": "NaN"}, "ingest")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "RECJOBS_INGEST__RATING_MAX" in out.stderr, out.stderr


# -- sizes: a list length or chunk far beyond any catalogue is refused (defect 24) -------------------
BOUNDED = {  # setting: (largest accepted, the value or another absurd one)
    "publish.top_n": (10_000, 1e9), "publish.similar_n": (10_000, 1e9), "publish.popular_n": (10_000, 1e9),
    "evaluate.k": (10_000, 1e9), "publish.chunk_users": (65_536, 1e9), "evaluate.chunk_users": (65_536, 1e9),
    "ingest.batch_rows": (100_000_000, 1e12), "ingest.merge_rows": (1_000_000_000, 1e15),
    "gate.bootstrap_samples": (1_000_000, 1e12), "models.als.factors": (4096, 1e9),
    "models.lightfm.no_components": (4096, 1e9), "models.tfrs.embedding_dim": (4096, 1e9),
    "models.sequence.embedding_dim": (4096, 1e9), "seed": (2**32 - 1, 2**32),
}


def _nested(key: str, value: object) -> dict:
    out: dict = {}
    node = out
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


@pytest.mark.parametrize("key", sorted(BOUNDED))
def test_sizes_are_bounded(key, tmp_path):
    largest, absurd = BOUNDED[key]
    s = load_settings({"home": str(tmp_path), **_nested(key, largest)}, environ={})
    section, _, name = key.rpartition(".")
    node = s
    for part in filter(None, section.split(".")):
        node = getattr(node, part)
    assert getattr(node, name) == largest
    with pytest.raises(SettingsError) as err:
        load_settings({"home": str(tmp_path), **_nested(key, absurd)}, environ={})
    assert key in str(err.value) and f"{largest}" in str(err.value)


def test_a_negative_seed_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="seed"):
        load_settings({"home": str(tmp_path), "seed": -1}, environ={})


def test_a_huge_top_n_is_one_line_naming_it(tmp_path):
    out = _cli({"RECJOBS_HOME": str(tmp_path)}, "publish", "--date", "2026-01-31", "--set", "publish.top_n=1e9")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "publish.top_n" in out.stderr and "10000" in out.stderr and "Traceback" not in out.stderr


# -- the SQLite address built from RECJOBS_HOME (defect 25) -------------------------------------------
@pytest.mark.parametrize("name", ["a?b=c", "x%41y", "h#frag", "at@sign:colon", "sp ace", "ü-ñ", "semi;colon"])
def test_the_sqlite_database_lies_in_home_whatever_its_name(name, tmp_path):
    home = tmp_path / name / "home"
    s = load_settings(environ={"RECJOBS_HOME": str(home)})
    assert make_url(s.db_url).database == str(home / "recjobs.db")
    out = _cli({"RECJOBS_HOME": str(home)}, "initdb")
    assert out.returncode == 0, out.stderr
    assert (home / "recjobs.db").is_file()
    # Nothing was created beside the home: the database went where the settings say.
    assert sorted(p.name for p in tmp_path.rglob("*") if "recjobs.db" in p.name) == ["recjobs.db"]


@pytest.mark.parametrize("key", ["home", "inbox_dir", "database_url"])
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_location_is_refused_not_taken_for_the_current_directory(key, value, tmp_path):
    env_name = f"RECJOBS_{key.upper()}"
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"RECJOBS_HOME": str(tmp_path), env_name: value})
    assert env_name in str(err.value) and "empty" in str(err.value)
    with pytest.raises(SettingsError, match=key):
        load_settings({"home": str(tmp_path), key: value}, environ={})


def test_an_empty_home_is_one_line_from_the_command(tmp_path):
    out = _cli({"RECJOBS_HOME": ""}, "initdb")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "RECJOBS_HOME" in out.stderr, out.stderr


# -- database URLs: masked wholly, refused in one line when malformed (defects 16, 26) ---------------
@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://bob:p@ss0rd@host/db", "ss0rd"),
        ("postgresql://bob:p@ss@w@rd@host:5432/db?sslmode=require", "w@rd"),
        ("postgresql://bob:pw@host/db?password=x1&password=y2", "y2"),
        ("postgresql://bob:pw@host/db?sslpassword=k3y", "k3y"),
        ("postgresql://bob:pw@host:abc/db", "pw"),
        ("postgresql://bob:pa/ss@host/db", "pa/ss"),
        ("postgresql://bob:s3cr#t@host/db", "s3cr"),
    ],
)
def test_mask_url_never_shows_any_part_of_a_password(url, secret):
    masked = mask_url(url)
    assert secret not in masked and "bob" in masked or masked == "<unparseable database URL>", masked


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("notaurl", "not a database URL"),
        ("foo://x/y", "unknown database dialect"),
        ("postgresql+nosuchdriver://u:pw@h/db", "unknown database dialect"),
        ("postgresql://bob:pw@host:abc/db", "not a database URL"),
        ("postgresql://bob:pw@host:99999/db", "port"),
        ("postgresql://bob:p@ss0rd@host/db", "%40"),
    ],
)
def test_a_malformed_database_url_is_a_settings_error_naming_it_masked(url, needle, tmp_path, monkeypatch, capsys):
    from recjobs.cli import main

    with pytest.raises(SettingsError) as err:
        load_settings(environ={"RECJOBS_HOME": str(tmp_path), "RECJOBS_DATABASE_URL": url})
    text = str(err.value)
    assert "RECJOBS_DATABASE_URL" in text and needle in text, text
    assert "pw" not in text and "ss0rd" not in text, text
    # `recjobs settings` (in-process; tests/test_cli_hostile.py runs such URLs through the console script).
    monkeypatch.setenv("RECJOBS_HOME", str(tmp_path))
    monkeypatch.setenv("RECJOBS_DATABASE_URL", url)
    assert main(["settings"]) == 2
    out, err_text = capsys.readouterr()
    assert out == "" and err_text.count("\n") == 1 and needle in err_text, err_text
    assert "Traceback" not in err_text and "pw" not in err_text and "ss0rd" not in err_text


def test_an_engine_for_a_url_from_elsewhere_fails_in_one_named_error():
    # URLs that do not come through the settings (an Airflow connection) still fail as DatabaseError.
    from recjobs.db import make_engine
    from recjobs.errors import DatabaseError

    urls = ["notaurl", "foo://x/y", "postgresql://bob:pw@host:abc/db"]
    if importlib.util.find_spec("pg8000") is None:
        urls.append("postgresql+pg8000://u:pw@h/db")  # a dialect whose driver is not installed
    for url in urls:
        with pytest.raises(DatabaseError) as err:
            make_engine(url).connect()
        assert "pw" not in str(err.value), str(err.value)
