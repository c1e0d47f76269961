"""Benchmark the pipeline on MovieLens 100k (read from ../shared/data/ml-100k, never copied).

For each split protocol (per_user: each user's latest 20% held out; global_time: one
time cutoff, the latest 20% of interactions after it, for users seen before it) runs
ingest -> split -> train/evaluate every family -> gate -> final -> publish in a
throwaway RECJOBS_HOME and prints, per family, precision/recall/NDCG/MAP@10,
coverage, intra-list diversity, novelty, fit time and the paired comparison the gate
made (difference, interval, p-value), then the promoted family and publish
throughput. The last line is the same as JSON.

    .venv/bin/python scripts/benchmark_ml100k.py [--data DIR] [--families als,ease] [--protocols per_user]
        [--set KEY=VALUE] [--quiet]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"
PROTOCOLS = ("per_user", "global_time")


def _num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _cell(value: Any, fmt: str, width: int) -> str:
    v = _num(value)
    return f"{'-':>{width}}" if v is None else f"{v:{width}{fmt}}"


def run_protocol(args: argparse.Namespace, protocol: str, families: list[str]) -> dict[str, Any]:
    """One whole pipeline run under ``protocol``; the candidates' and the gate's rows."""
    from recjobs.cli import parse_set
    from recjobs.ingest import import_movielens
    from recjobs.pipeline import engine_for, run_pipeline
    from recjobs.runs import RunFolder
    from recjobs.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="recjobs-bench-") as home:
        overrides = parse_set(args.set)
        overrides.update(home=home, families=families)
        overrides.setdefault("split", {})
        overrides["split"] = {**overrides["split"], "protocol": protocol}
        settings = load_settings(overrides)
        engine = engine_for(settings)
        started = time.perf_counter()
        import_movielens(args.data, settings, engine)
        ingest_s = time.perf_counter() - started
        ratings = pd.read_csv(args.data / "u.data", sep="\t", header=None)
        last_day = pd.to_datetime(ratings[3].max(), unit="s", utc=True).date()
        started = time.perf_counter()
        report = run_pipeline(settings, last_day, ingest=False)
        total_s = time.perf_counter() - started
        snapshot = RunFolder.of(settings, last_day).snapshot()
        with engine.connect() as conn:
            cands = pd.read_sql("SELECT * FROM model_runs WHERE stage = 'candidate'", conn)
            gate = pd.read_sql("SELECT * FROM model_runs WHERE stage = 'gate'", conn).iloc[0]
        engine.dispose()
        # What each candidate's artifact says about itself (the ranker: labels, recall, features).
        infos = {}
        for family, path in zip(cands["family"], cands["artifact_path"], strict=True):
            meta = Path(str(path)) / "meta.json"
            if path and meta.exists():
                infos[family] = json.loads(meta.read_text()).get("info", {})
    return {"settings": settings, "day": last_day, "snapshot": snapshot, "report": report, "cands": cands,
            "gate": gate, "ingest_s": ingest_s, "total_s": total_s, "infos": infos}


def print_protocol(protocol: str, run: dict[str, Any]) -> dict[str, Any]:
    """Print one protocol's table; return its machine-readable summary."""
    settings, snap, report, gate = run["settings"], run["snapshot"], run["report"], run["gate"]
    k = settings.evaluate.k
    cands = run["cands"].set_index("family")
    if protocol == "global_time":
        how = f"global time cutoff {snap.get('holdout_cutoff')}: latest {settings.split.holdout_fraction:.0%} of " \
              "interactions, users seen before it"
    else:
        how = f"latest {settings.split.holdout_fraction:.0%} of each user's interactions"
    users = cands["eval_users"].dropna()
    print(f"\n== protocol {protocol} == MovieLens 100k, logical date {run['day']}, {how}; k={k}, "
          f"{int(users.max()) if len(users) else 0} users evaluated, {snap['train_rows']} train / "
          f"{snap['holdout_rows']} holdout rows")
    print(f"{'family':<12}{'P@10':>8}{'R@10':>8}{'NDCG@10':>9}{'MAP@10':>8}{'cover':>7}{'divers':>8}{'novel':>7}"
          f"{'fit s':>7}   gate: diff vs {'champion/best':<14}")
    out: dict[str, Any] = {"families": {}, "failures": dict(report.failures)}
    for family, m in report.candidates.items():
        row = cands.loc[family]
        ci = ("" if _num(row["gate_ci_low"]) is None
              else f"[{row['gate_ci_low']:+.4f}, {row['gate_ci_high']:+.4f}] p={row['gate_p_value']:.3g}")
        diff = "" if _num(row["gate_diff"]) is None else f"{row['gate_diff']:+.4f} "
        print(f"{family:<12}{m.precision:8.4f}{m.recall:8.4f}{m.ndcg:9.4f}{m.map:8.4f}{m.coverage:7.3f}"
              f"{_cell(m.diversity, '.3f', 8)}{_cell(m.novelty, '.2f', 7)}{_cell(row['fit_seconds'], '.1f', 7)}"
              f"   {diff}{ci}")
        out["families"][family] = {
            "precision": round(m.precision, 4), "recall": round(m.recall, 4), "ndcg": round(m.ndcg, 4),
            "map": round(m.map, 4), "coverage": round(m.coverage, 4),
            "diversity": None if _num(m.diversity) is None else round(m.diversity, 4),
            "novelty": None if _num(m.novelty) is None else round(m.novelty, 3),
            "fit_seconds": _num(row["fit_seconds"]), "users": m.users,
            "gate_diff": _num(row["gate_diff"]), "gate_p_value": _num(row["gate_p_value"]),
            "gate_ci_low": _num(row["gate_ci_low"]), "gate_ci_high": _num(row["gate_ci_high"]),
        }
    for family, err in report.failures.items():
        print(f"{family:<12}FAILED {err}")
    rated = cands[cands["baseline_rmse"].notna()] if "baseline_rmse" in cands else cands.iloc[:0]
    if len(rated):
        base = rated.iloc[0]
        print(f"ratings (holdout, explicit): bias baseline RMSE {base['baseline_rmse']:.4f} MAE "
              f"{base['baseline_mae']:.4f}", end="")
        out["ratings"] = {"baseline_rmse": _num(base["baseline_rmse"]), "baseline_mae": _num(base["baseline_mae"])}
        for family, row in rated[rated["rmse"].notna()].iterrows():
            gain = 1.0 - row["rmse"] / row["baseline_rmse"]
            print(f"; {family} RMSE {row['rmse']:.4f} MAE {row['mae']:.4f} ({gain:+.1%} RMSE vs baseline)", end="")
            out["ratings"][family] = {"rmse": _num(row["rmse"]), "mae": _num(row["mae"]),
                                      "rmse_gain": round(float(gain), 4)}
        print()
    info = run.get("infos", {}).get("ranker")
    if info:
        print(f"ranker: {info.get('label_protocol')} labels, {info.get('train_users')} users / "
              f"{info.get('train_candidates')} candidates, candidate recall {info.get('candidate_recall')}, "
              f"{info.get('trees')} trees, fit {info.get('fit_seconds_ranker')}s before serving refit; top features: "
              f"{', '.join(info.get('top_features', [])[:6])}")
        out["ranker"] = info
    decision = report.decision
    print(f"promoted: {decision.family} ({settings.gate.metric.upper()}@{k} "
          f"{report.candidates[decision.family].ndcg:.4f}) - {decision.reason}")
    for r in report.published:
        print(f"published {r.kind}: {r.rows} rows in {r.seconds:.2f}s ({r.rows / max(r.seconds, 1e-9):,.0f} rows/s)")
    print(f"ingest {run['ingest_s']:.1f}s, pipeline {run['total_s']:.1f}s end to end")
    out.update(promoted=decision.family, reason=decision.reason, gate_diff=_num(gate["gate_diff"]),
               gate_ci=[_num(gate["gate_ci_low"]), _num(gate["gate_ci_high"])],
               gate_p_value=_num(gate["gate_p_value"]), holdout_cutoff=snap.get("holdout_cutoff"))
    return out


