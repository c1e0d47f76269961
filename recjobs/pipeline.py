"""The nightly pipeline as plain functions of (settings, logical date).

Stages pass paths and ids, never data frames, so each can run in its own process
(an Airflow task, a CLI call) and be retried alone. Each writes only under its own
date (``runs/<date>/``, ``model_runs`` rows of that date, a new publication), so
reruns and backfills overwrite their own results and nothing else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recjobs import columns as C
from recjobs.db import ensure_schema, make_engine, model_runs, popular_items
from recjobs.evaluate import Metrics, PairedTest, PerUser, evaluate_model, paired_test
from recjobs.faults import fault_point
from recjobs.features import load_side_features
from recjobs.filters import blocked_items
from recjobs.heartbeat import Heartbeat
from recjobs.interactions import Events, Holdout, Interactions
from recjobs.lake import read_events
from recjobs.models import Recommender, get_family
from recjobs.publish import PublishResult, SwapPolicy, load_staging, rank_to_staging
from recjobs.rerank import PostProcess, build_postprocess
from recjobs.settings import Settings
from recjobs.split import plan_split

log = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """A stage cannot run; the message says what is missing and which command makes it."""


def parse_date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise PipelineError(f"bad date {value!r}: expected YYYY-MM-DD") from None


def cutoff_of(run_date: dt.date) -> dt.datetime:
    """End of the logical date's data interval: interactions strictly before it are used."""
    return dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def engine_for(settings: Settings) -> Engine:
    """An engine on the recommendations database, with the schema in place."""
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    ensure_schema(engine)
    return engine


def run_dir(settings: Settings, run_date: dt.date) -> Path:
    return settings.runs_dir / run_date.isoformat()


def _window(settings: Settings, run_date: dt.date) -> tuple[dt.datetime, dt.datetime | None]:
    cutoff = cutoff_of(run_date)
    start = cutoff - dt.timedelta(days=settings.train_window_days) if settings.train_window_days else None
    return cutoff, start


def load_events(settings: Settings, run_date: dt.date) -> Events:
    """The date's training window from the lake, coded; fails clearly when it is empty."""
    cutoff, start = _window(settings, run_date)
    events = read_events(settings.ratings_dir, cutoff, start)
    if events is None:
        raise PipelineError(
            f"no interactions before {cutoff.isoformat()} in {settings.ratings_dir}: "
            "ingest some first (recjobs ingest PATH)"
        )
    return events


def _fingerprint(ordered: Events) -> str:
    # ``ordered`` is in (user, time, item) order, canonical since ingest keeps (user, item,
    # timestamp) unique; ids are hashed by value, so the digest depends on the data only.
    digest = hashlib.sha256()
    for array in (ordered.users, ordered.items, ordered.millis, ordered.ratings):
        digest.update(np.ascontiguousarray(array).tobytes())
    for ids in (ordered.user_ids, ordered.item_ids):
        digest.update("\x1f".join(map(str, ids)).encode())
    return digest.hexdigest()[:16]


# -- split -------------------------------------------------------------------------
def prepare(settings: Settings, run_date: str | dt.date) -> Path:
    """Split ``run_date``'s window and write what later stages load to ``runs/<date>/``.

    Reads the lake once, codes the ids once (Arrow dictionary encoding, no Python
    object per row) and writes the training matrix, the coded holdout and the full
    matrix (everything before the cutoff) as ``.npy`` folders.
    """
    day = parse_date(run_date)
    started = time.perf_counter()
    with Heartbeat(log, f"split {day}") as beat:
        beat.phase("reading the window from the lake")
        events = load_events(settings, day)
        log.info("read %d interactions for %s in %.1fs", len(events), day, time.perf_counter() - started)
        # The split's protocol (split.protocol) decides the masks; its global_time cutoff, if
        # any, is measured back from the run's cutoff.
        beat.phase(f"ordering {len(events):,} rows by (user, time, item) and planning the {settings.split.protocol} "
                   "split")
        plan = plan_split(events, settings.split, int(cutoff_of(day).timestamp() * 1000))
        held, in_train, holdout_cutoff = plan.held, plan.train, plan.cutoff_millis
        # One reordering to (user, time, item): the matrices below then need no time sort.
        events = events.take(plan.order)
        del plan
        out = run_dir(settings, day)
        out.mkdir(parents=True, exist_ok=True)
        fingerprint = _fingerprint(events)
        # One matrix at a time, each freed once saved: the stage's peak memory is its task's.
        beat.phase("writing the full matrix (everything before the cutoff)")
        Interactions.from_events(events, time_ordered=True).save(out / "full")
        train = events.take(in_train)
        n_train = len(train)
        beat.phase(f"writing the training matrix ({n_train:,} rows)")
        train_data = Interactions.from_events(train, time_ordered=True)
        del train
        train_data.save(out / "train")
        holdout = events.take(held)
        n_holdout = len(holdout)
        beat.phase(f"writing the holdout ({n_holdout:,} rows)")
        Holdout.from_events(holdout, train_data).save(out / "holdout")
        del holdout, train_data
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
        "split_protocol": settings.split.protocol,
        "holdout_cutoff": None if holdout_cutoff is None
        else dt.datetime.fromtimestamp(holdout_cutoff / 1000, dt.UTC).isoformat(),
    }
    (out / "snapshot.json").write_text(json.dumps(snapshot, indent=2))
    log.info("split %s (%s%s): %d train / %d holdout rows, %d users, %d items in %.1fs", day,
             settings.split.protocol, f", cutoff {snapshot['holdout_cutoff']}" if holdout_cutoff is not None else "",
             n_train, n_holdout, snapshot["users"], snapshot["items"], time.perf_counter() - started)
    return out


