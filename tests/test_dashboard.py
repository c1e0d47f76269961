"""The dashboard's data on a real database: what an operator reads off it."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from recjobs.dashboard import champion, ingest_by_date
from recjobs.db import ingest_log, model_runs, publications


def _gate(conn, day: str, family: str, status: str) -> None:  # noqa: ANN001
    conn.execute(model_runs.insert().values(run_date=day, family=family, model_version=f"{family}-{day}",
                                            stage="gate", status=status, created_at=dt.datetime.now(dt.UTC)))


def test_a_night_without_candidates_does_not_reset_champion_since(engine):
    with engine.begin() as conn:
        _gate(conn, "2026-01-01", "als", "promoted")
        _gate(conn, "2026-01-02", "-", "no_candidates")  # a failed night: the champion stays
        _gate(conn, "2026-01-03", "als", "champion_kept")
        conn.execute(publications.insert().values(
            kind="recommendations", run_date="2026-01-03", table_name="recommendations_v9",
            model_version="als-20260103-full-x", row_count=1, is_live=True, dropped=False,
            published_at=dt.datetime.now(dt.UTC)))
    champ = champion(engine)
    assert champ is not None and champ.family == "als" and champ.since == "2026-01-01"


def test_ingest_counts_show_rejected_files_apart_from_ingested_ones(engine):
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for digest, status, valid, bad in (("a", "ingested", 100, 0), ("b", "rejected", 0, 60)):
            conn.execute(ingest_log.insert().values(
                content_hash=digest, source_path=f"{digest}.csv", kind="ratings", rows_read=100,
                rows_valid=valid, rows_quarantined=bad, duplicates_dropped=0, ingested_at=now, status=status))
    frame = ingest_by_date(engine).set_index("status")
    assert frame.loc["ingested", "rows_valid"] == 100 and frame.loc["rejected", "files"] == 1
    assert frame.loc["rejected", "rows_quarantined"] == 60
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ingest_log)).scalar_one() == 2
