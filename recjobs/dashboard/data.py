"""What the dashboard shows, read from the database and the run folders (no HTML here)."""

from __future__ import annotations

import difflib
import heapq
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from recjobs import columns as C
from recjobs.dashboard.embedding_map import EmbeddingMap, load_map
from recjobs.data.ids import positions
from recjobs.data.interactions import Interactions
from recjobs.data.lake import Lake
from recjobs.db.ledger import CHAMPION_KEPT, CHAMPION_STATUSES, GATED_CANDIDATE_STATUSES, PROMOTED
from recjobs.runs import RunFolder, family_of
from recjobs.settings import Settings

# What the page reads: the tables, and the live view ``ensure_schema`` creates.
DASHBOARD_TABLES = ("model_runs", "ingest_log", "publications", "popular_items", "items")
DASHBOARD_VIEWS = ("recommendations",)
_CHAMPION_SQL = ", ".join(f"'{s}'" for s in CHAMPION_STATUSES)
_GATED_SQL = ", ".join(f"'{s}'" for s in GATED_CANDIDATE_STATUSES)
AIRFLOW_COLUMNS = ("airflow_dag_id", "airflow_run_id", "airflow_task_id")


def sqlite_file_missing(url: str) -> bool:
    """Whether ``url`` names a SQLite file that does not exist (connecting would create it)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return False
    return not Path(parsed.database).exists()


def missing_schema(engine: Engine) -> list[str]:
    """The tables and views the page reads that are absent; looks only, never creates."""
    inspector = sa.inspect(engine)
    present = set(inspector.get_table_names()) | set(inspector.get_view_names())
    return [name for name in (*DASHBOARD_TABLES, *DASHBOARD_VIEWS) if name not in present]


@dataclass(frozen=True)
class Champion:
    family: str
    model_version: str
    run_date: str
    since: str
    published_at: str


def _frame(engine: Engine, sql: str, **params: Any) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(sa.text(sql), params).mappings().all())


def champion(engine: Engine) -> Champion | None:
    """The live model and the first date of its family's unbroken run as champion."""
    live = _frame(engine, "SELECT model_version, run_date, published_at FROM publications "
                          "WHERE kind = 'recommendations' AND is_live = :t", t=True)
    if live.empty:
        return None
    row = live.iloc[0]
    # Only decisions count: a night without candidates leaves the champion as it was.
    gates = _frame(engine, "SELECT run_date, family FROM model_runs WHERE stage = 'gate' AND run_date <= :d "
                           f"AND status IN ({_CHAMPION_SQL}) ORDER BY run_date DESC", d=row["run_date"])
    family = family_of(row["model_version"])
    since = row["run_date"]
    for _, g in gates.iterrows():
        if g["family"] != family:
            break
        since = g["run_date"]
    return Champion(family, row["model_version"], row["run_date"], since, str(row["published_at"])[:19])


def ingest_by_date(engine: Engine) -> pd.DataFrame:
    # Rejected files (nothing merged) are counted apart, so they stand out.
    frame = _frame(engine, "SELECT ingested_at, kind, COALESCE(status, 'ingested') AS status, rows_read, "
                           "rows_valid, rows_quarantined, duplicates_dropped, source_path FROM ingest_log "
                           "ORDER BY ingested_at")
    if frame.empty:
        return frame
    frame["date"] = pd.to_datetime(frame["ingested_at"], utc=True, format="mixed").dt.strftime("%Y-%m-%d")
    return (frame.groupby(["date", "kind", "status"], as_index=False)
            .agg(files=("source_path", "count"), rows_read=("rows_read", "sum"), rows_valid=("rows_valid", "sum"),
                 rows_quarantined=("rows_quarantined", "sum"), duplicates=("duplicates_dropped", "sum")))


def metrics_by_date(engine: Engine) -> pd.DataFrame:
    """Every evaluated candidate's metrics by logical date (failed ones included, with their status).

    Where ratings are explicit, the rating errors too (RMSE and MAE on the holdout's ratings
    and the bias baseline's RMSE), when the database has those columns (it looks, never alters).
    """
    present = {c["name"] for c in sa.inspect(engine).get_columns("model_runs")}
    ratings = "".join(f", {c}" for c in ("rmse", "mae", "baseline_rmse") if c in present)
    return _frame(engine, "SELECT run_date, family, status, ndcg_at_k, precision_at_k, recall_at_k, map_at_k, "
                          f"coverage, diversity, novelty, fit_seconds{ratings} FROM model_runs "
                          "WHERE stage = 'candidate' AND status != 'training' ORDER BY run_date, family")