def _snapshot(settings: Settings, day: dt.date) -> dict[str, Any]:
    path = run_dir(settings, day) / "snapshot.json"
    if not path.exists():
        raise PipelineError(f"no split for {day}: run `recjobs split --date {day}` first")
    return json.loads(path.read_text())


def load_matrix(settings: Settings, day: dt.date, part: str) -> Interactions:
    """The date's ``train`` or ``full`` (everything before the cutoff) matrix from :func:`prepare`."""
    path = run_dir(settings, day) / part
    if not path.exists():
        raise PipelineError(f"no {part} matrix for {day} in {path}: run `recjobs split --date {day}` first")
    return Interactions.load(path)


def model_version(family: str, day: dt.date, params: dict[str, Any], seed: int, fingerprint: str, stage: str) -> str:
    """A version that is the same whenever the inputs are, so reruns reproduce it."""
    blob = json.dumps([family, params, seed, fingerprint, stage], sort_keys=True, default=str)
    return f"{family}-{day:%Y%m%d}-{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def _fit(settings: Settings, family: str, data: Interactions) -> tuple[Recommender, float]:
    cls = get_family(family)
    model = cls(settings.model_params(family), seed=settings.seed)
    features = load_side_features(settings, data)
    log.info("fitting %s on %d users x %d items (%d interactions)", family, data.n_users, data.n_items, data.nnz)
    start = time.perf_counter()
    model.fit(data, features)
    seconds = time.perf_counter() - start
    log.info("fitted %s in %.1fs", family, seconds)
    return model, seconds


# -- train + evaluate candidates -------------------------------------------------------
def candidate_path(settings: Settings, day: dt.date, family: str) -> Path:
    return run_dir(settings, day) / "candidates" / family


# Per-user metrics of an evaluated candidate, inside its artifact directory (so retraining
# the candidate, which replaces the directory, also withdraws them).
PER_USER_FILE = "per_user.npz"


def train_candidate(settings: Settings, engine: Engine, run_date: str | dt.date, family: str) -> Path:
    """Fit ``family`` on the split's training part and save it as that date's candidate.

    Any earlier result of this family for the date is withdrawn first, so a retry that
    fails cannot leave a stale candidate for the gate to pick.
    """
    day = parse_date(run_date)
    snap = _snapshot(settings, day)
    _replace_rows(engine, day, "candidate", family, [{"family": family, "model_version": "-", "status": "training"}])
    data = load_matrix(settings, day, "train")
    model, seconds = _fit(settings, family, data)
    params = settings.model_params(family).model_dump()
    # The candidate's training part depends on the split protocol too, not only on the data.
    split_key = f"{snap['fingerprint']}/{snap.get('split_protocol', 'per_user')}/{snap.get('holdout_cutoff')}"
    version = model_version(family, day, params, settings.seed, split_key, "candidate")
    return model.save(candidate_path(settings, day, family), model_version=version, fit_seconds=seconds,
                      run_date=day.isoformat(), stage="candidate")


def _replace_rows(engine: Engine, day: dt.date, stage: str, family: str | None, rows: list[dict[str, Any]]) -> None:
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        cond = (model_runs.c.run_date == day.isoformat()) & (model_runs.c.stage == stage)
        if family is not None:
            cond &= model_runs.c.family == family
        conn.execute(model_runs.delete().where(cond))
        for row in rows:
            conn.execute(model_runs.insert().values(run_date=day.isoformat(), stage=stage, created_at=now, **row))


