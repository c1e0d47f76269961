"""Typed feedback end to end: event logs ingested, weighted, excluded and judged as settings.feedback says.

Real files through the real ingest into real Parquet, real training (popularity, EASE, ALS) on
the split's matrices, and the real publish into SQLite.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from recjobs import columns as C
from recjobs.data import (
    Events,
    Holdout,
    Interactions,
    Lake,
    apply_feedback,
    events_of,
    generate,
    split_events,
    write_inbox,
)
from recjobs.errors import SettingsError
from recjobs.ingest import IngestError, ingest_file
from recjobs.models import get_family
from recjobs.pipeline import engine_for, load_feedback, load_matrix, prepare, run_pipeline
from recjobs.runs import RunFolder, cutoff_of
from recjobs.settings import Settings, load_settings
from tests.conftest import SMALL

DAY = dt.date(2026, 1, 31)
T0 = int(dt.datetime(2026, 1, 10, tzinfo=dt.UTC).timestamp())


def event_file(path: Path, rows: list[tuple[str, str, str, int]]) -> Path:
    """A CSV event log: ``user_id,item_id,event_type,timestamp``, no rating column."""
    lines = ["user_id,item_id,event_type,timestamp"] + [f"{u},{i},{e},{T0 + t}" for u, i, e, t in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ingested_matrix(settings: Settings, engine: sa.Engine, rows: list[tuple[str, str, str, int]],
                    tmp_path: Path) -> Interactions:
    """``rows`` ingested as an event log, read back through the split's reader and weighted."""
    ingest_file(event_file(tmp_path / "events.csv", rows), settings, engine)
    events, excluded = load_feedback(settings, DAY)
    return Interactions.from_events(events, excluded=excluded)


def fit(family: str, data: Interactions, **params: object):  # noqa: ANN201
    cls = get_family(family)
    return cls(Settings().model_params(family).model_copy(update=params), seed=1).fit(data)


def top_items(model, data: Interactions, user: str, n: int = 3) -> list[str]:  # noqa: ANN001
    row = int(np.flatnonzero(data.user_ids == user)[0])
    top, _ = model.recommend(np.asarray([row]), n, exclude=data.exclusions())
    return [str(data.item_ids[i]) for i in top[0] if i >= 0]


# -- ingest and the lake ---------------------------------------------------------------------

def test_event_log_is_ingested_with_its_types_dictionary_encoded(settings, engine, tmp_path):
    path = event_file(tmp_path / "events.csv", [("u1", "a", "view", 0), ("u1", "a", "purchase", 0),
                                                ("u2", "a", "click", 5), ("u2", "b", "dislike", 9)])
    report = ingest_file(path, settings, engine)
    assert (report.rows_read, report.rows_quarantined) == (4, 0)
    # A view and a purchase of one item in the same second are two events, not a duplicate.
    part = next(Lake.of(settings).ratings.rglob("part-0.parquet"))
    stored = pq.read_table(part)
    assert pa.types.is_dictionary(stored.schema.field(C.EVENT_TYPE).type)
    assert sorted(stored.column(C.EVENT_TYPE).to_pylist()) == ["click", "dislike", "purchase", "view"]
    rows = Lake.of(settings).read_ratings(cutoff_of(DAY))
    assert rows[C.RATING].isna().all()  # no rating column: typed rows carry none
    # Ingesting it again changes nothing, byte for byte.
    before = part.read_bytes()
    ingest_file(path, settings, engine, force=True)
    assert part.read_bytes() == before


def test_rating_files_keep_the_lakes_four_columns(settings, engine, small_inbox):
    ingest_file(small_inbox[0], settings, engine)
    part = next(Lake.of(settings).ratings.rglob("part-0.parquet"))
    assert pq.read_table(part).column_names == list(C.INTERACTION_COLUMNS)
    assert list(Lake.of(settings).read_ratings(cutoff_of(DAY)).columns) == list(C.INTERACTION_COLUMNS)


HOSTILE = {
    "unicode": "ᴘᴜʀᴄʜᴀꜱᴇ",
    "bidi": "\u202epurchase\u202c",
    "huge": "x" * 20_000,
    "injection": "'); DROP TABLE recommendations; --",
    "line break": "\"view\nclick\"",  # a quoted field holding a line break
    "case": "Purchase",
    "nul": "view\x00",
}


