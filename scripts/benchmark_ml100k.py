"""Benchmark the pipeline on MovieLens 100k (read from ../shared/data/ml-100k, never copied).

Runs ingest -> split -> train/evaluate every family -> gate -> final -> publish in a
throwaway RECJOBS_HOME and prints, per family, precision/recall/NDCG/MAP@10,
coverage and fit time, plus the promoted model and publish throughput.

    .venv/bin/python scripts/benchmark_ml100k.py [--data DIR] [--families als,lightfm] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("RECJOBS_ML100K", DEFAULT_DATA)))
    parser.add_argument("--families", default="popularity,als,lightfm,tfrs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if not (args.data / "u.data").exists():
        print(f"MovieLens 100k not found at {args.data}; skipping benchmark", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from recjobs.cli import _parse_set
    from recjobs.features import import_movielens
    from recjobs.pipeline import engine_for, run_pipeline
    from recjobs.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="recjobs-bench-") as home:
        overrides = _parse_set(args.set)
        overrides.update(home=home, families=args.families.split(","))
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
        with engine.connect() as conn:
            runs = pd.read_sql(
                "SELECT family, fit_seconds FROM model_runs WHERE stage = 'candidate'", conn
            ).set_index("family")["fit_seconds"]
    print(f"\nMovieLens 100k, logical date {last_day}, temporal holdout "
          f"{settings.split.holdout_fraction:.0%} per user, k={settings.evaluate.k}")
    print(f"{'family':<12}{'P@10':>8}{'R@10':>8}{'NDCG@10':>9}{'MAP@10':>8}{'cover':>7}{'fit s':>8}")
    for family, m in report.candidates.items():
        print(f"{family:<12}{m.precision:8.4f}{m.recall:8.4f}{m.ndcg:9.4f}{m.map:8.4f}"
              f"{m.coverage:7.3f}{runs.get(family, float('nan')):8.1f}")
    for family, err in report.failures.items():
        print(f"{family:<12}FAILED {err}")
    promoted = report.candidates.get(report.decision.family)
    print(f"promoted: {report.decision.family} (NDCG@10 {promoted.ndcg:.4f}) - {report.decision.reason}")
    for r in report.published:
        print(f"published {r.kind}: {r.rows} rows in {r.seconds:.2f}s ({r.rows / max(r.seconds, 1e-9):,.0f} rows/s)")
    print(f"ingest {ingest_s:.1f}s, pipeline {total_s:.1f}s end to end")
    print(json.dumps({f: round(m.ndcg, 4) for f, m in report.candidates.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