def evaluate_candidate(settings: Settings, engine: Engine, run_date: str | dt.date, family: str) -> Metrics:
    """Evaluate the saved candidate on the holdout and record it in ``model_runs``."""
    day = parse_date(run_date)
    path = candidate_path(settings, day, family)
    if not (path / "meta.json").exists():
        raise PipelineError(f"no {family} candidate for {day}: run `recjobs train --date {day} --family {family}`")
    with Heartbeat(log, f"evaluate {family} {day}") as beat:
        beat.phase("loading the candidate, the training matrix and the holdout")
        model = Recommender.load(path)
        meta = json.loads((path / "meta.json").read_text())
        train = load_matrix(settings, day, "train")
        snap = _snapshot(settings, day)
        features = load_side_features(settings, train)
        holdout = Holdout.load(run_dir(settings, day) / "holdout")
        # The gate judges the lists as published: after business rules and re-ranking
        # (recjobs.rerank), with the raw ranking's metrics kept beside them in raw_metrics.
        # Neutral settings: post is None and the one evaluation is the raw one.
        post = build_postprocess(settings, day, model, train, features)
        beat.phase("ranking and scoring the holdout's users")
        metrics = evaluate_model(model, train, holdout, settings.evaluate.k, settings.evaluate.chunk_users,
                                 item_features=None if features is None else features.item,
                                 rank=None if post is None else _published_rank(post, settings))
        if post is not None:
            beat.phase("scoring the raw ranking too (before rules and re-ranking)")
        raw = None if post is None else evaluate_model(
            model, train, holdout, settings.evaluate.k, settings.evaluate.chunk_users,
            item_features=None if features is None else features.item)
    if raw is not None:
        log.info("%s on %s: ndcg@%d %.4f as ranked, %.4f as published (rules and re-ranking)", family, day,
                 raw.k, raw.ndcg, metrics.ndcg)
    # Per-user metrics next to the candidate, for the gate's paired test; the fingerprint
    # lets the gate check that two candidates were scored on the same split.
    if metrics.per_user is not None:
        metrics.per_user.save(path / PER_USER_FILE, fingerprint=snap["fingerprint"],
                              protocol=snap.get("split_protocol", "per_user"))
    log.info("%s on %s: ndcg@%d=%.4f precision=%.4f recall=%.4f map=%.4f coverage=%.3f diversity=%.3f (%s) "
             "novelty=%.2f bits, %d users", family, day, metrics.k, metrics.ndcg, metrics.precision, metrics.recall,
             metrics.map, metrics.coverage, metrics.diversity, metrics.diversity_basis, metrics.novelty,
             metrics.users)
    _replace_rows(engine, day, "candidate", family, [{
        "family": family, "model_version": meta["model_version"], "status": "evaluated",
        "k": metrics.k, "precision_at_k": metrics.precision, "recall_at_k": metrics.recall,
        "ndcg_at_k": metrics.ndcg, "map_at_k": metrics.map, "coverage": metrics.coverage,
        "diversity": _finite(metrics.diversity), "novelty": _finite(metrics.novelty),
        "eval_users": metrics.users, "fit_seconds": meta["fit_seconds"], "eval_seconds": metrics.seconds,
        "params": json.dumps(meta["params"], sort_keys=True),
        "data_snapshot": json.dumps(snap, sort_keys=True), "artifact_path": str(path),
        "raw_metrics": None if raw is None else json.dumps(_metric_columns(raw), sort_keys=True),
    }])
    return metrics


