"""The publish stage: rank the final model's lists in shards to staging files, then load and swap.

Ranking (:func:`rank_shard`) needs no database: in Airflow each shard is a mapped task,
so shards rank on as many workers as the executor has. Loading
(:func:`load_published`) is one short step that makes every list live at once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection, Engine

from recjobs.data.ids import Vocabulary
from recjobs.data.interactions import Interactions
from recjobs.db import ledger
from recjobs.errors import GuardedError, PipelineError
from recjobs.guard.stage import check_output
from recjobs.models.base import Recommender
from recjobs.pipeline.split import load_matrix, run_day
from recjobs.publish.locks import SwapPolicy, live_row
from recjobs.publish.staging import (
    rank_to_staging,
    read_staging,
    staged_rows,
    staged_version,
    staging_schema,
)
from recjobs.publish.tables import replace_fallback_lists
from recjobs.publish.versions import PublishResult, publish_lists
from recjobs.ranking.ann import for_publish
from recjobs.ranking.coldstart import (
    align_seen,
    for_ranking,
    popular_rows,
    segment_popular_rows,
    user_segment_frame,
)
from recjobs.ranking.lists import item_frames, merge_segments, segment_frames, user_frames
from recjobs.ranking.rerank import build_postprocess
from recjobs.ranking.rules import load_rules, rules_active
from recjobs.runs import RunFolder, future_horizon, shard_span
from recjobs.settings import Settings

log = logging.getLogger(__name__)


def final_model(settings: Settings, day: dt.date) -> tuple[Recommender, dict[str, Any]]:
    """The date's final model (with its version in ``info``) and its metadata."""
    path = RunFolder.of(settings, day).final
    if not (path / "meta.json").exists():
        raise PipelineError(f"no final model for {day}: run `recjobs train --date {day} --final` first")
    model = Recommender.load(path)
    meta = json.loads((path / "meta.json").read_text())
    model.info["model_version"] = meta["model_version"]
    return model, meta


def _published_kinds(settings: Settings, model: Recommender) -> list[str]:
    # A champion without item vectors (popularity) has no neighbours to publish.
    kinds = ["recommendations", "similar_items"] if model.has_similar_items() else ["recommendations"]
    return kinds + ["item_segments"] if settings.item_segments.top_users > 0 else kinds


def _segment_items(settings: Settings, item_ids: np.ndarray, blocked: np.ndarray | None) -> np.ndarray:
    """Indices of the items that get a segment: ``item_segments.items`` (default every item), less blocked ones."""
    wanted = np.ones(len(item_ids), bool)
    chosen = settings.item_segments.items
    if chosen is not None:
        pos = Vocabulary(item_ids).positions(pd.Series(chosen, dtype=object))
        wanted[:] = False
        wanted[pos[pos >= 0]] = True
        if (pos < 0).any():
            log.warning("item_segments.items: %d of %d id(s) are not in the model's catalogue and get no segment",
                        int((pos < 0).sum()), len(chosen))
    if blocked is not None:
        wanted &= ~blocked  # an item no list may show is no campaign's either (rules.exclude_items / allow_items)
    return np.flatnonzero(wanted)


def _segment_frames(settings: Settings, day: dt.date, model: Recommender, seen: Interactions,
                    shard: int) -> Iterator[pd.DataFrame]:
    """This shard's users' part of every item's segment, scored as their lists are (see segment_frames)."""
    ranker = for_ranking(model, seen, settings.coldstart)
    exclude, blocked = seen.exclusions(), None
    if rules_active(settings):
        rules = load_rules(settings, day, seen.user_ids, seen.item_ids)
        exclude, blocked = rules.exclude(exclude), rules.blocked
    items = _segment_items(settings, model.item_ids, blocked)
    span = shard_span(len(model.user_ids), shard, settings.publish.shards)
    return segment_frames(ranker, exclude, items, settings.item_segments.top_users, settings.publish.chunk_users, span)


