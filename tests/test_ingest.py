"""Ingest on real files into real Parquet: formats, bad input, idempotence."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recjobs import columns as C
from recjobs.data import Lake
from recjobs.ingest import IngestError, ingest_file, ingest_inbox
from recjobs.runs import cutoff_of

FAR = cutoff_of(pd.Timestamp("2030-01-01").date())


def lake_rows(settings) -> pd.DataFrame:  # noqa: ANN001
    return Lake.of(settings).read_ratings(FAR)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def lake_digest(settings) -> dict[str, str]:  # noqa: ANN001
    return {
        str(p.relative_to(Lake.of(settings).ratings)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Lake.of(settings).ratings.rglob("*.parquet"))
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
    parts = sorted(p.parent.name for p in Lake.of(settings).ratings.rglob("part-0.parquet"))
    assert parts == ["dt=1997-12-04", "dt=1998-04-04", "dt=2024-03-01", "dt=2024-03-02"]
    # The ISO timestamp and the Unix one name the same instant on 2024-03-01.
    day = pq.read_table(Lake.of(settings).ratings / "dt=2024-03-01" / "part-0.parquet").to_pandas()
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
    # PostgreSQL's text cannot hold U+0000: refused at ingest on every database.
    "NUL in a user id": ("zz\x00,5,4,881250949", "user_id contains a NUL character (U+0000)"),
    "NUL in a quoted item id": ('1,"i\x00",4,881250949', "item_id contains a NUL character (U+0000)"),
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
    # Recorded as rejected: a retry of the same content under the same settings is skipped
    # with the earlier reason (so the inbox does not fail on it every night); forced, it is
    # validated again (and rejected again); under other settings it is judged afresh.
    again = ingest_file(path, settings, engine)
    assert again.skipped and again.status == "rejected" and "2 of 4 rows invalid" in again.reason
    assert lake_rows(settings).empty
    with pytest.raises(IngestError, match="2 of 4 rows invalid"):
        ingest_file(path, settings, engine, force=True)
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
    assert (Lake.of(settings).features / "item_features.parquet").exists()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM items").scalar_one() == 80


# -- issue 8: real-world input ------------------------------------------------------


def test_excel_export_with_bom_quoted_header_and_crlf_ingests(settings, engine, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b'\xef\xbb\xbf"user_id","item_id","rating","timestamp"\r\n'
                     b'"1","10","4","881250949"\r\n"2","10","3","881250950"\r\n')
    report = ingest_file(path, settings, engine)
    assert (report.rows_read, report.rows_valid, report.rows_quarantined) == (2, 2, 0)
    rows = lake_rows(settings).sort_values(C.USER)
    assert rows[C.USER].tolist() == ["1", "2"] and rows[C.ITEM].tolist() == ["10", "10"]


def test_malformed_lines_are_quarantined_with_their_line_numbers(settings, engine, tmp_path):
    good = [f"{u},{i},3,{881250949 + u * 1000 + i}" for u in range(1, 21) for i in range(1, 11)]
    lines = good[:50] + ["1,5,4,881250949,extra"] + good[50:120] + ["2,5"] + good[120:]
    # A quoted field spanning two lines is one record, numbered by its first line.
    lines.insert(10, '"multi\nline",7,4,881250949')
    path = write(tmp_path / "ragged.csv", "user_id,item_id,rating,timestamp\n" + "\n".join(lines) + "\n")
    settings.ingest.max_invalid_share = 0.05
    settings.ingest.batch_rows = 16  # several batches: line numbers must carry across them
    report = ingest_file(path, settings, engine)
    assert (report.rows_read, report.rows_valid, report.rows_quarantined) == (203, 201, 2)
    bad = pd.read_parquet(report.quarantine_path)
    assert bad[C.SOURCE_ROW].tolist() == [54, 125]  # header is line 1, the quoted record 2 lines
    assert bad[C.REASON].tolist() == ["expected 4 fields, found 5", "expected 4 fields, found 2"]
    text = path.read_text().split("\n")
    assert text[54 - 1] == "1,5,4,881250949,extra" and text[125 - 1] == "2,5"
    assert "multi\nline" in set(lake_rows(settings)[C.USER])


def test_malformed_lines_count_towards_the_invalid_share(settings, engine, tmp_path):
    rows = ["1,5,4,881250949", "1,6,4,881250949,x,y", "2,5", "3,7,4,881250950"]
    path = write(tmp_path / "ragged.csv", "user_id,item_id,rating,timestamp\n" + "\n".join(rows) + "\n")
    with pytest.raises(IngestError, match=r"ragged.csv: 2 of 4 rows invalid.*expected 4 fields"):
        ingest_file(path, settings, engine)


def test_sub_millisecond_timestamps_are_truncated_to_milliseconds(settings, engine, tmp_path):
    csv = write(tmp_path / "fine.csv", "user_id,item_id,rating,timestamp\n"
                "1,1,4,1767225600.1\n1,2,4,2026-01-01T00:00:00.123456Z\n1,3,4,1767225600.9999999\n"
                "1,4,4,2026-01-01T00:00:00.123456789+00:00\n")
    ingest_file(csv, settings, engine)
    for unit, item in (("us", "5"), ("ns", "6")):
        table = pa.table({C.USER: ["1"], C.ITEM: [item], C.RATING: [4.0],
                          C.TIMESTAMP: pa.array([1767225600_123456789 // (1000 if unit == "us" else 1)],
                                                pa.timestamp(unit, tz="UTC"))})
        pq.write_table(table, tmp_path / f"fine_{unit}.parquet")
        assert ingest_file(tmp_path / f"fine_{unit}.parquet", settings, engine).rows_valid == 1
    rows = lake_rows(settings).set_index(C.ITEM)[C.TIMESTAMP]
    ms = {k: int(v.value // 1_000_000) for k, v in rows.items()}
    assert ms == {"1": 1767225600_100, "2": 1767225600_123, "3": 1767225600_999,
                  "4": 1767225600_123, "5": 1767225600_123, "6": 1767225600_123}


def test_ids_are_kept_as_given(settings, engine, tmp_path):
    csv = write(tmp_path / "ids.csv", "user_id,item_id,rating,timestamp\n"
                'NA,null,4,881250949\n" 7 ",x,4,881250949\n 8 ,x,4,881250949\n7.0,x,4,881250949\n')
    assert ingest_file(csv, settings, engine).rows_quarantined == 0
    floats = pd.DataFrame({C.USER: [7.0, 7.5, 1e20], C.ITEM: pd.array([1, 2, 3], dtype="int64"),
                           C.RATING: [4.0, 4.0, 4.0], C.TIMESTAMP: [881250949] * 3})
    floats.to_parquet(tmp_path / "floats.parquet")
    assert ingest_file(tmp_path / "floats.parquet", settings, engine).rows_quarantined == 0
    rows = lake_rows(settings)
    assert set(zip(rows[C.USER], rows[C.ITEM], strict=True)) == {
        ("NA", "null"), (" 7 ", "x"), ("8", "x"), ("7.0", "x"),  # CSV text: as written
        ("7", "1"), ("7.5", "2"), ("100000000000000000000", "3"),  # Parquet numbers
    }


def test_only_truly_empty_ids_are_invalid(settings, engine, tmp_path):
    frame = pd.DataFrame({C.USER: [None, "1", float("nan")], C.ITEM: ["1", "", "2"],
                          C.RATING: [4.0] * 3, C.TIMESTAMP: [881250949] * 3})
    frame[C.USER] = frame[C.USER].astype(object)
    frame.to_parquet(tmp_path / "holes.parquet")
    settings.ingest.max_invalid_share = 1.0
    report = ingest_file(tmp_path / "holes.parquet", settings, engine)
    bad = pd.read_parquet(report.quarantine_path)
    assert bad[C.REASON].tolist() == ["empty user_id", "empty item_id", "empty user_id"]
    assert bad[C.SOURCE_ROW].tolist() == [1, 2, 3]  # Parquet: 1-based row numbers


def test_native_movielens_20m_csv_and_1m_dat(settings, engine, tmp_path):
    ml20 = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n")
    ml1 = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n2::661::3::978302109\n")
    assert ingest_file(ml20, settings, engine).rows_valid == 1
    assert ingest_file(ml1, settings, engine).rows_valid == 2
    rows = lake_rows(settings)
    assert set(zip(rows[C.USER], rows[C.ITEM], strict=True)) == {("1", "296"), ("1", "1193"), ("2", "661")}


def test_column_mapping_for_csv_and_parquet_and_default_rating(settings, engine, tmp_path):
    csv = write(tmp_path / "shop.csv", "customer,sku,stars,when\nc1,s1,4,2026-01-01T00:00:00Z\n")
    with pytest.raises(IngestError, match=r"shop.csv: missing required columns"):
        ingest_file(csv, settings, engine)
    settings.ingest.columns = {C.USER: "customer", C.ITEM: "sku", C.RATING: "stars", C.TIMESTAMP: "when"}
    assert ingest_file(csv, settings, engine, force=True).rows_valid == 1
    # Event data: no rating column at all; every event gets ingest.default_rating.
    pd.DataFrame({"customer": ["c2"], "sku": ["s2"], "when": [1767225600]}).to_parquet(tmp_path / "ev.parquet")
    settings.ingest.columns = {C.USER: "customer", C.ITEM: "sku", C.TIMESTAMP: "when"}
    with pytest.raises(IngestError, match=r"ev.parquet: missing required columns \['rating'\]"):
        ingest_file(tmp_path / "ev.parquet", settings, engine)
    settings.ingest.default_rating = 1.0
    assert ingest_file(tmp_path / "ev.parquet", settings, engine, force=True).rows_valid == 1
    rows = lake_rows(settings).set_index(C.USER)
    assert rows.loc["c1", C.RATING] == 4.0 and rows.loc["c2", C.RATING] == 1.0
    settings.ingest.columns = {C.USER: "nope"}
    with pytest.raises(IngestError, match=r"ev.parquet: column 'nope', mapped to user_id"):
        ingest_file(tmp_path / "ev.parquet", settings, engine, force=True)


def test_default_rating_and_column_mapping_settings_are_checked():
    from recjobs.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="default_rating 9 is outside"):
        load_settings({"ingest": {"default_rating": 9}}, environ={})
    with pytest.raises(SettingsError, match=r"unknown columns \['user'\]"):
        load_settings({"ingest": {"columns": {"user": "customer"}}}, environ={})


def test_cli_columns_option_maps_columns(settings, tmp_path, monkeypatch, capsys):
    from recjobs.cli import main

    monkeypatch.setenv("RECJOBS_HOME", str(settings.home))
    csv = write(tmp_path / "shop.csv", "customer,sku,stars,when\nc1,s1,4,1767225600\n")
    assert main(["ingest", "--columns", "user_id=customer,item_id=sku,rating=stars,timestamp=when",
                 str(csv)]) == 0
    assert "1 valid" in capsys.readouterr().out
    assert lake_rows(settings)[C.USER].tolist() == ["c1"]
    assert main(["ingest", "--columns", "user_id", str(csv)]) == 2
    assert "--columns expects" in capsys.readouterr().err


# -- issue 8: failures in the inbox ----------------------------------------------------


def test_every_inbox_file_is_attempted_and_failures_are_named(settings, engine, tmp_path):
    inbox = settings.inbox
    inbox.mkdir(parents=True)
    (inbox / "a_corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    write(inbox / "b_fine.csv", "user_id,item_id,rating,timestamp\n1,1,4,1767225600.1234\n")
    write(inbox / "c_good.csv", "user_id,item_id,rating,timestamp\n2,2,4,1767225600\n")
    with pytest.raises(IngestError) as err:
        ingest_inbox(settings, engine)
    assert "a_corrupt.parquet: not a readable Parquet file" in str(err.value)
    assert "b_fine" not in str(err.value) and "c_good" not in str(err.value)
    assert sorted(lake_rows(settings)[C.USER]) == ["1", "2"]


def test_rejected_inbox_file_is_skipped_later_with_its_reason_until_forced(settings, engine, caplog):
    inbox = settings.inbox
    inbox.mkdir(parents=True)
    bad = write(inbox / "bad.csv", "user_id,item_id,rating,timestamp\n1,1,4,881250949\n1,2,99,881250949\n")
    write(inbox / "good.csv", "user_id,item_id,rating,timestamp\n2,2,4,881250949\n")
    with pytest.raises(IngestError, match=r"bad.csv: 1 of 2 rows invalid"):
        ingest_inbox(settings, engine)
    with engine.connect() as conn:
        status = dict(conn.exec_driver_sql("SELECT source_path, status FROM ingest_log").all())
    assert status == {str(bad): "rejected", str(inbox / "good.csv"): "ingested"}
    # The next night: no failure, a warning naming the file and the earlier reason.
    caplog.clear()
    reports = ingest_inbox(settings, engine)
    assert all(r.skipped for r in reports)
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "bad.csv: rejected on an earlier run" in warning[0]
    assert "1 of 2 rows invalid" in warning[0] and "--force" in warning[0]
    assert sorted(lake_rows(settings)[C.USER]) == ["2"]
    # A corrected delivery (new content) is ingested; so is the old content when forced.
    write(inbox / "bad.csv", "user_id,item_id,rating,timestamp\n1,1,4,881250949\n1,2,5,881250949\n")
    assert [r.rows_valid for r in ingest_inbox(settings, engine) if not r.skipped] == [2]
    assert len(lake_rows(settings)) == 3


# -- issue 7: streaming ingest at scale ------------------------------------------------


def _partitions(settings) -> dict[str, pa.Table]:  # noqa: ANN001
    return {p.parent.name: pq.read_table(p) for p in sorted(Lake.of(settings).ratings.rglob("part-0.parquet"))}


def _home(tmp_path, name):  # noqa: ANN001, ANN202
    """A second, independent home (settings and engine) to compare lakes."""
    from recjobs.pipeline import engine_for
    from recjobs.settings import load_settings

    other = load_settings({"home": str(tmp_path / name)}, environ={})
    return other, engine_for(other)


def test_vectorised_and_exact_validation_give_the_same_lake(settings, engine, tmp_path):
    # Plain lines take the Arrow path; the same values quoted take the per-line path
    # and pandas validation. Both must store exactly the same rows.
    ratings = ["0.5", "1", "2.25", "3.5", "4.0", "5", "05", "4.333333", "1.1", "2.7"]
    rows = [(f"u{n % 7}", f"i{n}", ratings[n % len(ratings)], str(881250949 + n * 7919))
            for n in range(300)]
    plain = write(tmp_path / "plain.csv", HEADER_LINE + "".join(",".join(r) + "\n" for r in rows))
    quoted = write(tmp_path / "quoted.csv",
                   HEADER_LINE + "".join(",".join(f'"{v}"' for v in r) + "\n" for r in rows))
    other, other_engine = _home(tmp_path, "quoted_home")
    a = ingest_file(plain, settings, engine)
    b = ingest_file(quoted, other, other_engine)
    assert (a.rows_valid, a.duplicates_dropped) == (b.rows_valid, b.duplicates_dropped) == (300, 0)
    left, right = _partitions(settings), _partitions(other)
    assert left.keys() == right.keys() and len(left) > 10
    assert all(left[k].equals(right[k]) for k in left)


HEADER_LINE = "user_id,item_id,rating,timestamp\n"


def test_small_batches_and_merge_groups_give_the_same_lake_and_report(settings, engine, tmp_path):
    # Many days, duplicates inside the file across batches (the later line wins), and
    # rows already in the lake: spilling in tiny runs and merging a few rows at a time
    # must give what one big batch gives.
    lines = [f"u{n % 13},i{n % 17},{1 + n % 5},{881250949 + (n % 40) * 86400 + n % 3}" for n in range(400)]
    lines += [f"u{n % 13},i{n % 17},0.5,{881250949 + (n % 40) * 86400 + n % 3}" for n in range(0, 400, 9)]
    path = write(tmp_path / "many.csv", HEADER_LINE + "\n".join(lines) + "\n")
    seed = write(tmp_path / "seed.csv", HEADER_LINE + "\n".join(lines[::5]) + "\n")
    other, other_engine = _home(tmp_path, "small_home")
    other.ingest.batch_rows = 7
    other.ingest.merge_rows = 3
    reports = []
    for s, e in ((settings, engine), (other, other_engine)):
        ingest_file(seed, s, e)
        reports.append(ingest_file(path, s, e))
    big, small = reports
    assert (big.rows_read, big.rows_valid, big.duplicates_dropped, big.partitions) == (
        small.rows_read, small.rows_valid, small.duplicates_dropped, small.partitions)
    left, right = _partitions(settings), _partitions(other)
    assert left.keys() == right.keys() and len(left) == 40
    assert all(left[k].equals(right[k]) for k in left)
    rows = lake_rows(other)
    assert not rows.duplicated([C.USER, C.ITEM, C.TIMESTAMP]).any()
    # The re-rated rows (later lines) won over the earlier ones and over the lake's.
    assert (rows[C.RATING] == 0.5).sum() == len(range(0, 400, 9))
    assert not any((other.lake / ".spill").iterdir())  # the spill is cleaned up


def test_stale_spill_of_a_killed_ingest_is_removed_and_a_live_one_kept(settings, engine, tmp_path):
    import filelock

    spill = settings.lake / ".spill"
    (spill / "dead").mkdir(parents=True)
    (spill / "dead" / "run-000000.arrow").write_bytes(b"x" * 100)
    (spill / "dead.lock").touch()  # its owner died: nobody holds the lock
    (spill / "live").mkdir()
    live = filelock.FileLock(spill / "live.lock")
    live.acquire()
    try:
        path = write(tmp_path / "r.csv", HEADER_LINE + "1,1,4,881250949\n")
        ingest_file(path, settings, engine)
        assert sorted(p.name for p in spill.iterdir()) == ["live", "live.lock"]
    finally:
        live.release()


def test_long_steps_log_progress_with_rate_and_eta(settings, engine, tmp_path, caplog):
    # ~0.5 MB: several 64 KiB text blocks (the smallest batch), ~140 days.
    lines = [f"u{n},i{n % 50},4,{881250949 + n * 600}" for n in range(20_000)]
    path = write(tmp_path / "long.csv", HEADER_LINE + "\n".join(lines) + "\n")
    settings.ingest.batch_rows = 100
    settings.ingest.merge_rows = 100
    settings.ingest.progress_seconds = 1e-6  # every batch / partition: a long file in small
    caplog.set_level("INFO", logger="recjobs.ingest")
    ingest_file(path, settings, engine)
    messages = [r.getMessage() for r in caplog.records]
    validating = [m for m in messages if "long.csv: validating:" in m]
    merging = [m for m in messages if "long.csv: merging:" in m]
    assert len(validating) >= 5 and len(merging) >= 5
    assert all("rows/s" in m and "ETA" in m for m in validating + merging)
    assert "rows validated" in validating[-1] and "partitions merged" in merging[-1]


# -- issue 16: trust, round two --------------------------------------------------------


def _numbered_rows(n: int, special: dict[int, str] | None = None) -> list[str]:
    """``n`` data rows ``u<k>,i<k>,3,<ts>``; ``special`` replaces the item of row k (1-based)."""
    special = special or {}
    return [f"u{k},{special.get(k, f'i{k}')},3,{881250949 + k}" for k in range(1, n + 1)]


@pytest.mark.parametrize("batch_rows", [1_000_000, 16])
def test_a_quote_inside_an_unquoted_field_is_text_and_swallows_nothing(settings, engine, tmp_path, batch_rows):
    # Issue 16 #1: row 900's `LP 12" vinyl` used to open a quoted field that swallowed
    # the next 99 lines; stray quotes on rows 100 and 900 lost 800 rows.
    settings.ingest.batch_rows = batch_rows
    one = write(tmp_path / "one.csv", HEADER_LINE + "\n".join(_numbered_rows(1000, {900: 'LP 12" vinyl'})) + "\n")
    report = ingest_file(one, settings, engine)
    assert (report.rows_read, report.rows_valid, report.rows_quarantined) == (1000, 1000, 0)
    two = write(tmp_path / "two.csv", HEADER_LINE + "\n".join(
        _numbered_rows(1000, {100: 'say "hi', 900: '12" x 8"'})).replace("u", "w") + "\n")
    report = ingest_file(two, settings, engine)
    assert (report.rows_read, report.rows_valid, report.rows_quarantined) == (1000, 1000, 0)
    rows = lake_rows(settings)
    assert len(rows) == 2000
    items = set(rows[C.ITEM])
    assert {'LP 12" vinyl', 'say "hi', '12" x 8"'} <= items


def test_a_quote_that_opens_a_field_and_never_closes_counts_every_line_it_took(settings, engine, tmp_path):
    # A quote that does open a field runs on, as in Python's csv module; if it never
    # closes, every line it took is quarantined, so the invalid share sees them all.
    lines = _numbered_rows(1000)
    lines[899] = 'u900,"LP 12 vinyl,3,881250949'
    path = write(tmp_path / "open.csv", HEADER_LINE + "\n".join(lines) + "\n")
    settings.ingest.max_invalid_share = 0.5
    report = ingest_file(path, settings, engine)
    assert (report.rows_read, report.rows_valid, report.rows_quarantined) == (1000, 899, 101)
    bad = pd.read_parquet(report.quarantine_path)
    assert bad[C.SOURCE_ROW].tolist() == list(range(901, 1002))
    assert set(bad[C.REASON]) == {"unterminated quote"}


def test_a_quoted_field_may_span_lines_and_keeps_crlf_inside_it(settings, engine, tmp_path):
    path = tmp_path / "multi.csv"
    path.write_bytes(HEADER_LINE.encode() + b'"a\r\nb","x "" y",4,881250949\r\n'
                     b'"c\n\nd",z,4,881250950\r\nplain,q,4,881250951\r\n')
    report = ingest_file(path, settings, engine)
    assert (report.rows_read, report.rows_valid, report.rows_quarantined) == (3, 3, 0)
    rows = lake_rows(settings)
    assert set(zip(rows[C.USER], rows[C.ITEM], strict=True)) == {
        ("a\r\nb", 'x " y'), ("c\n\nd", "z"), ("plain", "q")}


def test_a_quote_left_open_for_a_megabyte_is_cut_off_and_reading_starts_afresh(settings, engine, tmp_path):
    from recjobs.ingest._text import MAX_QUOTED_CHARS

    line = "u{0},i{0},3,881250949"
    n = MAX_QUOTED_CHARS // len(line.format(500_000)) + 50_000
    path = write(tmp_path / "stray.csv", HEADER_LINE + 'u0,"open,3,881250949\n'
                 + "\n".join(line.format(k) for k in range(1, n)) + "\n")
    settings.ingest.max_invalid_share = 1.0
    report = ingest_file(path, settings, engine)
    assert report.rows_read == n  # every line is accounted for
    bad = pd.read_parquet(report.quarantine_path, columns=[C.SOURCE_ROW, C.REASON])
    cut = int(bad[C.SOURCE_ROW].max())
    assert bad[C.SOURCE_ROW].tolist() == list(range(2, cut + 1)) and set(bad[C.REASON]) == {"unterminated quote"}
    assert report.rows_valid == n + 1 - cut > 40_000  # the lines after the cut are read as records


def test_a_tsv_whose_header_names_no_known_column_is_refused_not_read_as_u_data(settings, engine, tmp_path):
    # Issue 16 #7: it was read as headerless u.data (users and items swapped, the header
    # quarantined). A file without a header must look like u.data: numbers for rating and time.
    path = write(tmp_path / "swapped.tsv", "item\tuser\tscore\twhen\n10\t1\t4\t881250949\n")
    with pytest.raises(IngestError, match=r"swapped.tsv: missing required columns") as err:
        ingest_file(path, settings, engine)
    assert "u.data" in str(err.value)
    assert lake_rows(settings).empty
    dat = write(tmp_path / "named.dat", "movie::person::stars::when\n10::1::4::881250949\n")
    with pytest.raises(IngestError, match=r"named.dat: missing required columns"):
        ingest_file(dat, settings, engine)
    # Headerless MovieLens files still read, ISO times included; a mapped header is a header.
    assert ingest_file(write(tmp_path / "u.data", "1\t10\t4\t881250949\n2\t10\t3.5\t2024-03-01T10:00:00Z\n"),
                       settings, engine).rows_valid == 2
    settings.ingest.columns = {C.USER: "user", C.ITEM: "item", C.RATING: "score", C.TIMESTAMP: "when"}
    assert ingest_file(path, settings, engine, force=True).rows_valid == 1
    rows = lake_rows(settings)
    assert ("1", "10") in set(zip(rows[C.USER], rows[C.ITEM], strict=True))


@pytest.mark.parametrize(
    ("header", "columns"),
    [("user_id,item_id,rating,timestamp,feature", {}),
     ("user_id,item_id,stars,timestamp,title", {C.RATING: "stars"}),
     ("userId,movieId,rating,timestamp,title", {})],
)
def test_a_ratings_file_with_an_extra_side_column_is_a_ratings_file(settings, engine, tmp_path, header, columns):
    # Issue 16 #2: one extra column named like a side file's made it a side file: no
    # ratings landed, the side table was overwritten and the hash recorded.
    from recjobs.ingest import sniff_kind

    settings.ingest.columns = columns
    settings.inbox.mkdir(parents=True)
    path = write(settings.inbox / "ratings.csv", header + "\n1,10,4,881250949,x\n2,11,5,881250950,y\n")
    reports = ingest_inbox(settings, engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT kind FROM ingest_log").scalars().all() == ["ratings"]
    assert [r.rows_valid for r in reports] == [2]
    assert sorted(lake_rows(settings)[C.USER]) == ["1", "2"]
    assert not list(Lake.of(settings).features.glob("*.parquet"))
    assert sniff_kind(path, settings) == "ratings"


def test_side_files_are_still_told_apart_by_their_columns(tmp_path):
    from recjobs.ingest import sniff_kind

    cases = {"item_id,feature\n": "item_features", "user_id,feature,weight\n": "user_features",
             "item_id,title\n": "items", "user_id,item_id,rating,timestamp\n": "ratings",
             "1\t10\t4\t881250949\n": "ratings"}
    for n, (text, kind) in enumerate(cases.items()):
        assert sniff_kind(write(tmp_path / f"f{n}.csv", text)) == kind, text


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_duplicate_column_name_is_refused_by_name_and_the_inbox_goes_on(settings, engine, fmt):
    # Issue 16 #12: a Parquet file with a duplicate column crashed with KeyError, aborted
    # the inbox (later files not ingested) and was not recorded, so it failed every night.
    inbox = settings.inbox
    inbox.mkdir(parents=True)
    names = [C.USER, C.ITEM, C.RATING, C.TIMESTAMP, C.USER]
    if fmt == "parquet":
        table = pa.Table.from_arrays([pa.array(["1"]), pa.array(["2"]), pa.array([4.0]),
                                      pa.array([881250949]), pa.array(["9"])], names=names)
        pq.write_table(table, inbox / "a_dup.parquet")
    else:
        write(inbox / "a_dup.csv", ",".join(names) + "\n1,2,4,881250949,9\n")
    write(inbox / "b_good.csv", HEADER_LINE + "3,4,4,881250949\n")
    with pytest.raises(IngestError) as err:
        ingest_inbox(settings, engine)
    assert f"a_dup.{fmt}: column 'user_id' appears 2 times" in str(err.value)
    assert "b_good" not in str(err.value)
    assert lake_rows(settings)[C.USER].tolist() == ["3"]
    with engine.connect() as conn:
        status = dict(conn.exec_driver_sql("SELECT source_path, status FROM ingest_log").all())
    assert status == {str(inbox / f"a_dup.{fmt}"): "rejected", str(inbox / "b_good.csv"): "ingested"}
    # A duplicate the ingest does not read is no obstacle.
    table = pa.Table.from_arrays([pa.array(["5"]), pa.array(["6"]), pa.array([4.0]), pa.array([881250949]),
                                  pa.array([1]), pa.array([2])], names=[*names[:4], "x", "x"])
    pq.write_table(table, inbox / "c_extra.parquet")
    assert ingest_file(inbox / "c_extra.parquet", settings, engine).rows_valid == 1


def test_force_reads_a_side_file_again_and_its_hint_says_what_it_does(settings, tmp_path, monkeypatch, capsys):
    # Issue 16 #15: --force was ignored for side files, and the hint for a rejected file
    # said "ingest it anyway" (it is validated, and rejected, again).
    from recjobs.cli import main

    monkeypatch.setenv("RECJOBS_HOME", str(settings.home))
    old = write(tmp_path / "old_titles.csv", "item_id,title\n1,Old\n2,Two\n")
    new = write(tmp_path / "new_titles.csv", "item_id,title\n1,New\n")
    assert main(["ingest", str(old)]) == 0 and main(["ingest", str(new)]) == 0
    assert main(["ingest", str(old)]) == 0
    assert "already ingested" in capsys.readouterr().out
    assert main(["ingest", "--force", str(old)]) == 0
    assert "already ingested" not in capsys.readouterr().out
    titles = Lake.of(settings).read_side("items").set_index(C.ITEM)[C.TITLE].to_dict()
    assert titles == {"1": "Old", "2": "Two"}
    bad = write(tmp_path / "bad.csv", HEADER_LINE + "1,1,4,881250949\n1,2,99,881250949\n")
    assert main(["ingest", str(bad)]) == 1
    capsys.readouterr()
    assert main(["ingest", str(bad)]) == 0
    out = capsys.readouterr()
    hint = out.out + out.err
    assert "rejected on an earlier run" in hint and "anyway" not in hint
    assert f"`recjobs ingest --force {bad}` validates this content again" in hint
    assert main(["ingest", "--force", str(bad)]) == 1  # validated again: rejected again
    assert "1 of 2 rows invalid" in capsys.readouterr().err


def test_a_rejection_caused_by_settings_is_retried_once_the_settings_change(settings, engine):
    # Issue 16 #23: a file rejected under a wrong setting (every rating above a mistyped
    # rating_max) stayed rejected after the setting was fixed.
    from recjobs.ingest import pending_inbox_files

    settings.inbox.mkdir(parents=True)
    path = write(settings.inbox / "r.csv", HEADER_LINE + "1,1,4,881250949\n1,2,5,881250949\n")
    settings.ingest.rating_max = 1.0
    with pytest.raises(IngestError, match="2 of 2 rows invalid"):
        ingest_inbox(settings, engine)
    assert pending_inbox_files(settings, engine, settle_seconds=0) == []
    assert all(r.skipped for r in ingest_inbox(settings, engine))  # same settings: still skipped
    settings.ingest.rating_max = 5.0
    assert pending_inbox_files(settings, engine, settle_seconds=0) == [path]
    reports = ingest_inbox(settings, engine)
    assert [(r.skipped, r.rows_valid) for r in reports] == [(False, 2)]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT status FROM ingest_log").scalars().all() == ["ingested"]
    assert len(lake_rows(settings)) == 2


def test_side_files_read_ids_by_the_ingest_rule(settings, engine, tmp_path):
    # Issue 16 #6 and #19: float ids from Parquet were stored as "239.0" (matching no
    # item), and CSV ids lost the spaces a quoted field keeps.
    from recjobs.ingest import ingest_side_file

    pq.write_table(pa.table({C.ITEM: pa.array([239.0, 7.5, 12.0]), C.FEATURE: ["genre=A", "genre=B", "genre=C"],
                             C.WEIGHT: [1.0, 2.0, 3.0]}), tmp_path / "item_features.parquet")
    ingest_side_file(tmp_path / "item_features.parquet", settings, engine)
    features = Lake.of(settings).read_side("item_features")
    assert sorted(features[C.ITEM]) == ["12", "239", "7.5"]
    titles = write(tmp_path / "titles.csv", 'item_id,title\n" pad item ",Padded\n 7 , Seven \n'
                   '"a,b","Quoted, ""with"" commas"\n"two\nlines",Multi\n')
    report = ingest_side_file(titles, settings, engine)
    assert (report.rows_read, report.rows_valid, report.rows_quarantined) == (4, 4, 0)
    stored = Lake.of(settings).read_side("items").set_index(C.ITEM)[C.TITLE].to_dict()
    assert stored == {" pad item ": "Padded", "7": "Seven", "a,b": 'Quoted, "with" commas', "two\nlines": "Multi"}
    with engine.connect() as conn:
        assert dict(conn.exec_driver_sql("SELECT item_id, title FROM items").all()) == stored
    pq.write_table(pa.table({C.ITEM: pa.array([3, None], pa.int64()), C.TITLE: ["Three", "No id"]}),
                   tmp_path / "titles.parquet")
    settings.ingest.max_invalid_share = 0.5
    report = ingest_side_file(tmp_path / "titles.parquet", settings, engine)
    assert (report.rows_valid, report.rows_quarantined) == (1, 1)
    assert Lake.of(settings).read_side("items").set_index(C.ITEM)[C.TITLE]["3"] == "Three"


def test_a_side_file_with_malformed_lines_quarantines_them_by_line(settings, engine, tmp_path):
    from recjobs.ingest import ingest_side_file

    lines = [f"i{k},genre=G{k % 3}" for k in range(200)]
    lines[50] = "i50,genre=x,1,extra"
    path = write(tmp_path / "item_features.csv", "item_id,feature\n" + "\n".join(lines) + "\n")
    report = ingest_side_file(path, settings, engine)
    assert (report.rows_read, report.rows_valid, report.rows_quarantined) == (200, 199, 1)
    bad = pd.read_parquet(report.quarantine_path)
    assert bad[C.SOURCE_ROW].tolist() == [52] and bad[C.REASON].tolist() == ["expected 2 fields, found 4"]


def test_a_weight_beyond_float32_is_quarantined_not_stored_as_inf(settings, engine, tmp_path):
    # Issue 16 #21: 1e39 is finite in float64 and inf in the float32 the side table holds.
    from recjobs.ingest import ingest_side_file

    lines = [f"i{k},genre=G,1.5" for k in range(200)] + ["i200,genre=G,1e39", "i201,genre=G,-3.5e38"]
    path = write(tmp_path / "item_features.csv", "item_id,feature,weight\n" + "\n".join(lines) + "\n")
    settings.ingest.max_invalid_share = 0.05
    report = ingest_side_file(path, settings, engine)
    assert (report.rows_valid, report.rows_quarantined) == (200, 2)
    bad = pd.read_parquet(report.quarantine_path)
    assert bad[C.SOURCE_ROW].tolist() == [202, 203]
    assert set(bad[C.REASON]) == {"weight is beyond float32's range"}
    stored = Lake.of(settings).read_side("item_features")
    assert np.isfinite(stored[C.WEIGHT].to_numpy()).all() and len(stored) == 200


def test_an_id_of_20000_characters_is_text_everywhere_without_fixed_width_arrays(settings, engine, tmp_path):
    # Issue 16 #13 (ingest's part): ids have no length limit; a fixed-width "<U20000"
    # array would cost 80 kB for every element of an id array.
    from recjobs.data import Interactions
    from recjobs.data.ids import load_ids, save_ids

    long_plain = "L" * 20_000
    long_quoted = "Q, \"" + "q" * 19_990 + "\"\n "
    csv = write(tmp_path / "long.csv", HEADER_LINE + f"{long_plain},i1,4,881250949\n"
                + '"' + long_quoted.replace('"', '""') + '",i2,4,881250950\nshort,i1,3,881250951\n')
    assert ingest_file(csv, settings, engine).rows_valid == 3
    pq.write_table(pa.table({C.USER: ["P" * 20_000], C.ITEM: ["i3"], C.RATING: [5.0], C.TIMESTAMP: [881250952]}),
                   tmp_path / "long.parquet")
    assert ingest_file(tmp_path / "long.parquet", settings, engine).rows_valid == 1
    assert set(lake_rows(settings)[C.USER]) == {long_plain, long_quoted, "short", "P" * 20_000}
    events = Lake.of(settings).read_events(FAR)
    assert events.user_ids.dtype == object and set(events.user_ids) >= {long_plain, long_quoted}
    data = Interactions.from_frame(lake_rows(settings))
    assert data.user_ids.dtype == object and long_quoted in set(data.user_ids)
    save_ids(tmp_path, "users", data.user_ids)
    assert load_ids(tmp_path, "users").tolist() == data.user_ids.tolist()
    assert (tmp_path / "users.data.npy").stat().st_size < 100_000  # the text once, not 4 x 20,000 x n


def test_import_movielens_writes_side_tables_only_under_the_lake_lock(settings, engine, tmp_path):
    # Issue 16 #11: the side files were rewritten without the lake's lock.
    import subprocess
    import sys

    from recjobs.ingest import import_movielens

    ml = tmp_path / "ml"
    ml.mkdir()
    write(ml / "u.data", "1\t10\t4\t881250949\n2\t11\t3\t881250950\n")
    genres = "|".join(["0"] * 19)
    (ml / "u.item").write_bytes(f"10|Film A (1995)|01-Jan-1995||http://x|{genres}\n"
                                f"11|Caf\xe9 (1996)|01-Jan-1996||http://y|{genres[:-1]}1\n".encode("latin-1"))
    write(ml / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    ingest_file(ml / "u.data", settings, engine)  # the ratings are in: only the side tables remain
    holder = subprocess.Popen(
        [sys.executable, "-c", "import filelock, sys; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
         "print('held', flush=True); sys.stdin.read()", str(settings.lake / ".lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        settings.ingest.lock_timeout_seconds = 0.5
        with pytest.raises(IngestError, match=r"ml: .*another writer held the lake's lock"):
            import_movielens(ml, settings, engine)
        assert not list(Lake.of(settings).features.glob("*.parquet"))
    finally:
        holder.communicate("")
    reports = import_movielens(ml, settings, engine)
    assert [r.skipped for r in reports] == [True, False, False, False]
    titles = Lake.of(settings).read_side("items").set_index(C.ITEM)[C.TITLE].to_dict()
    assert titles == {"10": "Film A (1995)", "11": "Caf\xe9 (1996)"}