def _published_rank(post: PostProcess, settings: Settings) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Evaluation's ranking through ``post``: the first k of the published top-N lists."""
    k = settings.evaluate.k
    n = max(k, settings.publish.top_n)  # re-ranking picks greedily, so a top-N's first k is its top-k

    def rank(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top, scores = post.recommend(rows, n)
        return top[:, :k], scores[:, :k]

    return rank


def _metric_columns(m: Metrics) -> dict[str, float | None]:
    """``m`` under the names of model_runs' metric columns (the keys of raw_metrics)."""
    return {"k": m.k, "precision_at_k": m.precision, "recall_at_k": m.recall, "ndcg_at_k": m.ndcg,
            "map_at_k": m.map, "coverage": m.coverage, "diversity": _finite(m.diversity),
            "novelty": _finite(m.novelty)}


def _finite(value: float | None) -> float | None:
    # NaN (not measurable) is stored as NULL: SQLite and PostgreSQL disagree on NaN.
    return None if value is None or not np.isfinite(value) else float(value)


def record_failure(engine: Engine, run_date: str | dt.date, family: str, error: BaseException) -> None:
    """Record that ``family`` produced no candidate for the date, with the error."""
    day = parse_date(run_date)
    reason = "".join(traceback.format_exception_only(type(error), error)).strip()
    _replace_rows(engine, day, "candidate", family,
                  [{"family": family, "model_version": "-", "status": "failed", "reason": reason[:2000]}])


# -- gate --------------------------------------------------------------------------
@dataclass(frozen=True)
class GateDecision:
    family: str
    candidate_version: str
    promoted: bool
    reason: str


class NoCandidatesError(PipelineError):
    """The date has no evaluated candidate to gate; its 'no_candidates' gate row says why."""


_METRIC_COLUMN = {"ndcg": "ndcg_at_k", "map": "map_at_k", "precision": "precision_at_k", "recall": "recall_at_k"}
# Gate rows with these statuses name a champion; 'no_candidates' rows record a night that
# had nothing to gate and must never be taken for one.
CHAMPION_STATUSES = ("promoted", "champion_kept")
NO_CANDIDATES = "no_candidates"


def champion_before(engine: Engine, day: dt.date) -> sa.Row | None:
    """The champion decided by the latest gate before ``day`` (so reruns see the same one)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(model_runs)
            .where(model_runs.c.stage == "gate", model_runs.c.run_date < day.isoformat(),
                   model_runs.c.status.in_(CHAMPION_STATUSES))
            .order_by(model_runs.c.run_date.desc(), model_runs.c.id.desc())
        ).first()


def _as_utc(value: dt.datetime) -> dt.datetime:
    # SQLite hands timezone-aware columns back naive; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def earlier_dates_in_flight(settings: Settings, engine: Engine, run_date: str | dt.date,
                            now: dt.datetime | None = None) -> list[dt.date]:
    """Earlier dates whose gate this date's gate should wait for, oldest first.

    A date counts when it lies within ``gate.wait_window_days`` before ``run_date``, has
    candidate rows but no gate row yet, and a candidate row was written within the last
    ``gate.wait_timeout_minutes`` (older ones were abandoned: waiting cannot help).
    """
    day = parse_date(run_date)
    gate = settings.gate
    if gate.wait_window_days == 0:
        return []
    first = (day - dt.timedelta(days=gate.wait_window_days)).isoformat()
    active_since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=gate.wait_timeout_minutes)
    in_window = (model_runs.c.run_date >= first) & (model_runs.c.run_date < day.isoformat())
    with engine.connect() as conn:
        gated = set(conn.execute(sa.select(model_runs.c.run_date).distinct()
                                 .where(in_window, model_runs.c.stage == "gate")).scalars())
        latest = conn.execute(sa.select(model_runs.c.run_date, sa.func.max(model_runs.c.created_at))
                              .where(in_window, model_runs.c.stage == "candidate")
                              .group_by(model_runs.c.run_date)).all()
    return sorted(parse_date(d) for d, at in latest
                  if d not in gated and at is not None and _as_utc(at) >= active_since)


def record_no_candidates(engine: Engine, run_date: str | dt.date, reason: str) -> None:
    """Record that ``run_date`` had nothing to gate, as its gate row with status 'no_candidates'."""
    day = parse_date(run_date)
    _replace_rows(engine, day, "gate", None,
                  [{"family": "-", "model_version": "-", "status": NO_CANDIDATES, "reason": reason[:2000]}])
    log.warning("gate %s: %s", day, reason)


def _no_candidates_reason(engine: Engine, day: dt.date) -> str:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(model_runs.c.family, model_runs.c.status, model_runs.c.reason).where(
            model_runs.c.run_date == day.isoformat(), model_runs.c.stage == "candidate")).all()
    if not rows:
        return (f"no candidates for {day}: no family was trained (did ingest or split fail? "
                f"see the run's ingest and split tasks, or run `recjobs split --date {day}`)")
    detail = "; ".join(f"{r.family}: {r.status}" + (f" ({r.reason.splitlines()[-1][:200]})" if r.reason else "")
                       for r in rows)
    return f"no evaluated candidates for {day}: {detail}"


def promote(settings: Settings, engine: Engine, run_date: str | dt.date, note: str = "") -> GateDecision:
    """Choose the champion for ``run_date`` from the evaluated candidates; see README 'Gate'.

    The best challenger replaces the champion only when its mean gain on the gate metric
    is above ``gate.margin`` and significant by a paired test over the holdout's users
    (``gate.test`` at ``gate.significance``), from the per-user metrics saved next to each
    candidate. Every candidate row gets its comparison with the champion (gate_diff,
    gate_ci_low/high, gate_p_value), the gate row the deciding one.
    With no evaluated candidate, records a 'no_candidates' gate row and raises
    :class:`NoCandidatesError`. ``note`` (e.g. how long the caller waited for earlier
    gates) is appended to the recorded reason.
    """
    day = parse_date(run_date)
    metric = _METRIC_COLUMN[settings.gate.metric]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(model_runs).where(
                model_runs.c.run_date == day.isoformat(),
                model_runs.c.stage == "candidate",
                model_runs.c.status.in_(["evaluated", "promoted", "rejected", "champion_kept"]),
                model_runs.c.family.in_(settings.families),
            )
        ).all()
    notes = [note] if note else []
    in_flight = earlier_dates_in_flight(settings, engine, day)
    if in_flight:
        # Said in the reason: the champion compared with may not be the one those dates will decide.
        notes.append("gated while earlier date(s) " + ", ".join(map(str, in_flight))
                     + " had candidates but no gate yet")
    suffix = "".join(f"; {n}" for n in notes)
    if not rows:
        reason = _no_candidates_reason(engine, day) + suffix
        record_no_candidates(engine, day, reason)
        raise NoCandidatesError(reason)
    order = {f: i for i, f in enumerate(settings.families)}
    cands = sorted(rows, key=lambda r: (-getattr(r, metric), order[r.family]))
    best = cands[0]
    by_family = {r.family: r for r in rows}
    previous = champion_before(engine, day)
    gate, name = settings.gate, settings.gate.metric
    champ = by_family.get(previous.family) if previous is not None else None
    # Every candidate is compared with the champion's candidate (same holdout users), or,
    # with no champion to defend, with the best candidate; recorded on its row.
    reference = champ if champ is not None else best
    tests = {r.family: _paired(settings, r, reference) for r in cands if r.family != reference.family}
    decisive: PairedTest | None = None
    if champ is None:
        winner, promoted = best, True
        if len(cands) > 1:
            # Nothing to defend: the best takes it; its lead over the runner-up is said for the record.
            decisive = _paired(settings, best, cands[1])
            lead = f"; over runner-up {cands[1].family}: {_describe(decisive)}"
        else:
            lead = ""
        if previous is None:
            reason = f"first run: best candidate {best.family} by {name}@{best.k} ({getattr(best, metric):.4f}){lead}"
        else:
            reason = (f"champion family {previous.family} has no candidate on {day}; "
                      f"best candidate {best.family} ({name}={getattr(best, metric):.4f}) takes over{lead}")
    else:
        champ_score = getattr(champ, metric)
        challengers = [r for r in cands if r.family != champ.family]
        if not challengers:
            winner, promoted = champ, False
            reason = f"champion {champ.family} kept: it is the only candidate ({name}={champ_score:.4f})"
        else:
            challenger = challengers[0]
            decisive = tests[challenger.family]
            above = decisive.diff > gate.margin
            significant = decisive.p_value is None or decisive.p_value < gate.significance
            versus = (f"{challenger.family} {name}={getattr(challenger, metric):.4f} vs champion {champ.family} "
                      f"{champ_score:.4f}: {_describe(decisive)}")
            if above and significant:
                winner, promoted = challenger, True
                reason = f"{versus}; promoted: gain above the margin {gate.margin}" + (
                    f" and significant at {gate.significance}" if decisive.p_value is not None else "")
            else:
                winner, promoted = champ, False
                why = [f"gain not above the margin {gate.margin}"] if not above else []
                if not significant:
                    why.append(f"not significant at {gate.significance}")
                lead = "it is the best candidate; " if best.family == champ.family else ""
                reason = f"champion {champ.family} kept: {lead}best challenger {versus}; " + " and ".join(why)
    reason += suffix
    for r in cands:
        t = tests.get(r.family)
        log.info("gate %s: candidate %s %s@%s=%.4f diversity=%s novelty=%s%s", day, r.family, name, r.k,
                 getattr(r, metric), _fmt(r.diversity), _fmt(r.novelty),
                 f"; vs {reference.family}: {_describe(t)}" if t is not None else "")
    with engine.begin() as conn:
        for r in rows:
            status = ("promoted" if promoted else "champion_kept") if r.family == winner.family else "rejected"
            conn.execute(model_runs.update().where(model_runs.c.id == r.id).values(
                status=status, reason=reason, **_gate_columns(tests.get(r.family))))
    _replace_rows(engine, day, "gate", None, [{
        "family": winner.family, "model_version": winner.model_version,
        "status": "promoted" if promoted else "champion_kept", "reason": reason,
        "k": winner.k, "ndcg_at_k": winner.ndcg_at_k, "precision_at_k": winner.precision_at_k,
        "recall_at_k": winner.recall_at_k, "map_at_k": winner.map_at_k, "coverage": winner.coverage,
        "diversity": winner.diversity, "novelty": winner.novelty, **_gate_columns(decisive),
    }])
    log.info("gate %s: %s", day, reason)
    return GateDecision(winner.family, winner.model_version, promoted, reason)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _per_user(settings: Settings, row: sa.Row) -> tuple[PerUser, dict[str, str]] | None:
    path = (Path(row.artifact_path) if row.artifact_path
            else candidate_path(settings, parse_date(row.run_date), row.family)) / PER_USER_FILE
    return PerUser.load(path) if path.exists() else None


def _paired(settings: Settings, challenger: sa.Row, reference: sa.Row) -> PairedTest:
    """``challenger`` minus ``reference`` on the gate metric, paired over the holdout's users.

    Candidates evaluated before per-user metrics were saved (or on another split) cannot
    be paired: then only the difference of the means is known, and the test says so.
    """
    gate = settings.gate
    metric = _METRIC_COLUMN[gate.metric]
    plain = PairedTest(getattr(challenger, metric) - getattr(reference, metric), None, None, None, 0, "unpaired")
    a, b = _per_user(settings, challenger), _per_user(settings, reference)
    if a is None or b is None or any(a[1].get(key) != b[1].get(key) for key in ("fingerprint", "protocol")):
        return plain
    common, ia, ib = np.intersect1d(a[0].users, b[0].users, assume_unique=True, return_indices=True)
    if len(common) == 0:
        return plain
    return paired_test(a[0].values[gate.metric][ia], b[0].values[gate.metric][ib], gate.test, gate.significance,
                       gate.bootstrap_samples, settings.seed)


def _describe(test: PairedTest) -> str:
    if test.test == "unpaired":
        return f"{test.diff:+.4f} (no per-user metrics to pair: significance not tested)"
    if test.p_value is None:
        return f"{test.diff:+.4f} (gate.test=none: significance not tested)"
    return f"{test.describe()} (paired {test.test} over {test.users} users)"


def _gate_columns(test: PairedTest | None) -> dict[str, float | None]:
    if test is None:
        return {"gate_diff": None, "gate_ci_low": None, "gate_ci_high": None, "gate_p_value": None}
    return {"gate_diff": float(test.diff), "gate_ci_low": test.ci_low, "gate_ci_high": test.ci_high,
            "gate_p_value": test.p_value}


def gate_decision(engine: Engine, day: dt.date) -> sa.Row:
    """The date's gate row naming its champion; an error if the gate has not run or had no candidates."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(model_runs).where(model_runs.c.run_date == day.isoformat(), model_runs.c.stage == "gate")
        ).first()
    if row is None:
        raise PipelineError(f"no gate decision for {day}: run `recjobs promote --date {day}` first")
    if row.status not in CHAMPION_STATUSES:
        raise PipelineError(f"no champion for {day}: the gate recorded {row.status}: {row.reason}")
    return row


