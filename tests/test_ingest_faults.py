"""Ingest under concurrency and crashes, with real `recjobs ingest` processes and real Airflow.

Crash points are reached through ``RECJOBS_FAULT_AT`` (recjobs/faults.py): the CLI
process kills itself with SIGKILL exactly there, as an OOM kill or a lost worker would.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recjobs import columns as C
from recjobs.data import Lake
from recjobs.pipeline import engine_for
from recjobs.runs import cutoff_of
from recjobs.settings import load_settings
from tests.conftest import AIRFLOW

# Real Airflow processes or crash-and-rerun loops: minutes, so outside the fast loop (-m 'not slow').
pytestmark = pytest.mark.slow

RECJOBS = Path(sys.executable).with_name("recjobs")
FAR = cutoff_of(pd.Timestamp("2030-01-01").date())
HEADER = "user_id,item_id,rating,timestamp\n"
DAY0 = 1767225600  # 2026-01-01T00:00:00Z


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECJOBS_", "AIRFLOW"))}
    return {**env, "RECJOBS_HOME": str(home), **extra}


def recjobs(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(RECJOBS), *args], env=_env(home, **extra), capture_output=True,
                          text=True, timeout=300)


def ratings_file(path: Path, users: list[str], days: int, per_day: int = 5) -> Path:
    lines = [f"{u},{i},{1 + (i % 5)},{DAY0 + d * 86400 + i * 60}"
             for u in users for d in range(days) for i in range(per_day)]
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


def lake(home: Path) -> pd.DataFrame:
    rows = Lake(home / "lake").read_ratings(FAR)
    return rows.sort_values([C.USER, C.ITEM, C.TIMESTAMP]).reset_index(drop=True)


def test_concurrent_ingests_into_the_same_days_keep_every_row(tmp_path):
    home = tmp_path / "home"
    assert recjobs(home, "initdb").returncode == 0
    a = ratings_file(tmp_path / "a.csv", [f"a{n}" for n in range(10)], days=3)
    b = ratings_file(tmp_path / "b.csv", [f"b{n}" for n in range(10)], days=3)
    # Widen the read-merge-write window of every partition so that, unserialised, both
    # processes would read a partition before either rewrote it (the last writer winning).
    env = _env(home, RECJOBS_FAULT_AT="lake.merge.before_write=pause:1.5")
    procs = [subprocess.Popen([str(RECJOBS), "ingest", str(p)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for p in (a, b)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    rows = lake(home)
    assert len(rows) == 2 * 10 * 3 * 5
    assert rows[C.USER].str[0].value_counts().to_dict() == {"a": 150, "b": 150}


def test_ingest_waits_for_a_locked_database_and_never_merges_without_its_log_row(tmp_path):
    # Issue 16 #5: beside a publish holding SQLite's write lock longer than the engine's
    # 60 s busy timeout, an ingest merged its rows, then died with "database is locked"
    # before writing ingest_log. It waits as for the lake's lock, and reserves its row first.
    home = tmp_path / "home"
    engine_for(load_settings({"home": str(home)}, environ={})).dispose()  # the schema, as initdb makes it
    path = ratings_file(tmp_path / "r.csv", ["a", "b"], days=2)
    partitions = home / "lake" / "ratings"
    holder = sqlite3.connect(home / "recjobs.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # what a publish holds while it loads and swaps
    try:
        # Locked past the ingest's wait: one line, and nothing merged.
        out = recjobs(home, "ingest", "--set", "ingest.lock_timeout_seconds=1", str(path))
        assert out.returncode == 1, out.stderr
        assert "stayed locked by another writer" in out.stderr and "ingest.lock_timeout_seconds" in out.stderr
        assert "Traceback" not in out.stderr
        assert not list(partitions.rglob("*.parquet"))
        # Locked for a while: it waits, still with nothing merged, until the lock goes.
        proc = subprocess.Popen([str(RECJOBS), "ingest", str(path)], env=_env(home), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # ends when the process does (the old code: after 60 s)
            seen.append(line)
            if "waiting for it" in line:
                break
        assert "waiting for it" in "".join(seen), "".join(seen)
        assert not list(partitions.rglob("*.parquet"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert len(lake(home)) == 2 * 2 * 5
    with sqlite3.connect(home / "recjobs.db") as conn:
        assert conn.execute("SELECT status, rows_valid FROM ingest_log").fetchall() == [("ingested", 20)]


POINTS = ["ingest.mid_validation", "lake.merge.before_write", "ingest.mid_merge", "ingest.before_log"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """Two files and the lake that ingesting both without faults gives."""
    base = tmp_path_factory.mktemp("reference")
    first = ratings_file(base / "first.csv", [f"u{n}" for n in range(8)], days=4)
    lines = ratings_file(base / "tmp.csv", [f"u{n}" for n in range(4, 12)], days=4).read_text()
    rows = lines.splitlines()
    # Overlap with the first file, a duplicate, and a few invalid rows (under the limit).
    rows += [rows[1], "u1,x,9,1767225600", "u2,y,4,not-a-time", "u3,z,4"]
    second = base / "second.csv"
    second.write_text("\n".join(rows) + "\n")
    home = base / "home"
    for path in (first, second):
        out = recjobs(home, "ingest", "--set", "ingest.max_invalid_share=0.05", str(path))
        assert out.returncode == 0, out.stderr
    return first, second, lake(home)


@pytest.mark.parametrize("point", POINTS)
def test_ingest_killed_at_any_point_then_rerun_has_every_valid_row_once(tmp_path, reference, point):
    first, second, expected = reference
    home = tmp_path / "home"
    opts = ["--set", "ingest.max_invalid_share=0.05", "--set", "ingest.batch_rows=40"]
    assert recjobs(home, "ingest", *opts, str(first)).returncode == 0
    killed = recjobs(home, "ingest", *opts, str(second), RECJOBS_FAULT_AT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert recjobs(home, "ingest", *opts, str(second)).returncode == 0
    # The killed run's spill folder (validated rows on disk) is gone after the rerun.
    assert not any((home / "lake" / ".spill").iterdir())
    rows = lake(home)
    assert not rows.duplicated([C.USER, C.ITEM, C.TIMESTAMP]).any()
    pd.testing.assert_frame_equal(rows, expected)
    # And the file is now known: a third run changes nothing.
    again = recjobs(home, "ingest", *opts, str(second))
    assert again.returncode == 0 and "already ingested" in again.stdout
    pd.testing.assert_frame_equal(lake(home), expected)




@pytest.mark.slow
def test_airflow_ingest_task_ingests_good_files_and_names_the_bad_one(airflow_env, tmp_path):
    home = tmp_path / "home"
    inbox = home / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "a_corrupt.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    (inbox / "b_fine.csv").write_text(HEADER + "1,1,4,1767225600.1234567\n1,2,4,2026-01-01T00:00:00.123456Z\n")
    (inbox / "c_good.csv").write_text(HEADER + "2,1,4,1767225600\n")
    out = subprocess.run([str(AIRFLOW), "tasks", "test", "recs_nightly", "ingest", "2026-02-01"],
                         env={**airflow_env, "RECJOBS_HOME": str(home)}, capture_output=True,
                         text=True, timeout=600)
    log = out.stdout + out.stderr
    # `airflow tasks test` exits 0 either way; the task's final state is in its log.
    assert "new_state=failed" in log and "new_state=success" not in log, log[-5000:]
    assert "a_corrupt.parquet: not a readable Parquet file" in log, log[-5000:]
    assert "b_fine.csv:" not in log.split("inbox files failed")[-1]  # only the bad file is named
    assert "parse_timestamps" not in log and "OutOfBounds" not in log
    rows = lake(home)
    assert sorted(zip(rows[C.USER], rows[C.ITEM], strict=True)) == [("1", "1"), ("1", "2"), ("2", "1")]
