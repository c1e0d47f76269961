"""Scoring and SQL-load throughput at ML-20M size (138k users, 27k items, 20M seen pairs).

Builds a fitted model of the given size from random vectors (what is measured is the
shared scoring path and the publish path, not a fit), scores every user in chunks with
seen items excluded, then publishes the top-N to the database. Prints users/s, rows/s
and peak memory.

    .venv/bin/python scripts/benchmark_scale.py [--users 138000 --items 27000 --seen 20000000]
        [--database-url postgresql://...]   # default: a SQLite file in a temp folder
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=138_000)
    parser.add_argument("--items", type=int, default=27_000)
    parser.add_argument("--seen", type=int, default=20_000_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--top-n", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--database-url")
    args = parser.parse_args()

    from recjobs.db import ensure_schema, make_engine
    from recjobs.interactions import Interactions
    from recjobs.models.base import Vectors
    from recjobs.models.popularity import PopularityModel
    from recjobs.pipeline import _user_frames
    from recjobs.publish import publish_list

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    model = PopularityModel()
    model.user_ids = np.asarray([f"u{i}" for i in range(args.users)], dtype=object)
    model.item_ids = np.asarray([f"i{i}" for i in range(args.items)], dtype=object)
    model.vectors = Vectors(rng.standard_normal((args.users, args.factors), dtype=np.float32),
                            rng.standard_normal((args.items, args.factors), dtype=np.float32),
                            np.zeros(args.items, np.float32))
    model.info["model_version"] = "bench"
    rows = rng.integers(0, args.users, args.seen)
    cols = rng.integers(0, args.items, args.seen)
    seen = sp.csr_matrix((np.ones(args.seen, np.float32), (rows, cols)), shape=(args.users, args.items))
    data = Interactions(model.user_ids, model.item_ids, seen, np.zeros(args.items, np.int64))
    print(f"setup {time.perf_counter() - started:.1f}s: {args.users} users x {args.items} items, "
          f"{seen.nnz} seen pairs, {args.factors} factors")

    started = time.perf_counter()
    n_rows = sum(len(f) for f in _user_frames(model, data, args.top_n, args.chunk))
    score_s = time.perf_counter() - started
    print(f"score + top-{args.top_n} (seen excluded): {score_s:.1f}s, {args.users / score_s:,.0f} users/s, "
          f"{n_rows / score_s:,.0f} rows/s")

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = make_engine(url)
        ensure_schema(engine)
        started = time.perf_counter()
        result = publish_list(engine, "recommendations", "2026-01-01", "bench",
                              _user_frames(model, data, args.top_n, args.chunk), history=False)
        total_s = time.perf_counter() - started
        print(f"publish to {engine.dialect.name} (score + load + index + swap): {total_s:.1f}s for {result.rows:,} rows, "
              f"{result.rows / total_s:,.0f} rows/s; load alone ~{result.rows / max(total_s - score_s, 1e-9):,.0f} rows/s")
        engine.dispose()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