# -- final model and publish ---------------------------------------------------------
def final_path(settings: Settings, day: dt.date) -> Path:
    return run_dir(settings, day) / "final"


def train_final(settings: Settings, engine: Engine, run_date: str | dt.date) -> Path:
    """Retrain the date's champion family on all data up to the date and save it."""
    day = parse_date(run_date)
    decision = gate_decision(engine, day)
    snap = _snapshot(settings, day)
    data = load_matrix(settings, day, "full")
    model, seconds = _fit(settings, decision.family, data)
    from recjobs.coldstart import add_cold_items  # items with features and no interactions yet

    cold_items = add_cold_items(settings, model, data)
    params = settings.model_params(decision.family).model_dump()
    version = model_version(decision.family, day, params, settings.seed, snap["fingerprint"], "full")
    path = model.save(final_path(settings, day), model_version=version, fit_seconds=seconds,
                      run_date=day.isoformat(), stage="final")
    _replace_rows(engine, day, "final", None, [{
        "family": decision.family, "model_version": version, "status": "trained", "fit_seconds": seconds,
        "params": json.dumps(params, sort_keys=True), "artifact_path": str(path),
        "reason": f"champion retrained on all {snap['interactions']} interactions before {snap['cutoff']}"
                  + (f"; {cold_items} new items scored from their features" if cold_items else ""),
    }])
    return path