def published_versions(engine: Engine) -> pd.DataFrame:
    """Every kept (not dropped) published version per list, newest first, and what it is now.

    ``state``: ``live``; ``rollback target`` (the version ``recjobs rollback`` returns to);
    ``was live`` (further back); ``history only`` (a backfilled older date, never live).
    """
    frame = _frame(engine, "SELECT kind, run_date, model_version, row_count, is_live, live_seq, published_at "
                           "FROM publications WHERE dropped = :f ORDER BY kind, id DESC", f=False)
    if frame.empty:
        return frame
    states = []
    for _kind, rows in frame.groupby("kind", sort=False):
        live = rows[rows["is_live"].astype(bool)]
        live_seq = live["live_seq"].iloc[0] if not live.empty else None
        earlier = rows[rows["live_seq"].notna() & ~rows["is_live"].astype(bool)]
        if live_seq is not None and not pd.isna(live_seq):
            earlier = earlier[earlier["live_seq"] < live_seq]
        target = earlier["live_seq"].max() if not earlier.empty else None
        for row in rows.itertuples():
            if bool(row.is_live):
                state = "live"
            elif pd.isna(row.live_seq):
                state = "history only"
            else:
                state = "rollback target" if row.live_seq == target else "was live"
            states.append((row.Index, state))
    frame["state"] = pd.Series(dict(states))
    frame["published_at"] = frame["published_at"].astype(str).str.slice(0, 19)
    return frame[["kind", "run_date", "model_version", "state", "row_count", "published_at"]].rename(
        columns={"row_count": "rows", "published_at": "published (UTC)"})


def failed_nights(engine: Engine) -> pd.DataFrame:
    """Dates whose gate decided nothing (e.g. ``no_candidates``), with the status and reason.

    A date whose rerun failed after an earlier decision keeps that decision, and is not listed.
    """
    return _frame(engine, "SELECT run_date, status, reason FROM model_runs f WHERE stage = 'gate' "
                          f"AND status NOT IN ({_CHAMPION_SQL}) AND NOT EXISTS (SELECT 1 FROM model_runs d "
                          f"WHERE d.stage = 'gate' AND d.run_date = f.run_date AND d.status IN ({_CHAMPION_SQL})) "
                          "ORDER BY run_date")


def gate_decisions(engine: Engine, limit: int = 30) -> pd.DataFrame:
    """The latest gate and rollback decisions with their significance (NULL where not computed),
    and the Airflow task that wrote each (:data:`AIRFLOW_COLUMNS`, NULL outside Airflow).

    ``compared`` names, per row, what its ``gate_diff`` compares (the first minus the second):
    a challenger with the champion it faced ("als vs champion ease"), or, where no champion
    was defended (a first run, or the champion's family had no candidate), the winner with the
    runner-up or with the best mean it was preferred to. None where the row has no difference.
    """
    present = {c["name"] for c in sa.inspect(engine).get_columns("model_runs")}
    # The Airflow task that wrote the row (recorded since the columns exist; the page never alters).
    airflow = "".join(f", {c}" if c in present else f", NULL AS {c}" for c in AIRFLOW_COLUMNS)
    frame = _frame(engine, "SELECT run_date, family, status, ndcg_at_k, gate_diff, gate_ci_low, gate_ci_high, "
                           f"gate_p_value, reason{airflow} FROM model_runs WHERE stage IN ('gate', 'rollback') "
                           "ORDER BY run_date DESC, id DESC LIMIT :n", n=limit)
    if frame.empty:
        return frame
    dates = sorted(set(frame["run_date"]))
    # The date's gated candidates and their own gate_diff (vs the gate's reference, which has none).
    cands = _frame(engine, "SELECT run_date, family, gate_diff FROM model_runs WHERE stage = 'candidate' "
                           f"AND status IN ({_GATED_SQL}) AND run_date >= :first AND run_date <= :last",
                   first=dates[0], last=dates[-1])
    by_date: dict[str, dict[str, float | None]] = {}
    for row in cands.itertuples(index=False):
        by_date.setdefault(row.run_date, {})[row.family] = None if pd.isna(row.gate_diff) else float(row.gate_diff)
    champions = _frame(engine, "SELECT run_date, family FROM model_runs WHERE stage = 'gate' "
                               f"AND status IN ({_CHAMPION_SQL}) AND run_date < :last ORDER BY run_date, id",
                       last=dates[-1])
    frame["compared"] = [
        None if row.status not in CHAMPION_STATUSES or pd.isna(row.gate_diff) else _compared(
            row.family, row.status, float(row.gate_diff), _champion_before(champions, row.run_date),
            by_date.get(row.run_date, {}))
        for row in frame.itertuples(index=False)]
    return frame