def rank_shard(settings: Settings, run_date: str | dt.date, shard: int = 0) -> list[Path]:
    """Rank shard ``shard`` of ``publish.shards`` (users, and items for neighbours) to staging files.

    Runs with no database connection: in Airflow each shard is a mapped task, so shards
    rank on as many workers as the executor has. A retried shard rewrites its own files
    atomically, so a shard killed mid-way leaves nothing for :func:`load_published` to
    double-count.
    """
    day = run_day(settings, run_date)
    shards = settings.publish.shards
    folder = RunFolder.of(settings, day)
    model, _ = final_model(settings, day)
    p = settings.publish
    written = []
    post = None  # business rules and re-ranking (recjobs.ranking.rerank); None with neutral settings
    # The model's items are the matrix's, then any new items it scored from features
    # (recjobs.ranking.coldstart); the seen matrix gets empty columns for those.
    seen = align_seen(load_matrix(settings, day, "full"), model)
    if seen is None:
        raise PipelineError(f"the final model for {day} was not trained on {day}'s split: "
                            f"rerun `recjobs train --date {day} --final`")
    for kind in _published_kinds(settings, model):
        if kind == "item_segments":
            frames = _segment_frames(settings, day, model, seen, shard)
        elif kind == "recommendations":
            # Users with very few interactions may be ranked by item neighbours (coldstart.min_interactions).
            ranker = for_ranking(model, seen, settings.coldstart)
            # publish.ann: rank vector families through an index (recjobs.ranking.ann); built once per shard.
            ranker = for_publish(ranker, p, seen.exclusions())
            post = build_postprocess(settings, day, ranker, seen)
            frames = user_frames(ranker, seen, p.top_n, p.chunk_users, shard_span(len(model.user_ids), shard, shards),
                                  post, rater=model)
        else:
            frames = item_frames(model, p.similar_n, p.chunk_users, shard_span(len(model.item_ids), shard, shards),
                                  post)
        written.append(rank_to_staging(frames, kind, folder.shard(kind, shard, shards), model.info["model_version"]))
    log.info("ranked shard %d of %d for %s: %s", shard + 1, shards, day, ", ".join(p.name for p in written))
    return written


def load_published(settings: Settings, engine: Engine, run_date: str | dt.date) -> list[PublishResult]:
    """Load every shard's staged lists as new versions and swap them live (see recjobs.publish).

    Fails naming the missing shards if any has not been ranked, before touching the database.
    Lists the output guard holds (recjobs.guard) are loaded as history only, and then
    :class:`GuardedError` says why; the live lists stay.
    """
    day = run_day(settings, run_date)
    shards = settings.publish.shards
    folder = RunFolder.of(settings, day)
    model, meta = final_model(settings, day)
    kinds = _published_kinds(settings, model)
    parts = {kind: [folder.shard(kind, s, shards) for s in range(shards)] for kind in kinds}
    # Staged files of another model first: ranking again is then the fix for every shard.
    version = meta["model_version"]
    _check_staged_versions(folder, {k: [p for p in paths if p.exists()] for k, paths in parts.items()}, version,
                           shards)
    missing = sorted({s for paths in parts.values() for s, path in enumerate(paths) if not path.exists()})
    if missing:
        raise PipelineError(f"shard(s) {', '.join(map(str, missing))} of {shards} not ranked for {day} "
                            f"(no {folder.staging}/<list>/part-N-of-{shards:04d}.parquet); run "
                            f"`recjobs publish --date {day} --shard N` for each, or rerun those mapped tasks")
    _check_not_empty(settings, day, parts["recommendations"], len(model.user_ids))
    # The output guard (recjobs.guard): lists that collapsed are loaded as history only.
    guard = check_output(settings, engine, day, parts["recommendations"], len(model.item_ids), len(model.user_ids))
    p = settings.publish
    fallback = _fallback_lists(settings, day, load_matrix(settings, day, "full"))

    def in_swap(conn: Connection, results: list[PublishResult]) -> None:
        # In the swap's transaction, under its lock: the fallback lists change with the live
        # recommendations, never beside another date's, and the ledger row with both.
        recs = results[0]
        if recs.live:
            replace_fallback_lists(conn, *fallback)
        ledger.record_publish(conn, day, meta["family"], version, recs.live,
                              f"{recs.rows} rows in {recs.table_name}" + (f"; {guard.reason}" if guard.held else ""))

    lists: dict[str, Any] = {kind: read_staging(paths, arrow=True) for kind, paths in parts.items()}
    if "item_segments" in lists:
        # Each shard ranked its own users: every item's list is the best of the shards' lists.
        lists["item_segments"] = [merge_segments(list(lists["item_segments"]), settings.item_segments.top_users)]
    elif _segments_live(engine):
        # Turned off: an empty version goes live, so no stale audience outlives the setting.
        lists["item_segments"] = [staging_schema("item_segments").empty_table()]
    results = publish_lists(engine, day.isoformat(), version, lists, p.keep_versions, history=True,
                            history_days=p.history_days, swap=SwapPolicy.of(p),
                            horizon=future_horizon(settings.runs.max_future_days), in_swap=in_swap,
                            history_only=guard.held,
                            totals={kind: staged_rows(paths) for kind, paths in parts.items() if kind != "item_segments"})
    for r in results:
        log.info("published %s: %d rows to %s in %.1fs (%s)", r.kind, r.rows, r.table_name, r.seconds,
                 "live" if r.live else "history only: " + ("held by the output guard" if guard.held
                                                           else "a newer date is live"))
    if guard.held:
        raise GuardedError(guard.reason)
    return results


