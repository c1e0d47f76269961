"""Ingest on real files into real Parquet: formats, bad input, idempotence."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recjobs import columns as C
from recjobs.ingest import IngestError, ingest_file, ingest_inbox
from recjobs.lake import read_ratings
from recjobs.pipeline import cutoff_of

FAR = cutoff_of(pd.Timestamp("2030-01-01").date())


def lake_rows(settings) -> pd.DataFrame:  # noqa: ANN001
    return read_ratings(settings.ratings_dir, FAR)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def lake_digest(settings) -> dict[str, str]:  # noqa: ANN001
    return {
        str(p.relative_to(settings.ratings_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(settings.ratings_dir.rglob("*.parquet"))
    }


def test_movielens_csv_and_parquet_inputs_land_in_daily_partitions(settings, engine, tmp_path):
    ml = write(tmp_path / "u.data", "1\t10\t4\t881250949\n2\t10\t3\t881250950\n1\t11\t5\t891717742\n")
    csv = write(tmp_path / "r.csv", "user_id,item_id,rating,timestamp,extra\n"
                "3,12,2.5,2024-03-01T10:00:00Z,x\n4,12,1,1709287200,y\n")
    frame = pd.DataFrame({C.USER: ["5"], C.ITEM: ["13"], C.RATING: [4.0],
                          C.TIMESTAMP: pd.to_datetime(["2024-03-02 08:00"], utc=True)})
    pq_path = tmp_path / "r.parquet"
    frame.to_parquet(pq_path)
    for path in (ml, csv, pq_path):
        report = ingest_file(path, settings, engine)
        assert report.rows_quarantined == 0
    rows = lake_rows(settings)
    assert len(rows) == 6
    assert set(rows[C.USER]) == {"1", "2", "3", "4", "5"}  # ids kept as strings
    parts = sorted(p.parent.name for p in settings.ratings_dir.rglob("part-0.parquet"))
    assert parts == ["dt=1997-12-04", "dt=1998-04-04", "dt=2024-03-01", "dt=2024-03-02"]
    # The ISO timestamp and the Unix one name the same instant on 2024-03-01.
    day = pq.read_table(settings.ratings_dir / "dt=2024-03-01" / "part-0.parquet").to_pandas()
    assert set(day[C.TIMESTAMP].dt.hour) == {10}


def test_reingesting_same_file_changes_nothing(settings, engine, small_inbox):
    ratings = small_inbox[0]
    first = ingest_file(ratings, settings, engine)
    before = lake_digest(settings)
    again = ingest_file(ratings, settings, engine)
    assert again.skipped and lake_digest(settings) == before
    # Even forced, de-duplication on (user, item, timestamp) leaves the same bytes.
    forced = ingest_file(ratings, settings, engine, force=True)
    assert forced.rows_valid == first.rows_valid
    assert lake_digest(settings) == before
    assert len(lake_rows(settings)) == first.rows_valid


BAD_ROWS = {
    "empty id": ("1,,4,881250949", "empty item_id"),
    "empty user": (",5,4,881250949", "empty user_id"),
    "wrong type": ("1,5,four,881250949", "rating is not a number"),
    "out of range": ("1,5,9,881250949", "rating outside [0.5, 5]"),
    "bad timestamp": ("1,5,4,yesterday", "timestamp is not Unix seconds or ISO 8601"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_are_quarantined_with_reason_and_valid_rows_kept(settings, engine, tmp_path, case):
    line, reason = BAD_ROWS[case]
    good = [f"{u},{i},3,{881250949 + u * 1000 + i}" for u in range(1, 21) for i in range(1, 11)]
    path = write(tmp_path / "in.csv", "user_id,item_id,rating,timestamp\n" + "\n".join(good[:100] + [line] + good[100:]) + "\n")
    settings.ingest.max_invalid_share = 0.05
    report = ingest_file(path, settings, engine)
    assert (report.rows_read, report.rows_valid, report.rows_quarantined) == (201, 200, 1)
    bad = pd.read_parquet(report.quarantine_path)
    assert bad[C.REASON].tolist() == [reason]
    assert bad[C.SOURCE_ROW].tolist() == [102]  # header is line 1, bad row is the 101st data row
    assert bad[C.SOURCE_FILE].tolist() == [str(path)]
    assert len(lake_rows(settings)) == 200


def test_too_many_invalid_rows_fails_naming_file_and_counts_and_ingests_nothing(settings, engine, tmp_path):
    rows = ["1,5,4,881250949", "1,6,9,881250949", "2,5,x,881250949", "3,7,4,881250950"]
    path = write(tmp_path / "bad.csv", "user_id,item_id,rating,timestamp\n" + "\n".join(rows) + "\n")
    with pytest.raises(IngestError) as err:
        ingest_file(path, settings, engine)
    message = str(err.value)
    assert str(path) in message and "2 of 4 rows invalid" in message and "max_invalid_share" in message
    assert lake_rows(settings).empty
    # Nothing recorded: fixing the threshold and retrying ingests the valid rows.
    settings.ingest.max_invalid_share = 0.6
    assert ingest_file(path, settings, engine).rows_valid == 2


def test_duplicate_rows_are_dropped_once(settings, engine, tmp_path):
    path = write(tmp_path / "dups.csv", "user_id,item_id,rating,timestamp\n"
                 "1,5,4,881250949\n1,5,4,881250949\n1,5,2,881250949\n1,5,4,881250999\n")
    report = ingest_file(path, settings, engine)
    assert report.duplicates_dropped == 2 and report.rows_valid == 2
    rows = lake_rows(settings).sort_values(C.TIMESTAMP)
    assert rows[C.RATING].tolist() == [2.0, 4.0]  # the last occurrence wins


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "file is empty"),
        ("user_id,item_id,rating,timestamp\n", "no data rows"),
        ("user_id,item_id,timestamp\n1,2,881250949\n", "missing required columns ['rating']"),
    ],
)
def test_unusable_files_fail_with_a_clear_message(settings, engine, tmp_path, content, expected):
    path = write(tmp_path / "f.csv", content)
    with pytest.raises(IngestError, match="f.csv") as err:
        ingest_file(path, settings, engine)
    assert expected in str(err.value)


def test_missing_path_and_missing_parquet_column(settings, engine, tmp_path):
    with pytest.raises(IngestError, match="no such file"):
        ingest_file(tmp_path / "nope.csv", settings, engine)
    pd.DataFrame({C.USER: ["1"], C.ITEM: ["2"]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(IngestError, match=r"x.parquet: missing required columns \['rating', 'timestamp'\]"):
        ingest_file(tmp_path / "x.parquet", settings, engine)


def test_inbox_ingests_ratings_and_side_files_once(settings, engine, small_inbox):
    reports = ingest_inbox(settings, engine)
    assert [Path(r.source_path).name for r in reports] == [
        "synthetic_item_features.csv", "synthetic_items.csv", "synthetic_ratings.csv"]
    assert not any(r.skipped for r in reports)
    assert all(r.skipped for r in ingest_inbox(settings, engine))
    assert (settings.features_dir / "item_features.parquet").exists()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM items").scalar_one() == 80