def _ranked_frames(
    keys: np.ndarray,
    targets: np.ndarray,
    rank: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    columns: tuple[str, str],
    chunk: int,
    version: str,
    span: range | None = None,
    order: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[pd.DataFrame]:
    """Long (key, target, rank, score, version) frames, ``chunk`` keys at a time, with progress.

    ``span`` limits the ranking to those key positions (a shard); default all keys.
    ``order`` puts the span's positions in the order to rank them in (the ranker's
    :meth:`~recjobs.models.base.Recommender.ranking_order`); default key order.
    """
    span = span if span is not None else range(len(keys))
    total = len(span)
    ordered = order(np.arange(span.start, span.stop)) if order is not None else np.arange(span.start, span.stop)
    started = time.perf_counter()
    next_report = 0.0
    for lo in range(0, total, chunk):
        rows = ordered[lo:lo + chunk]
        top, scores = rank(rows)
        valid = top >= 0
        ranks = np.broadcast_to(np.arange(1, top.shape[1] + 1), top.shape)
        yield pd.DataFrame({
            columns[0]: np.repeat(keys[rows], valid.sum(axis=1)),
            columns[1]: targets[top[valid]],
            C.RANK: ranks[valid],
            C.SCORE: scores[valid].astype(np.float64),
            C.MODEL_VERSION: version,
        })
        fault_point("publish.mid_shard")  # tests: a worker lost part-way through a shard
        elapsed = time.perf_counter() - started
        done = min(lo + chunk, total)
        if elapsed >= next_report or done == total:
            rate = done / max(elapsed, 1e-9)
            log.info("ranked %d/%d %s (%.0f/s, ETA %.0fs)", done, total, columns[0], rate, (total - done) / rate)
            next_report = elapsed + 10


def _user_frames(model: Recommender, seen: Interactions, n: int, chunk: int,
                 span: range | None = None, post: PostProcess | None = None) -> Iterator[pd.DataFrame]:
    # ``post``: business rules and re-ranking (recjobs.rerank); None ranks as the model does.
    rank = ((lambda rows: post.recommend(rows, n)) if post is not None
            else (lambda rows: model.recommend(rows, n, exclude=seen.matrix)))
    return _ranked_frames(model.user_ids, model.item_ids, rank,
                          (C.USER, C.ITEM), chunk, model.info.get("model_version", ""), span, model.ranking_order)


def _item_frames(model: Recommender, n: int, chunk: int, span: range | None = None,
                 post: PostProcess | None = None) -> Iterator[pd.DataFrame]:
    # ``post``: the item rules apply to neighbour lists too (recjobs.rerank).
    rank = (lambda rows: post.similar_items(rows, n)) if post is not None else (
        lambda rows: model.similar_items(rows, n))
    return _ranked_frames(model.item_ids, model.item_ids, rank,
                          (C.ITEM, C.SIMILAR_ITEM), chunk, model.info.get("model_version", ""), span)


def staging_dir(settings: Settings, day: dt.date) -> Path:
    """Where publishing stages the date's ranked lists as Parquet before loading them."""
    return run_dir(settings, day) / "publish"


def shard_span(n: int, shard: int, shards: int) -> range:
    """Positions ``[lo, hi)`` of shard ``shard`` of ``shards`` over ``n`` keys: contiguous, in order."""
    if not 0 <= shard < shards:
        raise PipelineError(f"shard {shard} is not in 0..{shards - 1} (publish.shards = {shards})")
    return range(n * shard // shards, n * (shard + 1) // shards)


def shard_path(settings: Settings, day: dt.date, kind: str, shard: int, shards: int) -> Path:
    """The staging file of one shard of list ``kind``; the name carries the shard count."""
    return staging_dir(settings, day) / kind / f"part-{shard:04d}-of-{shards:04d}.parquet"


def _final_model(settings: Settings, day: dt.date) -> tuple[Recommender, dict[str, Any]]:
    path = final_path(settings, day)
    if not (path / "meta.json").exists():
        raise PipelineError(f"no final model for {day}: run `recjobs train --date {day} --final` first")
    model = Recommender.load(path)
    meta = json.loads((path / "meta.json").read_text())
    model.info["model_version"] = meta["model_version"]
    return model, meta


def _published_kinds(model: Recommender) -> list[str]:
    # A champion without item vectors (popularity) has no neighbours to publish.
    return ["recommendations", "similar_items"] if model.has_similar_items() else ["recommendations"]


def rank_shard(settings: Settings, run_date: str | dt.date, shard: int = 0) -> list[Path]:
    """Rank shard ``shard`` of ``publish.shards`` (users, and items for neighbours) to staging files.

    Runs with no database connection: in Airflow each shard is a mapped task, so shards
    rank on as many workers as the executor has. A retried shard rewrites its own files
    atomically, so a shard killed mid-way leaves nothing for :func:`load_published` to
    double-count.
    """
    day = parse_date(run_date)
    shards = settings.publish.shards
    model, _ = _final_model(settings, day)
    p = settings.publish
    written = []
    post = None  # business rules and re-ranking (recjobs.rerank); None with neutral settings
    for kind in _published_kinds(model):
        if kind == "recommendations":
            from recjobs.ann import for_publish
            from recjobs.coldstart import align_seen, for_ranking

            # The model's items are the matrix's, then any new items it scored from features
            # (recjobs.coldstart); the seen matrix gets empty columns for those.
            seen = align_seen(load_matrix(settings, day, "full"), model)
            if seen is None:
                raise PipelineError(f"the final model for {day} was not trained on {day}'s split: "
                                    f"rerun `recjobs train --date {day} --final`")
            # Users with very few interactions may be ranked by item neighbours (coldstart.min_interactions).
            ranker = for_ranking(model, seen, settings.coldstart)
            # publish.ann: rank vector families through an index (recjobs.ann); built once per shard.
            ranker = for_publish(ranker, p, seen.matrix)
            post = build_postprocess(settings, day, ranker, seen)
            frames = _user_frames(ranker, seen, p.top_n, p.chunk_users, shard_span(len(model.user_ids), shard, shards),
                                  post)
        else:
            frames = _item_frames(model, p.similar_n, p.chunk_users, shard_span(len(model.item_ids), shard, shards),
                                  post)
        written.append(rank_to_staging(frames, kind, shard_path(settings, day, kind, shard, shards)))
    log.info("ranked shard %d of %d for %s: %s", shard + 1, shards, day, ", ".join(p.name for p in written))
    return written


def load_published(settings: Settings, engine: Engine, run_date: str | dt.date) -> list[PublishResult]:
    """Load every shard's staged lists as new versions and swap them live (see recjobs.publish).

    Fails naming the missing shards if any has not been ranked, before touching the database.
    """
    day = parse_date(run_date)
    shards = settings.publish.shards
    model, meta = _final_model(settings, day)
    kinds = _published_kinds(model)
    parts = {kind: [shard_path(settings, day, kind, s, shards) for s in range(shards)] for kind in kinds}
    missing = sorted({s for paths in parts.values() for s, path in enumerate(paths) if not path.exists()})
    if missing:
        raise PipelineError(f"shard(s) {', '.join(map(str, missing))} of {shards} not ranked for {day} "
                            f"(no {staging_dir(settings, day)}/<list>/part-N-of-{shards:04d}.parquet); run "
                            f"`recjobs publish --date {day} --shard N` for each, or rerun those mapped tasks")
    p = settings.publish
    results = [load_staging(engine, kind, paths, day.isoformat(), meta["model_version"], p.keep_versions,
                            history=kind == "recommendations", history_days=p.history_days,
                            swap=SwapPolicy.of(p))
               for kind, paths in parts.items()]
    _publish_popular(settings, engine, day, load_matrix(settings, day, "full"), results[0].live)
    with engine.begin() as conn:
        conn.execute(model_runs.delete().where(model_runs.c.run_date == day.isoformat(),
                                               model_runs.c.stage == "publish"))
        conn.execute(model_runs.insert().values(
            run_date=day.isoformat(), stage="publish", family=meta["family"],
            model_version=meta["model_version"], status="live" if results[0].live else "history",
            reason=f"{results[0].rows} rows in {results[0].table_name}", created_at=dt.datetime.now(dt.UTC)))
    for r in results:
        log.info("published %s: %d rows to %s in %.1fs (%s)", r.kind, r.rows, r.table_name, r.seconds,
                 "live" if r.live else "history only: a newer date is live")
    return results


def publish(settings: Settings, engine: Engine, run_date: str | dt.date) -> list[PublishResult]:
    """Rank every shard in this process, then load and swap: what the DAG's mapped tasks do.

    Ranking writes ``runs/<date>/publish/<list>/part-*.parquet`` with no database
    transaction open, so scoring never holds a write lock; loading is a short step.
    """
    for shard in range(settings.publish.shards):
        rank_shard(settings, run_date, shard)
    return load_published(settings, engine, run_date)


def _publish_popular(settings: Settings, engine: Engine, day: dt.date, seen: Interactions, live: bool) -> None:
    if not live:
        return
    # Users per item, as the popularity family counts; ties by item id, so reruns agree.
    users = np.asarray((seen.matrix != 0).sum(axis=0)).ravel()
    order = np.lexsort((seen.item_ids.astype(str), -users))
    # The item rules hold for the fallback list too (recjobs.filters).
    blocked = blocked_items(settings, seen.item_ids)
    order = (order if blocked is None else order[~blocked[order]])[: settings.publish.popular_n]
    rows = [{C.RANK: r + 1, C.ITEM: seen.item_ids[i], C.SCORE: float(users[i]), C.RUN_DATE: day.isoformat()}
            for r, i in enumerate(order)]
    from recjobs.coldstart import write_segments

    # Small tables: replacing their rows in one transaction is atomic for readers.
    with engine.begin() as conn:
        conn.execute(popular_items.delete())
        conn.execute(popular_items.insert(), rows)
        write_segments(conn, settings, seen, day.isoformat())  # per-segment lists for new users


# -- whole run ----------------------------------------------------------------------
@dataclass
class RunReport:
    run_date: str
    candidates: dict[str, Metrics]
    failures: dict[str, str]
    decision: GateDecision
    published: list[PublishResult]


def run_pipeline(settings: Settings, run_date: str | dt.date, ingest: bool = True) -> RunReport:
    """Everything the nightly DAG does for ``run_date``, in one process."""
    from recjobs.ingest import ingest_inbox

    day = parse_date(run_date)
    engine = engine_for(settings)
    try:
        if ingest:
            for report in ingest_inbox(settings, engine):
                log.info(report.summary())
        prepare(settings, day)
    except Exception as exc:
        # As in the DAG: the night ends with a 'no_candidates' gate row saying why, so the
        # gate history shows it and later gates skip it; the error still propagates.
        record_no_candidates(engine, day, f"no candidates for {day}: {type(exc).__name__}: {exc}")
        raise
    metrics: dict[str, Metrics] = {}
    failures: dict[str, str] = {}
    for family in settings.families:
        try:
            train_candidate(settings, engine, day, family)
            metrics[family] = evaluate_candidate(settings, engine, day, family)
        except Exception as exc:  # one family failing must not stop the others
            log.exception("family %s failed on %s", family, day)
            record_failure(engine, day, family, exc)
            failures[family] = f"{type(exc).__name__}: {exc}"
    decision = promote(settings, engine, day)
    train_final(settings, engine, day)
    published = publish(settings, engine, day)
    return RunReport(day.isoformat(), metrics, failures, decision, published)


__all__ = [
    "PipelineError", "NoCandidatesError", "prepare", "train_candidate", "evaluate_candidate", "promote",
    "earlier_dates_in_flight", "train_final",
    "publish", "run_pipeline", "engine_for",
]