def default_protocol(args: argparse.Namespace) -> str:
    """The protocol the default settings (``split.protocol=auto``) resolve to on the data."""
    from recjobs.cli import parse_set
    from recjobs.data.interactions import Events
    from recjobs.data.split import plan_split
    from recjobs.settings import load_settings

    overrides = parse_set(args.set)
    split = overrides.get("split", {})
    settings = load_settings({"split": {k: v for k, v in split.items() if k != "protocol"}})
    ratings = pd.read_csv(args.data / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "t"])
    ratings["timestamp"] = pd.to_datetime(ratings.pop("t"), unit="s", utc=True)
    ratings[["user_id", "item_id"]] = ratings[["user_id", "item_id"]].astype(str)
    plan = plan_split(Events.from_frame(ratings), settings.split)
    print(f"\ndefault settings: {plan.reason}")
    return plan.protocol


def default_check(summary: dict[str, Any], protocol: str) -> dict[str, Any] | None:
    """Whether the default run's pick is, on the per-user protocol, within the best family's 95% interval."""
    if protocol not in summary or "per_user" not in summary:
        return None
    pick = summary[protocol]["promoted"]
    fams = summary["per_user"]["families"]
    best = max(fams, key=lambda f: fams[f]["ndcg"])
    row = fams.get(pick, {})
    # The per-user run's gate columns compare every family with its promoted one; when that
    # is the best, the pick's interval against it is what the goal asks about.
    ok = pick == best or (row.get("gate_ci_high") is not None and row["gate_ci_high"] >= 0.0)
    out = {"protocol": protocol, "promoted": pick, "per_user_best": best,
           "per_user_ndcg": row.get("ndcg"), "best_ndcg": fams[best]["ndcg"], "within_interval": ok}
    print(f"default run publishes {pick} (protocol {protocol}); on per_user it scores NDCG@10 "
          f"{row.get('ndcg')} against the best, {best}, {fams[best]['ndcg']}: "
          f"{'within' if ok else 'outside'} the best family's 95% interval")
    return out


def main() -> int:
    from recjobs.settings import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("RECJOBS_ML100K", DEFAULT_DATA)))
    parser.add_argument("--families", default=",".join(FAMILIES), help="default: every family")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if not (args.data / "u.data").exists():
        print(f"MovieLens 100k not found at {args.data}; skipping benchmark", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        parser.error(f"unknown protocol(s) {unknown}; known: {list(PROTOCOLS)}")
    summary: dict[str, Any] = {"date": None}
    runs = {protocol: run_protocol(args, protocol, families) for protocol in protocols}
    for protocol, run in runs.items():
        summary["date"] = dt.date.isoformat(run["day"])
        summary[protocol] = print_protocol(protocol, run)
    if not any(kv.split("=", 1)[0] == "split.protocol" for kv in args.set):
        summary["default"] = default_check(summary, default_protocol(args))
    print(json.dumps(summary, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