def _champion_before(champions: pd.DataFrame, day: str) -> str | None:
    """The champion family of the latest gate before ``day`` (as the gate itself took it)."""
    earlier = champions[champions["run_date"] < day] if not champions.empty else champions
    return None if earlier.empty else str(earlier.iloc[-1]["family"])


def _compared(winner: str, status: str, diff: float, champion_before: str | None,
              cands: dict[str, float | None]) -> str:
    """What a gate row's difference compares, from the date's candidates (see :func:`gate_decisions`)."""
    others = {f: d for f, d in cands.items() if f != winner and d is not None}

    def closest(target: float) -> str | None:
        return min(others, key=lambda f: abs(others[f] - target)) if others else None

    if status == CHAMPION_KEPT:  # the champion stayed: the difference is its best challenger's gap
        return f"{closest(diff) or 'best challenger'} vs champion {winner}"
    if (status == PROMOTED and champion_before not in (None, winner)
            and (not cands or champion_before in cands)):
        return f"{winner} vs champion {champion_before}"
    # No champion defended: the best mean is the candidates' reference (the one without a diff).
    reference = next((f for f, d in cands.items() if d is None), None)
    if reference is not None and reference != winner:
        return f"{winner} vs best mean {reference}"
    return f"{winner} vs runner-up {closest(-diff) or '(not recorded)'}"


def guard_checks(engine: Engine, limit: int = 40) -> pd.DataFrame:
    """The latest nights' failed guard checks and operators' allows (README 'Guards'), newest first.

    Empty for a database made before the guards (its table comes with the next stage that runs).
    """
    if not sa.inspect(engine).has_table("guard_checks"):
        return pd.DataFrame()
    return _frame(engine, "SELECT run_date, stage, check_name, value, threshold, decision, note FROM guard_checks "
                          "WHERE passed = :f OR check_name = 'operator_allow' ORDER BY run_date DESC, id LIMIT :n",
                  f=False, n=limit)


def list_overlap(engine: Engine) -> pd.DataFrame:
    """Each night's overlap of the champion's lists with the lists live before them (normally the
    previous night's), as the output guard measured it: run_date, overlap, threshold, passed, decision.

    ``overlap`` is the mean share of a user's live list kept in the new one; NULL where there was
    nothing live to compare with. Empty before the guards (no ``guard_checks`` table).
    """
    if not sa.inspect(engine).has_table("guard_checks"):
        return pd.DataFrame()
    return _frame(engine, "SELECT run_date, value AS overlap, threshold, passed, decision FROM guard_checks "
                          "WHERE stage = 'output' AND check_name = 'overlap' ORDER BY run_date, id")


# -- one user: history beside recommendations ------------------------------------------------
def item_titles(engine: Engine) -> dict[str, str]:
    """Item id -> title from the ``items`` table (empty when no titles were ingested)."""
    frame = _frame(engine, "SELECT item_id, title FROM items")
    return {} if frame.empty else dict(zip(map(str, frame[C.ITEM]), frame[C.TITLE].fillna(""), strict=True))


_matrix_cache: dict[tuple[str, float], Interactions] = {}
_matrix_lock = threading.Lock()


def full_matrix(settings: Settings, run_date: str) -> Interactions | None:
    """The date's full interactions matrix (``runs/<date>/full``), or None when it is gone.

    The last one read is kept: every lookup against the same live date reuses it.
    """
    path = RunFolder.of(settings, run_date).matrix("full")
    marker = path / "indptr.npy"
    if not marker.exists():
        return None
    key = (str(path), marker.stat().st_mtime)
    with _matrix_lock:
        hit = _matrix_cache.get(key)
    if hit is None:
        hit = Interactions.load(path)
        with _matrix_lock:
            _matrix_cache.clear()
            _matrix_cache[key] = hit
    return hit


_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: "²" or "٣" are digits to str.isdigit, not to int


def close_ids(query: str, known: list[str], n: int = 5) -> list[str]:
    """Up to ``n`` known ids near ``query``: numerically nearest for an integer, then by spelling.

    ``query`` is taken exactly as typed (spaces are part of an id). Numbers are compared as
    Python integers, so a 23-digit id neither overflows nor rounds.
    """
    out: list[str] = []
    if _INTEGER.fullmatch(query) and len(query) <= 1000:
        target = int(query)
        numeric = ((abs(int(k) - target), i) for i, k in enumerate(known)
                   if len(k) <= 1000 and _INTEGER.fullmatch(k))
        out.extend(known[i] for _, i in heapq.nsmallest(n, numeric))
    for match in difflib.get_close_matches(query, known, n=n, cutoff=0.5):
        if match not in out:
            out.append(match)
    return out[:n]


