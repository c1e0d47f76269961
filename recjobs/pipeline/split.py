"""The split stage: read the date's window from the lake once, code it, and write the matrices.

Stages pass paths and ids, never data frames, so each can run in its own process (an
Airflow task, a CLI call) and be retried alone. The split writes ``train``, ``full``
and ``holdout`` under the date's run folder (:mod:`recjobs.runs`), which every later
stage loads in about a second instead of re-reading Parquet and re-coding ids.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine

from recjobs.data.blocks import order_in_place, save_matrix
from recjobs.data.feedback import Pairs, apply_feedback
from recjobs.data.interactions import Events, Holdout, Interactions
from recjobs.data.lake import Lake, release_memory
from recjobs.data.split import plan_ordered
from recjobs.errors import PipelineError
from recjobs.files import write_json
from recjobs.guard.stage import check_input
from recjobs.progress import Heartbeat
from recjobs.runs import RunFolder, check_run_date, cutoff_of, parse_date, window
from recjobs.settings import Settings

log = logging.getLogger(__name__)


def run_day(settings: Settings, run_date: str | dt.date) -> dt.date:
    """The run date of a stage: parsed, and refused when later than ``runs.max_future_days`` allows."""
    return check_run_date(parse_date(run_date), settings.runs.max_future_days)


def _read_window(settings: Settings, run_date: dt.date) -> Events:
    """The date's training window from the lake, coded, as stored (types not yet weighted)."""
    cutoff, start = window(settings, run_date)
    lake = Lake.of(settings)
    events = lake.read_events(cutoff, start)
    if events is None:
        raise PipelineError(
            f"no interactions before {cutoff.isoformat()} in {lake.ratings}: "
            "ingest some first (recjobs ingest PATH)"
        )
    return events


def shared_window(settings: Settings, run_date: str | dt.date) -> Events | None:
    """The rows the input guard and the split both need, read once for a task that runs both
    (the DAG's ``split`` task): everything before the date's cutoff, when that is the split's
    window (``train_window_days`` unset). None when it is not, or the lake has no such rows:
    then each reads its own (and the split's read says what is missing)."""
    cutoff, start = window(settings, run_day(settings, run_date))
    return None if start is not None else Lake.of(settings).read_events(cutoff)


def guard_and_prepare(settings: Settings, engine: Engine, run_date: str | dt.date, allow_night: bool = False) -> Path:
    """The input guard, then the split, from one read of the lake: the DAG's ``split`` task and
    ``recjobs run`` both run this. Raises :class:`~recjobs.errors.GuardedError` (nothing
    split) when the guard holds the night; ``allow_night`` is the DAG's ``guard_allow``."""
    day = run_day(settings, run_date)
    events = shared_window(settings, day)
    check_input(settings, engine, day, allow_night=allow_night, events=events)
    return prepare(settings, day, events)


def _weighted(settings: Settings, run_date: dt.date, events: Events) -> tuple[Events, Pairs | None]:
    """``events`` weighted by ``settings.feedback``; fails clearly when no positive is left."""
    events, excluded = apply_feedback(events, settings.feedback)
    if not len(events):
        cutoff = window(settings, run_date)[0]
        raise PipelineError(f"no positive interactions before {cutoff.isoformat()}: every event is negative "
                            f"(feedback.exclude) or under feedback.min_weight={settings.feedback.min_weight:g}")
    return events, excluded


def load_feedback(settings: Settings, run_date: dt.date) -> tuple[Events, Pairs | None]:
    """The date's training window from the lake, coded and weighted by ``settings.feedback``
    (:func:`~recjobs.data.feedback.apply_feedback`), with the negative events' pairs; fails
    clearly when it is empty."""
    return _weighted(settings, run_date, _read_window(settings, run_date))


def load_events(settings: Settings, run_date: dt.date) -> Events:
    """The date's training window from the lake, coded and weighted (see :func:`load_feedback`)."""
    return load_feedback(settings, run_date)[0]


def _fingerprint(ordered: Events, settings: Settings) -> str:
    # ``ordered`` is in (user, time, item) order, canonical since ingest keeps (user, item,
    # timestamp) unique; ids are hashed by value, so the digest depends on the data only.
    # Arrays are hashed through their buffers: ``tobytes`` would copy gigabytes at 200M rows.
    digest = hashlib.sha256()
    for array in (ordered.users, ordered.items, ordered.millis, ordered.ratings):
        digest.update(np.ascontiguousarray(array).data)
    for ids in (ordered.user_ids, ordered.item_ids):
        digest.update("\x1f".join(map(str, ids)).encode())
    if ordered.types is not None and ordered.type_names is not None:
        # Typed events: the types, and the mapping that turns them into weights and truth.
        digest.update(np.ascontiguousarray(ordered.types).data)
        digest.update("\x1f".join(map(str, ordered.type_names)).encode())
        digest.update(settings.feedback.model_dump_json().encode())
    return digest.hexdigest()[:16]