def test_hostile_event_types_are_quarantined_with_a_one_line_reason_naming_them(settings, engine, tmp_path):
    good = [(f"u{k}", f"i{k % 7}", "view", k) for k in range(200)]
    bad = [(f"h{k}", "a", value, 1000 + k) for k, value in enumerate(HOSTILE.values())]
    lenient = load_settings({"home": str(settings.home), "ingest": {"max_invalid_share": 0.1}}, environ={})
    report = ingest_file(event_file(tmp_path / "events.csv", good + bad), lenient, engine)
    assert report.rows_quarantined == len(HOSTILE)
    quarantined = pd.read_parquet(report.quarantine_path)
    for why in quarantined[C.REASON]:
        assert "\n" not in why and "\r" not in why and len(why) < 200, why
        assert why.startswith("unknown event_type ")
    by_user = dict(zip(quarantined[C.USER], quarantined[C.REASON], strict=True))
    assert "'ᴘᴜʀᴄʜᴀꜱᴇ'" in by_user["h0"]
    assert "20000 characters" in by_user["h2"]
    assert "DROP TABLE recommendations" in by_user["h3"]
    assert "'view\\nclick'" in by_user["h4"]
    assert "'Purchase'" in by_user["h5"]  # types match exactly
    assert "\\x00" in by_user["h6"]
    # The quarantine keeps the raw value whole; the lake holds only the good rows.
    assert quarantined[C.EVENT_TYPE].str.len().max() == 20_000
    assert len(Lake.of(settings).read_ratings(cutoff_of(DAY))) == len(good)


def test_a_file_of_unknown_event_types_is_rejected_and_nothing_is_written(settings, engine, tmp_path):
    path = event_file(tmp_path / "events.csv", [("u1", "a", "wishlist", 0), ("u2", "a", "view", 1)])
    with pytest.raises(IngestError, match="unknown event_type 'wishlist'"):
        ingest_file(path, settings, engine)
    assert not Lake.of(settings).ratings.exists() or not any(Lake.of(settings).ratings.rglob("*.parquet"))
    # Giving the type a weight is a change of the settings that judged the file: it is read again.
    weighted = load_settings({"home": str(settings.home),
                              "feedback": {"weights": {"view": 1, "wishlist": 3, "add_to_cart": 4, "purchase": 8}}},
                             environ={})
    assert ingest_file(path, weighted, engine).rows_quarantined == 0