def _check_staged_versions(folder: RunFolder, parts: dict[str, list[Path]], version: str, shards: int) -> None:
    """:class:`PipelineError` unless every staged file was ranked with the final model ``version``.

    A promote and ``train --final`` after the ranking leave shards of the previous model:
    loading them would publish one model under the other's name.
    """
    stale = [(path, staged) for paths in parts.values() for path in paths
             if (staged := staged_version(path)) not in (version, None)]
    if not stale:
        return
    path, staged = stale[0]
    how = f"`recjobs publish --date {folder.day}`" + (
        f" (or `--shard N` for each of the {shards} shards, then `--load`)" if shards > 1 else "")
    raise PipelineError(f"{len(stale)} staged file(s) for {folder.day}, e.g. {path.relative_to(folder.root)}, were "
                        f"ranked with model {staged}, but the final model is {version}: rank them again with {how}")


def _check_not_empty(settings: Settings, day: dt.date, paths: list[Path], users: int) -> None:
    """:class:`PipelineError` if the staged recommendations have no row: nothing goes live then.

    Only the item rules can empty every list (an allow list that allows nothing, an
    exclusion of everything). Publishing that would make every list and the popular
    items empty at once; refusing keeps the live lists whole until the rules are fixed.
    """
    if users == 0 or staged_rows(paths) > 0:
        return
    r = settings.rules
    raise PipelineError(
        f"nothing to publish for {day}: the recommendations of its {users} users have 0 rows, so the item rules "
        f"leave no item to recommend (rules.allow_items = {r.allow_items!r}, rules.exclude_items = "
        f"{r.exclude_items!r}); the live lists are unchanged. Fix the rules, then rerun `recjobs publish --date {day}`")


def publish(settings: Settings, engine: Engine, run_date: str | dt.date) -> list[PublishResult]:
    """Rank every shard in this process, then load and swap: what the DAG's mapped tasks do.

    Ranking writes ``runs/<date>/publish/<list>/part-*.parquet`` with no database
    transaction open, so scoring never holds a write lock; loading is a short step.
    """
    for shard in range(settings.publish.shards):
        rank_shard(settings, run_date, shard)
    return load_published(settings, engine, run_date)


def _segments_live(engine: Engine) -> bool:
    """Whether the live ``item_segments`` has rows (published while the setting was on)."""
    with engine.connect() as conn:
        live = live_row(conn, "item_segments")
    return live is not None and live.row_count > 0


def _fallback_lists(settings: Settings, day: dt.date, seen: Interactions
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], pd.DataFrame | None]:
    """The date's fallback lists: popular items (global and per segment) and each user's segment."""
    popular = popular_rows(settings, seen, day.isoformat())
    segments = user_segment_frame(settings)
    segment_rows = [] if segments is None else segment_popular_rows(settings, seen, segments, day.isoformat())
    return popular, segment_rows, segments


__all__ = ["final_model", "load_published", "publish", "rank_shard"]
