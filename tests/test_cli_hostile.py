"""Every subcommand with bad arguments: one line naming the bad value, no traceback, nothing written.

The cases are generated from ``recjobs.cli.build_parser()`` itself (every subcommand with a
``--date`` gets the bad dates, every one with ``--set`` the bad settings), so a new
subcommand is covered as soon as it exists; hand-written cases add what is particular
to each. The CLI runs in-process (``recjobs.cli.main``) over a real home with ingested
data and a split, and every case checks that no database row and no file changed.
A few cases run through the real console script, and the unreachable database ones
against a port nothing listens on and a real PostgreSQL server that drops the
connection mid-command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from recjobs.cli import build_parser, main
from recjobs.data import write_inbox
from recjobs.settings import load_settings
from tests.conftest import SMALL, _free_port

END = SMALL.end.isoformat()
RECJOBS = str(Path(sys.executable).parent / "recjobs")
LONG = "9" * 5000


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(sub: argparse.ArgumentParser) -> set[str]:
    return {flag for action in sub._actions for flag in action.option_strings}


BAD_DATES = [  # (value, what the message must name)
    ("2026-13-01", "2026-13-01"), ("", "''"), ("yesterday", "yesterday"), ("9" * 40, "9" * 40),
    ("２０２６-01-31", "２０２６-01-31"), ("2026-01-31'; DROP TABLE model_runs;--", "DROP TABLE model_runs"),
    ("2062-01-31", "2062-01-31"),
]
BAD_SETS = [  # (--set value, what the message must name)
    ("publish.top_n=1e9", "publish.top_n"), ("nokey", "nokey"), ("ingest.rating_max=NaN", "ingest.rating_max"),
    ("models.als.factors=<script>", "models.als.factors"), ("home=", "home"), ("publsh.top_n=3", "publsh"),
    ("seed=" + LONG, "seed"), ("database_url=notaurl", "database_url"), ("database_url=foo://x/y", "database_url"),
]
SPECIFIC = {  # subcommand: [(arguments after the subcommand, what the message must name)]
    "": [([], "command"), (["bogus"], "bogus"), (["-v"], "command")],
    "demo": [(["--end", "2026-13-01"], "--end: bad date '2026-13-01'"), (["--end", ""], "--end"),
             (["--end", "yesterday"], "yesterday"), (["--end", "2062-01-31"], "2062-01-31"),
             (["--end", "2026-01-31'; DROP TABLE model_runs;--"], "DROP TABLE")],
    "run": [(["--date", END, "--families", "bogus"], "bogus"), (["--date", END, "--families", ","], "famil")],
    "ingest": [(["/nonexistent/ratings.csv"], "/nonexistent/ratings.csv"), (["x" * 5000], "xxxx"),
               (["--columns", "user_id"], "user_id"), (["--columns", "foo=bar"], "foo"),
               (["--columns", "user_id="], "user_id="), (["--movielens", "/nonexistent"], "/nonexistent")],
    # An explicit global_time protocol with a holdout longer than the data leaves nothing to train on
    # (split.protocol=auto would fall back to per_user instead, which is not an error).
    "split": [(["--date", END, "--set", "split.protocol=global_time", "--set", "split.holdout_days=1000"],
               "split.holdout_days")],
    "train": [(["--date", END, "--family", "bogus"], "bogus"), (["--date", END], "--family"),
              (["--date", END, "--family", ""], "''"), (["--date", END, "--family", "ALS"], "ALS"),
              (["--date", END, "--family", "'; DROP TABLE model_runs;--"], "DROP TABLE"),
              (["--date", END, "--family", "als", "--final"], "--final")],
    "evaluate": [(["--date", END, "--family", "bogus"], "bogus"), (["--date", END], "--family")],
    "promote": [],
    "publish": [(["--date", END, "--shard", "-1"], "-1"), (["--date", END, "--shard", "1"], "1"),
                (["--date", END, "--shard", "99999999999999999999"], "99999999999999999999"),
                (["--date", END, "--shard", "abc"], "abc"), (["--date", END, "--shard", "1e3"], "1e3"),
                (["--date", END, "--shard", "0", "--load"], "--load")],
    "rollback": [],
    "initdb": [],
    "schema": [(["--dialect", "mysql"], "mysql"), (["--dialect", "sqlite; DROP"], "sqlite; DROP")],
    "tune": [(["--date", END, "--family", "als", "--grid", "{bad"], "{bad"),
             (["--date", END, "--family", "als", "--grid", "[]"], "[]"),
             (["--date", END, "--family", "als", "--grid", '{"factors": []}'], "factors"),
             (["--date", END, "--family", "als", "--grid", '{"nope": [1]}'], "nope"),
             (["--date", END, "--family", "als", "--grid", '{"factors": ["x"]}'], "factors"),
             (["--date", END, "--family", "als", "--grid", '{"factors": [0]}'], "factors"),
             (["--date", END, "--family", "als", "--grid", '{"factors": [1e9]}'], "factors"),
             (["--date", END, "--family", "als", "--grid", LONG], LONG[:100]),
             (["--date", END, "--family", "bogus"], "bogus")],
    "settings": [],
    "guard": [(["wave", "--date", END], "wave"), (["allow", "--date", END, "--stage", "both"], "both"),
              (["allow", "--date", END, "--stage", ""], "''"),
              (["allow", "--date", END, "--set", "guard.min_volume_ratio=5"], "max_volume_ratio"),
              (["allow", "--date", END, "--set", "guard.max_new_share=-1"], "guard.max_new_share"),
              (["allow", "--date", END, "--set", "guard.min_trailing_nights=9"], "trailing_nights")],
}


def _cases() -> list:
    cases = []
    for name, sub in _subcommands().items():
        options = _options(sub)
        needs_family = ["--family", "popularity"] if "--family" in options and name != "train" else []
        dated_extra = (["--final"] if name == "train" else []) + needs_family
        if "--date" in options:
            required = next(a for a in sub._actions if "--date" in a.option_strings).required
            if required:
                cases.append(pytest.param([name, *dated_extra], "--date", id=f"{name}-no-date"))
            for value, needle in BAD_DATES:
                cases.append(pytest.param([name, "--date", value, *dated_extra], needle,
                                          id=f"{name}-date-{value[:20]!r}"))
        date = ["--date", END, *dated_extra] if "--date" in options else []
        if "--set" in options:
            for value, needle in BAD_SETS:
                cases.append(pytest.param([name, *date, "--set", value], needle, id=f"{name}-set-{value[:24]!r}"))
        cases.append(pytest.param([name, *date, "--bogus-flag"], "--bogus-flag", id=f"{name}-unknown-flag"))
        for args, needle in SPECIFIC[name]:
            cases.append(pytest.param([name, *args], needle, id=f"{name}-{' '.join(args)[:40]!r}"))
    for args, needle in SPECIFIC[""]:
        cases.append(pytest.param(args, needle, id=f"top-{args!r}"))
    return cases


def test_every_subcommand_has_hand_written_cases():
    # A new subcommand must say what its hostile arguments are (an empty list is a decision).
    assert set(SPECIFIC) - {""} == set(_subcommands())


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:  # noqa: ANN001
    """A home with the sample data ingested, a split for END, and popularity the only family."""
    from recjobs.ingest import ingest_inbox
    from recjobs.pipeline import engine_for, prepare

    home = tmp_path_factory.mktemp("cli") / "home"
    settings = load_settings({"home": str(home), "families": ["popularity"]}, environ={})
    write_inbox(settings.inbox, SMALL)
    engine = engine_for(settings)
    ingest_inbox(settings, engine)
    prepare(settings, END)
    engine.dispose()
    return home


def _state(home: Path) -> dict[str, object]:
    """Every table's rows and every file under home (size and modification time)."""
    engine = sa.create_engine(f"sqlite:///{home / 'recjobs.db'}")
    try:
        with engine.connect() as conn:
            tables = {t: conn.execute(sa.text(f'SELECT * FROM "{t}"')).all()
                      for t in sa.inspect(conn).get_table_names()}
    finally:
        engine.dispose()
    files = {str(p.relative_to(home)): (p.stat().st_size, p.stat().st_mtime_ns)
             for p in home.rglob("*") if p.is_file() and not p.name.startswith("recjobs.db")}
    return {"tables": tables, "files": files}