def test_untyped_rows_of_an_event_log_need_a_rating_or_the_default(settings, engine, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(f"user_id,item_id,event_type,timestamp\nu1,a,,{T0}\nu1,b,view,{T0}\n")
    lenient = load_settings({"home": str(settings.home), "ingest": {"max_invalid_share": 1.0}}, environ={})
    report = ingest_file(path, lenient, engine)
    assert report.rows_quarantined == 1
    assert "no event_type and no rating" in pd.read_parquet(report.quarantine_path)[C.REASON][0]


@pytest.mark.parametrize(("override", "named"), [
    ({"weights": {"view": -1}}, "feedback.weights"),
    ({"weights": {"view": 1, "dislike": 2}}, "feedback.exclude"),
    ({"relevant": ["wishlist"]}, "feedback.relevant"),
    ({"min_weight": 100}, "feedback.min_weight"),
    ({"weights": {" view": 1}}, "feedback.weights"),
    ({"exclude": ["x" * 100]}, "feedback.exclude"),
    ({"weigths": {}}, "feedback.weigths"),
])
def test_feedback_settings_errors_name_the_setting(tmp_path, override, named):
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_settings({"home": str(tmp_path), "feedback": override}, environ={})


# -- weights change the lists ------------------------------------------------------------------

def test_a_purchase_outranks_views_for_popularity(settings, engine, tmp_path):
    # Three users viewed V, one bought P: by users V is ahead, by weight (3 x 1 < 8) P is.
    rows = [("u1", "V", "view", 0), ("u2", "V", "view", 1), ("u3", "V", "view", 2), ("u4", "P", "purchase", 3),
            ("u5", "Z", "click", 4)]
    data = ingested_matrix(settings, engine, rows, tmp_path)
    assert data.typed
    assert top_items(fit("popularity", data), data, "u5") == ["P", "V"]
    # The same pairs as ratings (no types): users count, and V leads.
    flat = Interactions.from_events(Events(data.user_ids, data.item_ids, *_plain(data)))
    assert top_items(fit("popularity", flat), flat, "u5") == ["V", "P"]


def _plain(data: Interactions) -> tuple[np.ndarray, ...]:
    """``data``'s pairs as untyped rows (rating 1): users, items, ratings, millis."""
    coo = data.matrix.tocoo()
    n = len(coo.row)
    return coo.row.astype(np.int32), coo.col.astype(np.int32), np.ones(n, np.float32), np.zeros(n, np.int64)


def _two_sides(target_events: list[tuple[str, str, str, int]], users: int = 6) -> list[tuple[str, str, str, int]]:
    """``users`` users go A -> X and as many go B -> Y (symmetric), plus the target user's own events."""
    rows = []
    for k in range(users):
        rows += [(f"a{k}", "A", "click", 10 * k), (f"a{k}", "X", "click", 10 * k + 1),
                 (f"b{k}", "B", "click", 10 * k + 2), (f"b{k}", "Y", "click", 10 * k + 3)]
    return rows + target_events


WEIGHTED = [("ease", {}), ("als", {"factors": 4, "iterations": 10}), ("userknn", {"recency_half_life": None, "neighbours": 100}),
            ("lightfm", {"no_components": 4, "epochs": 30, "loss": "bpr", "max_sampled": 5}),
            # A validation slice on a 4-item catalogue (it once failed: kth out of bounds).
            pytest.param("tfrs", {"embedding_dim": 8, "batch_size": 16, "max_epochs": 30, "patience": 30,
                                  "learning_rate": 0.1}, marks=pytest.mark.slow)]
SIDE_USERS = 30  # enough pairs for TFRS's in-batch negatives and validation slice


# The target viewed A and bought B, in either order (purchase last, then first, where
# recency alone would favour what goes with A): what goes with B (Y) comes before X.
TARGET_ORDERS = {"purchase_last": [("t", "A", "view", 100), ("t", "B", "purchase", 101)],
                 "purchase_first": [("t", "B", "purchase", 100), ("t", "A", "view", 101)]}


@pytest.mark.parametrize("order", list(TARGET_ORDERS))
@pytest.mark.parametrize(("family", "params"), WEIGHTED)
def test_a_purchase_speaks_louder_than_a_view(settings, engine, tmp_path, family, params, order):
    data = ingested_matrix(settings, engine, _two_sides(TARGET_ORDERS[order], SIDE_USERS), tmp_path)
    top = top_items(fit(family, data, **params), data, "t", 2)
    assert top == ["Y", "X"], top


@pytest.mark.parametrize(("family", "params"), WEIGHTED)
def test_swapped_weights_swap_the_answer(settings, engine, tmp_path, family, params):
    rows = _two_sides(TARGET_ORDERS["purchase_last"], SIDE_USERS)
    ingest_file(event_file(tmp_path / "events.csv", rows), settings, engine)
    swapped = load_settings({"home": str(settings.home),
                             "feedback": {"weights": {"view": 8, "click": 2, "purchase": 1}, "relevant": []}},
                            environ={})
    events, excluded = load_feedback(swapped, DAY)
    data = Interactions.from_events(events, excluded=excluded)
    assert top_items(fit(family, data, **params), data, "t", 2) == ["X", "Y"]


def test_a_pair_weighs_its_strongest_event_and_min_weight_drops_weak_ones(settings, engine, tmp_path):
    rows = [("u1", "a", "purchase", 0), ("u1", "a", "view", 5), ("u1", "b", "view", 6), ("u2", "b", "click", 7)]
    ingest_file(event_file(tmp_path / "events.csv", rows), settings, engine)
    data = Interactions.from_events(load_feedback(settings, DAY)[0])
    dense = pd.DataFrame(data.matrix.toarray(), index=data.user_ids, columns=data.item_ids)
    assert dense.loc["u1", "a"] == 8.0  # a later view does not undo the purchase
    strict = load_settings({"home": str(settings.home), "feedback": {"min_weight": 2}}, environ={})
    data = Interactions.from_events(load_feedback(strict, DAY)[0])
    assert sorted(map(tuple, np.argwhere(data.matrix.toarray() > 0))) == [(0, 0), (1, 1)]  # u1-a, u2-b


# -- negatives are never recommended -------------------------------------------------------------

def test_a_disliked_or_returned_item_is_never_recommended(settings, engine, tmp_path):
    # H is everyone's favourite; u1 dislikes it, u2 bought and returned it.
    rows = [(f"f{k}", "H", "purchase", k) for k in range(8)] + [(f"f{k}", "M", "click", 20 + k) for k in range(4)]
    rows += [("u1", "H", "dislike", 50), ("u1", "Q", "view", 51),
             ("u2", "H", "purchase", 52), ("u2", "H", "return", 60), ("u2", "Q", "view", 61)]
    data = ingested_matrix(settings, engine, rows, tmp_path)
    model = fit("popularity", data)
    assert top_items(model, data, "u1") == ["M"]
    assert top_items(model, data, "u2") == ["M"]
    # u2's returned purchase trains nothing: H's weight is the eight buyers'.
    h = int(np.flatnonzero(data.item_ids == "H")[0])
    assert data.matrix[:, h].sum() == 8 * 8.0


def test_held_out_views_are_not_relevant_but_purchases_are(settings, engine, tmp_path):
    rows = [(f"u{k}", f"i{j}", "click", 10 * k + j) for k in range(5) for j in range(4)]
    rows += [(f"u{k}", "late_view", "view", 500 + k) for k in range(5)]
    rows += [(f"u{k}", "late_buy", "purchase", 600 + k) for k in range(5)]
    ingest_file(event_file(tmp_path / "events.csv", rows), settings, engine)
    events, _ = load_feedback(settings, DAY)
    train, held = split_events(events, settings.split)
    truth = Holdout.from_events(held, Interactions.from_events(train))
    truth_items = {str(events.item_ids[c]) for c in np.unique(held.items[held.relevant])}
    assert "late_buy" in truth_items and "late_view" not in truth_items
    assert truth.ratings is None and len(truth.user_rows) == 5


def test_weights_are_applied_at_split_so_changing_them_needs_no_new_ingest(settings, engine, tmp_path):
    rows = [("u1", "a", "view", 0), ("u2", "a", "view", 1), ("u3", "b", "purchase", 2)]
    ingest_file(event_file(tmp_path / "events.csv", rows), settings, engine)
    gone = load_settings({"home": str(settings.home),
                          "feedback": {"weights": {"purchase": 8}, "exclude": [], "relevant": []}}, environ={})
    with pytest.raises(SettingsError, match=r"event types \['view'\].*feedback\.weights"):
        load_feedback(gone, DAY)


# -- the whole pipeline on the demo's event log ---------------------------------------------------

def test_the_demos_event_log_runs_through_the_pipeline_and_lists_no_negative_pair(tmp_path):
    settings = load_settings({"home": str(tmp_path / "home"), "families": ["popularity", "ease"],
                              "publish": {"top_n": 10}}, environ={})
    paths = write_inbox(settings.inbox, SMALL, events=True)
    assert paths[0].name == "synthetic_events.csv"
    log = events_of(generate(SMALL)["ratings"], SMALL.seed)
    assert set(log[C.EVENT_TYPE]) == {"view", "click", "add_to_cart", "purchase", "dislike", "return"}
    report = run_pipeline(settings, DAY)
    assert not report.failures and report.decision.promoted
    engine = engine_for(settings)
    with engine.connect() as conn:
        recs = pd.read_sql("SELECT user_id, item_id FROM recommendations", conn)
    assert len(recs) == 120 * 10
    negative = log[log[C.EVENT_TYPE].isin(["dislike", "return"])]
    listed = set(zip(recs[C.USER], recs[C.ITEM], strict=True))
    assert not listed & set(zip(negative[C.USER], negative[C.ITEM], strict=True))
    # The split kept them as the date's exclusions, and trained on weights.
    full = load_matrix(settings, DAY, "full")
    assert full.typed and full.excluded is not None and full.excluded.nnz > 0
    assert set(np.unique(full.matrix.data).tolist()) == {1.0, 2.0, 4.0, 8.0}  # each pair's strongest event


def test_split_of_typed_events_writes_weights_and_exclusions(settings, engine, tmp_path):
    rows = [(f"u{k}", f"i{j}", "click", 10 * k + j) for k in range(3) for j in range(3)]
    rows += [("u0", "i9", "dislike", 99)]
    ingest_file(event_file(tmp_path / "events.csv", rows), settings, engine)
    prepare(settings, DAY)
    full = load_matrix(settings, DAY, "full")
    assert "i9" not in set(full.item_ids)  # a disliked item no one else touched is not even in the catalogue
    assert full.typed and (full.matrix.data == 2.0).all()
    events, excluded = apply_feedback(Lake.of(settings).read_events(cutoff_of(DAY)), settings.feedback)
    assert excluded is not None and len(excluded[0]) == 1


def test_a_negative_after_the_holdout_cutoff_does_not_reach_back_into_training(settings, engine, tmp_path):
    day = 86_400
    rows = [("u1", "a", "purchase", 0), ("u1", "b", "click", 1), ("u2", "a", "click", 1), ("u2", "b", "purchase", 2),
            ("u1", "a", "dislike", 21 * day), ("u2", "c", "purchase", 21 * day + 1)]
    ingest_file(event_file(tmp_path / "events.csv", rows), settings, engine)
    split = load_settings({"home": str(settings.home),
                           "split": {"protocol": "global_time", "holdout_days": 1}}, environ={})
    prepare(split, DAY)
    train, full = load_matrix(split, DAY, "train"), load_matrix(split, DAY, "full")
    dense = pd.DataFrame(train.matrix.toarray(), index=train.user_ids, columns=train.item_ids)
    assert dense.loc["u1", "a"] == 8.0 and train.excluded.nnz == 0  # what was known at the cutoff
    # Publishing knows everything before the date's end: the dislike takes the pair out and excludes it.
    u1, a = int(np.flatnonzero(full.user_ids == "u1")[0]), int(np.flatnonzero(full.item_ids == "a")[0])
    assert full.matrix[u1, a] == 0 and full.excluded[u1, a] == 1
    holdout = Holdout.load(RunFolder.of(split, DAY).matrix("holdout"))
    assert len(holdout.user_rows) == 1 and holdout.ratings is None  # u2's purchase of c; the dislike is no truth


def _after_a(buy: str, view: str, buyers: int = 20, viewers: int = 40) -> list[tuple[str, str, str, int]]:
    """``viewers`` users go C -> A -> ``view`` (viewed), ``buyers`` go C -> A -> ``buy`` (bought); ``t`` has C, A."""
    rows = []
    for k in range(viewers):
        rows += [(f"v{k}", "C", "click", 10 * k), (f"v{k}", "A", "click", 10 * k + 1),
                 (f"v{k}", view, "view", 10 * k + 2)]
    for k in range(buyers):
        rows += [(f"p{k}", "C", "click", 10 * k + 3), (f"p{k}", "A", "click", 10 * k + 4),
                 (f"p{k}", buy, "purchase", 10 * k + 5)]
    return rows + [("t", "C", "click", 1000), ("t", "A", "click", 1001)]


SEQUENCE = {"max_length": 4, "embedding_dim": 8, "batch_size": 16, "max_epochs": 30, "patience": 30,
            "learning_rate": 0.05, "validation_users": 10}


@pytest.mark.slow
@pytest.mark.parametrize(("buy", "view"), [("Y", "X"), ("X", "Y")])
def test_the_sequence_model_learns_to_predict_the_purchase_after_a(settings, engine, tmp_path, buy, view):
    # Twice as many users viewed one item after A as bought the other: by count the viewed
    # one comes next, by the weights (40 x 1 < 20 x 8) the bought one does.
    data = ingested_matrix(settings, engine, _after_a(buy, view), tmp_path)
    assert top_items(fit("sequence", data, **SEQUENCE), data, "t", 2) == [buy, view]