# -- split -------------------------------------------------------------------------
def prepare(settings: Settings, run_date: str | dt.date, events: Events | None = None) -> Path:
    """Split ``run_date``'s window and write what later stages load to ``runs/<date>/``.

    Reads the lake once, codes the ids once (Arrow dictionary encoding, no Python
    object per row) and writes the training matrix, the coded holdout and the full
    matrix (everything before the cutoff) as ``.npy`` folders. ``events``: the window
    already read (:func:`shared_window`, which the input guard was given too); its arrays
    are reordered in place.
    """
    day = run_day(settings, run_date)
    started = time.perf_counter()
    with Heartbeat(log, f"split {day}") as beat:
        beat.phase("reading the window from the lake")
        if events is None:
            events = _read_window(settings, day)
        log.info("read %d interactions for %s in %.1fs", len(events), day, time.perf_counter() - started)
        # One reordering to (user, time, item), in place and a block of users at a time: the
        # masks and matrices below then need no sort of the window.
        beat.phase(f"ordering {len(events):,} rows by (user, time, item) and planning the {settings.split.protocol} "
                   "split")
        order_in_place(events)
        release_memory()
        # The split's protocol (split.protocol) decides the masks; its global_time cutoff, if
        # any, is measured back from the run's cutoff.
        plan = plan_ordered(events.users, events.millis, len(events.user_ids), settings.split,
                            int(cutoff_of(day).timestamp() * 1000))
        held, in_train, holdout_cutoff = plan.held, plan.train, plan.cutoff_millis
        protocol, split_reason = plan.protocol, plan.reason
        del plan
        folder = RunFolder.of(settings, day)
        out = folder.root
        out.mkdir(parents=True, exist_ok=True)
        fingerprint = _fingerprint(events, settings)
        # Each matrix is written a block of users at a time (recjobs.data.blocks): the stage holds
        # the window's rows, its masks and one block's work, never a second copy of the window.
        # Typed events are weighted part by part (settings.feedback; rating rows pass unchanged):
        # a dislike after the holdout cutoff must not take a pair out of training, nor a purchase
        # returned after the cutoff out of the truth's past.
        beat.phase("writing the full matrix (everything before the cutoff)")
        full, excluded = _weighted(settings, day, events)
        save_matrix(folder.matrix("full"), full, excluded=excluded)
        release_memory()
        n_negative = 0 if excluded is None else len(excluded[0])
        del full
        if events.types is None:
            # Ratings: feedback changes nothing, so the training rows are a mask, not a copy of them.
            train, train_rows, excluded = events, in_train, None
        else:
            train, excluded = apply_feedback(events.take(in_train), settings.feedback)
            train_rows = None
        n_train = len(train) if train_rows is None else int(np.count_nonzero(train_rows))
        beat.phase(f"writing the training matrix ({n_train:,} rows)")
        # Negative pairs are excluded when evaluating too: the gate judges lists as they would be published.
        train_users, train_items, _ = save_matrix(folder.matrix("train"), train, train_rows, excluded)
        del train, train_rows, in_train
        holdout = apply_feedback(events.take(held), settings.feedback)[0]
        n_holdout = len(holdout)
        beat.phase(f"writing the holdout ({n_holdout:,} rows)")
        Holdout.coded(holdout, train_users, train_items).save(folder.matrix("holdout"))
        del holdout, held
    snapshot = {
        "run_date": day.isoformat(),
        "cutoff": cutoff_of(day).isoformat(),
        "interactions": len(events),
        "users": len(events.user_ids),
        "items": len(events.item_ids),
        "train_rows": n_train,
        "holdout_rows": n_holdout,
        "max_timestamp": dt.datetime.fromtimestamp(int(events.millis.max()) / 1000, dt.UTC).isoformat(),
        "fingerprint": fingerprint,
        # Typed events only: pairs never recommended for a negative event (settings.feedback).
        **({"negative_pairs": n_negative} if events.types is not None else {}),
        # The protocol applied (split.protocol=auto resolved) and why: the gate's evidence.
        "split_protocol": protocol,
        "split_reason": split_reason,
        "holdout_cutoff": None if holdout_cutoff is None
        else dt.datetime.fromtimestamp(holdout_cutoff / 1000, dt.UTC).isoformat(),
    }
    write_json(folder.snapshot_path, snapshot)
    log.info("split %s (%s%s): %d train / %d holdout rows, %d users, %d items in %.1fs; %s", day,
             protocol, f", cutoff {snapshot['holdout_cutoff']}" if holdout_cutoff is not None else "",
             n_train, n_holdout, snapshot["users"], snapshot["items"], time.perf_counter() - started,
             split_reason)
    return out


def load_matrix(settings: Settings, day: dt.date, part: str) -> Interactions:
    """The date's ``train`` or ``full`` (everything before the cutoff) matrix from :func:`prepare`."""
    path = RunFolder.of(settings, day).matrix(part)
    if not path.exists():
        raise PipelineError(f"no {part} matrix for {day} in {path}: run `recjobs split --date {day}` first")
    return Interactions.load(path)


__all__ = ["guard_and_prepare", "load_events", "load_feedback", "load_matrix", "prepare", "run_day",
           "shared_window"]