@pytest.fixture
def cli_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECJOBS_HOME", str(home))
    monkeypatch.setenv("RECJOBS_FAMILIES", '["popularity"]')
    return home


@pytest.mark.parametrize(("argv", "needle"), _cases())
def test_bad_arguments_are_one_line_naming_them_and_write_nothing(argv, needle, cli_env, capsys):
    before = _state(cli_env)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code not in (0, None), (argv, out, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and "unexpected" not in err, err
    assert needle in err, (needle, err)
    assert out == "", out
    assert _state(cli_env) == before


def test_a_bad_family_writes_no_model_runs_row(home):
    # The restructure resolves the family before the 'training' row is written; the library says so too.
    from recjobs.errors import ModelError
    from recjobs.pipeline import engine_for, train_candidate

    settings = load_settings({"home": str(home), "families": ["popularity"]}, environ={})
    engine = engine_for(settings)
    try:
        before = _state(home)
        with pytest.raises(ModelError, match="bogus"):
            train_candidate(settings, engine, END, "bogus")
        assert _state(home) == before
    finally:
        engine.dispose()


def _script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECJOBS_")}
    return subprocess.run([RECJOBS, *args], env={**base, **env}, capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    # Progress logs (timestamped) may come first; what remains must be the one error line.
    return [line for line in stderr.splitlines() if not line[:4].isdigit()]


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["train", "--date", END, "--family", "bogus"], {}, "bogus"),
    (["tune", "--date", END, "--family", "als", "--grid", "{bad"], {}, "{bad"),
    (["split", "--date", END, "--set", "split.protocol=global_time", "--set", "split.holdout_days=1000"], {},
     "split.holdout_days"),
    (["initdb"], {"RECJOBS_DATABASE_URL": "notaurl"}, "RECJOBS_DATABASE_URL"),
    (["initdb"], {"RECJOBS_DATABASE_URL": "nosuchdb+driver://u:Pw1@h/db"}, "RECJOBS_DATABASE_URL"),
    (["settings"], {"RECJOBS_DATABASE_URL": "postgresql://bob:Pw1@h:port/db"}, "RECJOBS_DATABASE_URL"),
    (["publish", "--date", END, "--set", "publish.top_n=1e9"], {}, "publish.top_n"),
])
def test_the_console_script_answers_bad_arguments_in_one_line(args, env, needle, home):
    before = _state(home)
    out = _script({"RECJOBS_HOME": str(home), "RECJOBS_FAMILIES": '["popularity"]', **env}, *args)
    assert out.returncode != 0
    lines = _error_lines(out.stderr)
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr and "unexpected" not in out.stderr and "Pw1" not in out.stderr
    assert _state(home) == before