@dataclass
class UserLookup:
    """What the page shows for one looked-up id."""

    user_id: str
    known: bool  # in the live lists or in the model's data
    recommendations: pd.DataFrame  # rank, item_id, title, and a score column named for what it is
    source: str  # "personal" | "popular"
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    history_total: int = 0
    suggestions: list[str] = field(default_factory=list)
    message: str = ""
    # Where the list shown comes from: the live model and its data date, or the fallback's date.
    model_version: str = ""
    run_date: str = ""


def _history(data: Interactions, row: int, titles: dict[str, str], n: int) -> tuple[pd.DataFrame, int]:
    start, end = data.matrix.indptr[row], data.matrix.indptr[row + 1]
    items = np.asarray(data.item_ids, dtype=object)[data.matrix.indices[start:end]]
    frame = pd.DataFrame({C.ITEM: items, C.TITLE: [titles.get(i, "") for i in items],
                          C.RATING: [f"{v:g}" for v in data.matrix.data[start:end]]})
    if data.pair_seconds is not None:
        seconds = data.pair_seconds[start:end]
        frame["last seen"] = pd.to_datetime(seconds, unit="s", utc=True).strftime("%Y-%m-%d")
        frame = frame.iloc[(-seconds).argsort(kind="stable")]  # newest first
    else:
        frame = frame.iloc[(-data.matrix.data[start:end]).argsort(kind="stable")]  # best rated first
    return frame.head(n).reset_index(drop=True), end - start


def lookup_user(engine: Engine, user_id: str, settings: Settings | None = None, n: int = 20,
                history_n: int = 30) -> UserLookup:
    """One user's live list beside their history; for an unknown id, close known ids and the fallback list.

    ``user_id`` is looked up exactly as given: spaces around it, or a trailing NUL, make
    another id (as they do at ingest).
    """
    titles = item_titles(engine)
    champ = champion(engine)
    data = full_matrix(settings, champ.run_date) if settings is not None and champ is not None else None
    history, total = pd.DataFrame(), 0
    row = None
    if data is not None:
        found = int(positions(data.user_ids, np.array([user_id], dtype=object))[0])
        row = found if found >= 0 else None
        if row is not None:
            history, total = _history(data, row, titles, history_n)
    personal = _frame(engine, "SELECT r.rank, r.item_id, i.title, r.score FROM recommendations r "
                              "LEFT JOIN items i ON i.item_id = r.item_id WHERE r.user_id = :u "
                              "ORDER BY r.rank LIMIT :n", u=user_id, n=n)
    if not personal.empty:
        recs = personal.rename(columns={C.SCORE: "model score"})
        return UserLookup(user_id, True, recs, "personal", history, total,
                          model_version=champ.model_version if champ else "", run_date=champ.run_date if champ else "")
    popular = _frame(engine, "SELECT p.rank, p.item_id, i.title, p.score, p.run_date FROM popular_items p "
                             "LEFT JOIN items i ON i.item_id = p.item_id ORDER BY p.rank LIMIT :n", n=n)
    popular_date = str(popular[C.RUN_DATE].iloc[0]) if not popular.empty else ""
    popular = popular.drop(columns=[C.RUN_DATE], errors="ignore")
    if not popular.empty:
        # popular_items.score counts users per item: a count, not comparable with model scores.
        popular[C.SCORE] = popular[C.SCORE].round().astype("int64")
    recs = popular.rename(columns={C.SCORE: "users who interacted"})
    if row is not None:
        return UserLookup(user_id, True, recs, "popular", history, total, run_date=popular_date, message=(
            f"User {user_id!r} is known to the model but has no personal list "
            "(every item already seen?): apps serve the popular items below."))
    known = ([str(u) for u in data.user_ids] if data is not None else
             [str(u) for u in _frame(engine, "SELECT DISTINCT user_id FROM recommendations")[C.USER]]
             if champ is not None else [])
    suggestions = close_ids(user_id, known)
    return UserLookup(user_id, False, recs, "popular", suggestions=suggestions, run_date=popular_date, message=(
        f"Unknown user {user_id!r}: no such user in the live recommendations or the model's data. "
        "Apps serve such users the popular items below (fallback)."))


