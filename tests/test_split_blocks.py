"""The split in blocks of users writes byte for byte what the whole-window path wrote.

The split reads the lake a batch at a time with dictionary-encoded ids, orders the rows a
block of users at a time, in place, and streams each matrix to its files a block at a time
(recjobs.data.blocks), so that 200M rows fit in a task's memory. These tests split real
Parquet lakes (ratings, and typed events with ties and negatives) with blocks of a few rows,
and compare every file of the run folder with the files the former whole-window path
(one sort of the window, whole-array masks, ``Interactions.from_events`` and ``save``)
writes for the same lake.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recjobs import columns as C
from recjobs.data import blocks, interactions
from recjobs.data import split as data_split
from recjobs.data.feedback import apply_feedback
from recjobs.data.interactions import Events, Holdout, Interactions, ordered_by_user_time_item
from recjobs.data.lake import Lake, _window_table, read_events
from recjobs.data.split import global_cutoff
from recjobs.pipeline.split import _fingerprint, prepare
from recjobs.runs import RunFolder, cutoff_of, window
from recjobs.settings import Settings, load_settings

DAY = dt.date(2026, 1, 31)
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TYPES = ["view", "purchase", "click", "dislike", "add_to_cart"]


def _lake_rows(seed: int, typed: bool, n: int = 900) -> pd.DataFrame:
    """Rows over 30 days: repeated pairs, equal times (ties) and, typed, several types of one pair at one time."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, n)
    frame = pd.DataFrame({
        C.USER: [f"u{u:02d}" if u % 3 else f"{u}" for u in users],  # mixed id text: "7" sorts after "u.."
        C.ITEM: [f"i{i}" for i in rng.integers(0, 25, n)],
        C.RATING: rng.integers(1, 11, n).astype(np.float32) / 2,
        C.TIMESTAMP: pd.to_datetime(START.timestamp() * 1000 + rng.integers(0, 30 * 24, n) * 3_600_000, unit="ms",
                                    utc=True),
    })
    if typed:
        # A third of the rows copy another row's user, item and time with a different type: full ties.
        copies = frame.sample(n // 3, random_state=seed).assign(**{C.EVENT_TYPE: "purchase"})
        frame = frame.assign(**{C.EVENT_TYPE: rng.choice(TYPES, n)})
        frame.loc[rng.random(n) < 0.1, C.EVENT_TYPE] = None  # some untyped rows (ratings) among the events
        frame = pd.concat([frame, copies], ignore_index=True)
    return frame


def _write_lake(settings: Settings, frame: pd.DataFrame) -> None:
    with Lake.of(settings).writer() as writer:
        for day, rows in frame.groupby(frame[C.TIMESTAMP].dt.strftime("%Y-%m-%d")):
            writer.merge_ratings(str(day), rows.reset_index(drop=True))


def _whole_window_plan(events: Events, settings: Settings, end_millis: int) -> tuple[np.ndarray, ...]:
    """(order, train, held, protocol) as the former whole-window code computed them."""
    split = settings.split
    order = np.lexsort((events.items, events.millis, events.users))
    users, millis = events.users[order], events.millis[order]
    n_users = len(events.user_ids)
    if split.protocol != "per_user":
        cutoff = global_cutoff(events.millis, split, end_millis)
        before = millis < cutoff
        seen = np.zeros(n_users, bool)
        seen[users[before]] = True
        held = ~before & seen[users]
        returning = np.count_nonzero(np.bincount(users[held], minlength=n_users))
        if split.protocol == "global_time" or (before.any() and returning >= split.min_eval_users):
            return order, before, held, "global_time"
    sizes = np.bincount(users, minlength=n_users)
    from_end = np.cumsum(sizes)[users] - 1 - np.arange(len(users))
    n_hold = np.maximum(1, np.floor(sizes * split.holdout_fraction)).astype(np.int64)
    n_hold[sizes < split.min_user_interactions] = 0
    held = from_end < n_hold[users]
    return order, ~held, held, "per_user"


def _whole_window_split(settings: Settings, out: Path) -> dict:
    """The run folder's matrices as the former path wrote them, into ``out``; its snapshot's figures."""
    cutoff, start = window(settings, DAY)
    events = Events.from_frame(Lake.of(settings).read_ratings(cutoff, start))
    order, train_mask, held, protocol = _whole_window_plan(events, settings, int(cutoff_of(DAY).timestamp() * 1000))
    ordered = events.take(order)
    full, excluded = apply_feedback(ordered, settings.feedback)
    Interactions.from_events(full, time_ordered=True, excluded=excluded).save(out / "full")
    train, excluded = apply_feedback(ordered.take(train_mask), settings.feedback)
    train_data = Interactions.from_events(train, time_ordered=True, excluded=excluded)
    train_data.save(out / "train")
    holdout = apply_feedback(ordered.take(held), settings.feedback)[0]
    Holdout.from_events(holdout, train_data).save(out / "holdout")
    return {"interactions": len(ordered), "users": len(ordered.user_ids), "items": len(ordered.item_ids),
            "train_rows": len(train), "holdout_rows": len(holdout), "split_protocol": protocol,
            "fingerprint": _fingerprint(ordered, settings)}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few rows, so every block boundary is crossed many times."""
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 7)
    monkeypatch.setattr(data_split, "_CHUNK", 5)
    monkeypatch.setattr(interactions, "_PAIR_BLOCK", 11)


@pytest.mark.parametrize("typed", [False, True], ids=["ratings", "typed"])
@pytest.mark.parametrize("protocol", ["global_time", "per_user", "auto"])
def test_blocked_split_writes_the_whole_window_paths_files(tmp_path, tiny_blocks, typed, protocol):
    settings = load_settings({"home": str(tmp_path / "home"), "split": {"protocol": protocol, "min_eval_users": 30}})
    _write_lake(settings, _lake_rows(seed=len(protocol), typed=typed))
    expected = _whole_window_split(settings, tmp_path / "reference")
    prepare(settings, DAY)
    folder = RunFolder.of(settings, DAY)
    got, want = _files(folder.root), _files(tmp_path / "reference")
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []
    snapshot = json.loads(folder.snapshot_path.read_text())
    if typed:
        # The reference codes event types in sorted order, the lake reader in order of appearance
        # (as the former Arrow reader did): only the fingerprint's type codes differ.
        expected.pop("fingerprint")
        assert snapshot["negative_pairs"] > 0
    assert {k: snapshot[k] for k in expected} == expected


def test_blocked_order_is_the_one_sort_order_with_ties_in_input_order():
    rng = np.random.default_rng(3)
    n = 5000
    users, millis, items = rng.integers(0, 60, n), rng.integers(0, 20, n) * 1000, rng.integers(0, 5, n)
    want = ordered_by_user_time_item(users.astype(np.int32), millis.astype(np.int64), items.astype(np.int32))
    for block_rows in (1, 7, 100, 10_000):
        got = blocks.ordered_in_blocks(users, millis, items, 60, block_rows)
        assert got.dtype == np.int32
        assert np.array_equal(got, want)


def test_lake_reader_codes_ids_and_types_as_one_whole_table_would(tmp_path):
    settings = load_settings({"home": str(tmp_path / "home")})
    _write_lake(settings, _lake_rows(seed=5, typed=True))
    cutoff = cutoff_of(DAY)
    events = read_events(Lake.of(settings).ratings, cutoff)
    table = _window_table(Lake.of(settings).ratings, cutoff, None)
    want = Events.from_frame(Lake.of(settings).read_ratings(cutoff))
    for name in ("user_ids", "item_ids", "users", "items", "ratings", "millis"):
        assert np.array_equal(getattr(events, name), getattr(want, name)), name
    # Types coded in order of first appearance over the whole window, as one dictionary encoding of it.
    whole = pc.dictionary_encode(table[C.EVENT_TYPE].cast(pa.string()).combine_chunks())
    assert list(events.type_names) == whole.dictionary.to_pylist()
    assert np.array_equal(events.types, pc.fill_null(whole.indices, -1).to_numpy(zero_copy_only=False))
    # A cutoff inside a day: ids seen only after it (in that day's dictionaries) are not the window's.
    early = read_events(Lake.of(settings).ratings, START + dt.timedelta(days=3, hours=5))
    early_want = Events.from_frame(Lake.of(settings).read_ratings(START + dt.timedelta(days=3, hours=5)))
    assert list(early.user_ids) == list(early_want.user_ids) and np.array_equal(early.users, early_want.users)
    assert list(early.item_ids) == list(early_want.item_ids)


def test_one_read_for_the_guard_and_the_split_gives_what_their_own_reads_give(tmp_path, engine, settings):
    from recjobs.db.schema import guard_checks
    from recjobs.guard import check_input
    from recjobs.pipeline import shared_window

    _write_lake(settings, _lake_rows(seed=9, typed=False))
    check_input(settings, engine, DAY)
    prepare(settings, DAY)
    alone = _files(RunFolder.of(settings, DAY).root)
    with engine.connect() as conn:
        checks = conn.execute(guard_checks.select().order_by(guard_checks.c.check_name)).all()
    events = shared_window(settings, DAY.isoformat())  # the DAG task passes the date as text
    check_input(settings, engine, DAY.isoformat(), events=events)
    prepare(settings, DAY.isoformat(), events)
    assert _files(RunFolder.of(settings, DAY).root) == alone
    with engine.connect() as conn:
        again = conn.execute(guard_checks.select().order_by(guard_checks.c.check_name)).all()
    assert [(r.check_name, r.value, r.passed) for r in again] == [(r.check_name, r.value, r.passed) for r in checks]
    # A training window shorter than the history: each reads its own rows.
    assert shared_window(settings.model_copy(update={"train_window_days": 5}), DAY) is None


def test_batches_code_as_one_table_whatever_their_size_and_promised_rows():
    rows = _lake_rows(seed=4, typed=True)
    table = pa.Table.from_pandas(rows.astype({C.EVENT_TYPE: object}), preserve_index=False)
    whole = Events.from_arrow(table)
    for size, promised in ((7, 0), (100, 5), (10_000, len(rows) * 3)):
        got = Events.from_batches(table.to_batches(max_chunksize=size), promised)
        for name in ("user_ids", "item_ids", "users", "items", "ratings", "millis", "types", "type_names"):
            assert np.array_equal(getattr(got, name), getattr(whole, name)), (size, name)
    assert list(whole.user_ids) == sorted(set(rows[C.USER]))