# -- an unreachable database (defect 27) ---------------------------------------------------------------
@pytest.mark.parametrize("command", [["initdb"], ["ingest"], ["run", "--date", END], ["rollback"],
                                     ["promote", "--date", END]])
def test_an_unreachable_database_is_one_line_naming_it_masked(command, home):
    url = f"postgresql+psycopg://bob:Sup3rSecret@127.0.0.1:{_free_port()}/recs"
    out = _script({"RECJOBS_HOME": str(home), "RECJOBS_DATABASE_URL": url, "RECJOBS_FAMILIES": '["popularity"]'},
                  *command)
    assert out.returncode == 1, out.stderr
    lines = _error_lines(out.stderr)
    assert len(lines) == 1 and "Traceback" not in out.stderr and "Sup3rSecret" not in out.stderr, out.stderr
    assert "postgresql+psycopg://bob:***@127.0.0.1" in lines[0] and "refused" in lines[0], lines[0]


def test_a_connection_lost_in_a_later_statement_is_one_line_naming_the_database(postgres_url, tmp_path):
    # The schema check succeeds; the first INSERT kills its own connection (as a server restart would).
    url = sa.engine.make_url(postgres_url).set(password="Sup3rSecret").render_as_string(hide_password=False)
    env = {"RECJOBS_HOME": str(tmp_path / "home"), "RECJOBS_DATABASE_URL": url}
    assert _script(env, "initdb").returncode == 0
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE FUNCTION die() RETURNS trigger AS $$ BEGIN "
                             "PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$ LANGUAGE plpgsql")
        conn.exec_driver_sql("CREATE TRIGGER die BEFORE INSERT ON model_runs FOR EACH ROW EXECUTE FUNCTION die()")
    engine.dispose()
    out = _script(env, "promote", "--date", END)
    assert out.returncode == 1
    lines = _error_lines(out.stderr)
    assert len(lines) == 1 and "Traceback" not in out.stderr and "Sup3rSecret" not in out.stderr, out.stderr
    masked = sa.engine.make_url(url).render_as_string(hide_password=True)
    assert masked in lines[0] and "terminating connection" in lines[0] and "unexpected" not in lines[0], lines[0]
    assert "[SQL:" not in lines[0] and len(lines[0]) < 500, lines[0]