# -- one item: "more like this" ---------------------------------------------------------------
@dataclass
class ItemLookup:
    """What the page shows for one looked-up item: its live ``similar_items`` list."""

    item_id: str
    title: str
    similar: pd.DataFrame  # rank, similar_item_id, title, score
    model_version: str = ""
    run_date: str = ""
    suggestions: list[str] = field(default_factory=list)
    message: str = ""


def lookup_item(engine: Engine, item_id: str, n: int = 20) -> ItemLookup:
    """The live "more like this" list of ``item_id`` (exactly as given), with titles; for an item
    without one, why, and close known item ids."""
    titles = item_titles(engine)
    title = titles.get(item_id, "")
    if "similar_items" not in set(sa.inspect(engine).get_view_names()) | set(sa.inspect(engine).get_table_names()):
        return ItemLookup(item_id, title, pd.DataFrame(), message="no similar_items view yet: run recjobs initdb")
    similar = _frame(engine, "SELECT s.rank, s.similar_item_id, i.title, s.score, s.model_version "
                             "FROM similar_items s LEFT JOIN items i ON i.item_id = s.similar_item_id "
                             "WHERE s.item_id = :i ORDER BY s.rank LIMIT :n", i=item_id, n=n)
    live = _frame(engine, "SELECT run_date, model_version FROM publications WHERE kind = 'similar_items' "
                          "AND is_live = :t", t=True)
    run_date = str(live["run_date"].iloc[0]) if not live.empty else ""
    if not similar.empty:
        version = str(similar["model_version"].iloc[0])
        return ItemLookup(item_id, title, similar.drop(columns=["model_version"]).rename(
            columns={C.SCORE: "similarity"}), version, run_date)
    if live.empty:
        return ItemLookup(item_id, title, pd.DataFrame(), message=(
            "No similar items are published: the champion has no item vectors (popularity), or "
            "nothing was published yet."))
    known = [str(i) for i in _frame(engine, "SELECT DISTINCT item_id FROM similar_items")[C.ITEM]]
    return ItemLookup(item_id, title, pd.DataFrame(), str(live["model_version"].iloc[0]), run_date,
                      suggestions=close_ids(item_id, known), message=(
                          f"No similar items for {item_id!r}: it is not in the live similar_items "
                          "(an item the model has not seen, or a mistyped id)."))


# -- the champion's item vectors ---------------------------------------------------------------
@dataclass(frozen=True)
class LiveArtifact:
    """Where the live champion's final model should be, and which version is live."""

    path: Path | None
    model_version: str
    run_date: str


def live_artifact(engine: Engine, settings: Settings | None = None) -> LiveArtifact | None:
    """The final model behind the live list (from ``model_runs``' final row), None before a publish."""
    champ = champion(engine)
    if champ is None:
        return None
    finals = _frame(engine, "SELECT model_version, artifact_path FROM model_runs WHERE stage = 'final' "
                            "AND run_date = :d ORDER BY id DESC", d=champ.run_date)
    path = None
    if not finals.empty:
        same = finals[finals["model_version"] == champ.model_version]
        row = (same if not same.empty else finals).iloc[0]
        path = Path(row["artifact_path"]) if row["artifact_path"] else None
    if path is None and settings is not None:
        path = RunFolder.of(settings, champ.run_date).final
    return LiveArtifact(path, champ.model_version, champ.run_date)


def champion_map(engine: Engine, settings: Settings | None = None) -> EmbeddingMap:
    """The embedding map of the live champion; its ``message`` says why there are no points."""
    live = live_artifact(engine, settings)
    if live is None:
        return EmbeddingMap("", "", 0, message="no model published yet")
    family = family_of(live.model_version)
    if live.path is None or not (live.path / "meta.json").exists():
        return EmbeddingMap(live.model_version, family, 0, message=(
            f"the champion's model artifact is not available at {live.path or '(no path recorded)'}"))
    features = Lake.of(settings).read_side("item_features") if settings is not None else None
    return load_map(live.path, item_titles(engine), features)


__all__ = [
    "AIRFLOW_COLUMNS", "Champion", "DASHBOARD_TABLES", "DASHBOARD_VIEWS", "ItemLookup", "LiveArtifact", "UserLookup", "champion",
    "champion_map", "close_ids", "failed_nights", "full_matrix", "gate_decisions", "guard_checks", "ingest_by_date",
    "item_titles", "list_overlap", "live_artifact", "lookup_item", "lookup_user", "metrics_by_date", "missing_schema",
    "published_versions", "sqlite_file_missing",
]
