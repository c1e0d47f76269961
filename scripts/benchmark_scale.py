"""Scoring and SQL-load throughput at ML-20M size (138k users, 27k items, 20M seen pairs).

Builds a fitted model of the given size, scores every user in chunks with seen items
excluded, then publishes the top-N to the database. Prints users/s, rows/s and peak memory.

Vectors (``--vectors``): ``als`` (default) fits the ALS family for a few iterations on
``recjobs.data.synthetic``'s ML-20M-shaped rating log (heavy-tailed activity, Zipf-like item
popularity, taste clusters), so item norms, clusters and seen items are what a real fit
gives; ``--cache DIR`` keeps the fit for reruns. ``random`` is Gaussian vectors with
uniformly random seen items (fast, but unrealistic for an index: no structure, no
popularity). Then ``--ann`` compares ranking through recjobs.ranking.ann with exact scoring,
interleaved chunk by chunk so a shared machine's load hits both alike: users/s of each,
their ratio, recall@N against exact (seen items excluded) and the index build time.

    .venv/bin/python scripts/benchmark_scale.py [--vectors als|random] [--cache /tmp/scale]
        [--ann ivf:probe=32,hnsw:ef=128,pruned,clustered:recall=0.99] [--ann-users 20000] [--skip-publish]
        [--users 138000 --items 27000 --seen 20000000]   # sizes for --vectors random
        [--database-url postgresql://...]   # default: a SQLite file in a temp folder
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

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
    parser.add_argument("--vectors", choices=["als", "random"], default="als")
    parser.add_argument("--als-iterations", type=int, default=6)
    parser.add_argument("--cache", type=Path, help="folder keeping the ALS fit between runs")
    parser.add_argument("--ann", default="ivf:probe=32,ivf:probe=64,hnsw:ef=128,pruned",
                        help="comma-separated kind[:knob=value...]; knobs: lists, probe, m, ef, depth, max_depth, recall")
    parser.add_argument("--ann-users", type=int, default=0, help="users compared (0: all)")
    parser.add_argument("--skip-publish", action="store_true")
    args = parser.parse_args()

    from recjobs.data import Interactions
    from recjobs.db import ensure_schema, make_engine
    from recjobs.publish import publish_list
    from recjobs.ranking import user_frames

    started = time.perf_counter()
    if args.vectors == "als":
        model, seen = _als_model(args.factors, args.als_iterations, args.cache)
    else:
        model, seen = _random_model(args.users, args.items, args.seen, args.factors)
    model.info["model_version"] = "bench"
    n_users, n_items = seen.shape
    data = Interactions(model.user_ids, model.item_ids, seen, np.zeros(n_items, np.int64))
    print(f"setup {time.perf_counter() - started:.1f}s: {args.vectors} vectors, {n_users} users x {n_items} items, "
          f"{seen.nnz} seen pairs, {model._vec().user_vectors.shape[1]} factors")
    if args.ann:
        compare_ann(model, seen, args.ann, args.top_n, args.chunk, args.ann_users)
    if args.skip_publish:
        return

    started = time.perf_counter()
    n_rows = sum(len(f) for f in user_frames(model, data, args.top_n, args.chunk))
    score_s = time.perf_counter() - started
    print(f"score + top-{args.top_n} (seen excluded): {score_s:.1f}s, {n_users / score_s:,.0f} users/s, "
          f"{n_rows / score_s:,.0f} rows/s")

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = make_engine(url)
        ensure_schema(engine)
        started = time.perf_counter()
        result = publish_list(engine, "recommendations", "2026-01-01", "bench",
                              user_frames(model, data, args.top_n, args.chunk), history=False)
        total_s = time.perf_counter() - started
        print(f"publish to {engine.dialect.name} (score + load + index + swap): {total_s:.1f}s for {result.rows:,} rows, "
              f"{result.rows / total_s:,.0f} rows/s; load alone ~{result.rows / max(total_s - score_s, 1e-9):,.0f} rows/s")
        engine.dispose()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {peak:,.0f} MiB")


def _random_model(n_users: int, n_items: int, n_seen: int, factors: int) -> tuple[Any, sp.csr_matrix]:
    """Gaussian vectors and uniformly random seen pairs (no structure)."""
    from recjobs.models.popularity import PopularityModel
    from recjobs.models.vectors import Vectors

    rng = np.random.default_rng(0)
    model = PopularityModel()
    model.user_ids = np.asarray([f"u{i}" for i in range(n_users)], dtype=object)
    model.item_ids = np.asarray([f"i{i}" for i in range(n_items)], dtype=object)
    model.vectors = Vectors(rng.standard_normal((n_users, factors), dtype=np.float32),
                            rng.standard_normal((n_items, factors), dtype=np.float32),
                            np.zeros(n_items, np.float32))
    rows = rng.integers(0, n_users, n_seen)
    cols = rng.integers(0, n_items, n_seen)
    seen = sp.csr_matrix((np.ones(n_seen, np.float32), (rows, cols)), shape=(n_users, n_items))
    return model, seen


def _als_model(factors: int, iterations: int, cache: Path | None) -> tuple[Any, sp.csr_matrix]:
    """The ALS family fitted on recjobs.data.synthetic's ML-20M-shaped log; seen = its binary matrix."""
    import pyarrow.csv as pacsv

    from recjobs.data import Interactions, LargeSpec, write_large_csv
    from recjobs.models.als import ALSModel
    from recjobs.models.vectors import Vectors
    from recjobs.settings import ALSParams

    spec = LargeSpec()
    saved = cache / f"als-{factors}-{iterations}.npz" if cache else None
    user_ids = np.asarray([str(i) for i in range(spec.n_users)], dtype=object)
    item_ids = np.asarray([str(i) for i in range(spec.n_items)], dtype=object)
    model = ALSModel(ALSParams(factors=factors, iterations=iterations, max_seconds=None))
    if saved is not None and saved.exists():
        with np.load(saved) as z:
            model.vectors = Vectors(z["user_vectors"], z["item_vectors"], z["item_bias"])
            seen = sp.csr_matrix((np.ones(len(z["indices"]), np.float32), z["indices"], z["indptr"]),
                                 shape=(spec.n_users, spec.n_items))
        model.user_ids, model.item_ids = user_ids, item_ids
        return model, seen
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "ratings.csv"
        started = time.perf_counter()
        write_large_csv(csv, spec)
        table = pacsv.read_csv(csv, convert_options=pacsv.ConvertOptions(include_columns=["user_id", "item_id"]))
    users = table["user_id"].to_numpy() - 1
    items = table["item_id"].to_numpy() - 1
    seen = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(spec.n_users, spec.n_items))
    seen.sum_duplicates()
    seen.data[:] = 1.0
    print(f"generated {len(users):,} ratings ({seen.nnz:,} pairs) in {time.perf_counter() - started:.0f}s; "
          f"fitting ALS ({factors} factors, {iterations} iterations)", flush=True)
    started = time.perf_counter()
    model.fit(Interactions(user_ids, item_ids, seen, np.zeros(spec.n_items, np.int64)))
    print(f"ALS fit {time.perf_counter() - started:.0f}s", flush=True)
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        vec = model._vec()
        np.savez(saved, user_vectors=vec.user_vectors, item_vectors=vec.item_vectors, item_bias=vec.item_bias,
                 indices=seen.indices, indptr=seen.indptr)
    return model, seen


def _parse_ann(spec: str) -> tuple[str, str, dict[str, float]]:
    """``kind:knob=value:...`` as (label, kind, knobs)."""
    kind, *parts = spec.split(":")
    knobs: dict[str, float] = {}
    for part in parts:
        key, _, value = part.partition("=")
        knobs[key] = float(value) if "." in value else int(value)
    return spec, kind, knobs


def compare_ann(model: Any, seen: sp.csr_matrix, specs: str, n: int, chunk: int, limit: int) -> None:
    """Exact against each ANN setting, interleaved chunk by chunk; prints the table."""
    from recjobs.ranking.ann import AnnRanker, ClusteredIndex, NormPrunedIndex, build_index

    n_users = seen.shape[0]
    rows_all = np.arange(n_users)
    if limit and limit < n_users:
        rows_all = np.sort(np.random.default_rng(1).choice(n_users, limit, replace=False))
    rankers = []
    for label, kind, knobs in map(_parse_ann, specs.split(",")):
        started = time.perf_counter()
        if kind == "pruned":
            index = NormPrunedIndex(model._vec(), n, seen)
        elif kind == "clustered":
            index = ClusteredIndex(model._vec(), n, seen, clusters=knobs.get("lists"),
                                   recall=knobs.get("recall", 0.99))
        else:
            index = build_index(model, kind, lists=knobs.get("lists"), probe=knobs.get("probe", 32),
                                hnsw_m=knobs.get("m", 32), ef_search=knobs.get("ef", 128))
        build_s = time.perf_counter() - started
        rankers.append((label, AnnRanker(model, index, knobs.get("depth", 128), knobs.get("max_depth", 512)),
                        build_s))
    # Users in the order the (first) ranker that cares ranks fastest; exact does not care.
    for _, ranker, _ in rankers:
        ordered = ranker.ranking_order(rows_all)
        if not np.array_equal(ordered, rows_all):
            rows_all = ordered
            break
    exact_s = 0.0
    ann_s = [0.0] * len(rankers)
    hits = [0] * len(rankers)
    total = 0
    for lo in range(0, len(rows_all), chunk):
        rows = rows_all[lo:lo + chunk]
        started = time.perf_counter()
        want, _ = model.recommend(rows, n, exclude=seen)
        exact_s += time.perf_counter() - started
        total += int((want >= 0).sum())
        for j, (_, ranker, _) in enumerate(rankers):
            started = time.perf_counter()
            got, _ = ranker.recommend(rows, n, exclude=seen)
            ann_s[j] += time.perf_counter() - started
            assert not seen[np.repeat(rows, n)[got.ravel() >= 0], got.ravel()[got.ravel() >= 0]].any()
            hits[j] += sum(len(np.intersect1d(g[g >= 0], w[w >= 0])) for g, w in zip(got, want, strict=True))
    users = len(rows_all)
    print(f"top-{n} for {users:,} users, seen excluded; exact and each setting interleaved per {chunk} users")
    print(f"{'setting':<24}{'users/s':>10}{'x exact':>9}{'recall@' + str(n):>11}{'build s':>9}")
    print(f"{'exact':<24}{users / exact_s:>10,.0f}{1.0:>9.2f}{1.0:>11.4f}{0.0:>9.1f}")
    for j, (label, _, build_s) in enumerate(rankers):
        print(f"{label:<24}{users / ann_s[j]:>10,.0f}{exact_s / ann_s[j]:>9.2f}{hits[j] / total:>11.4f}"
              f"{build_s:>9.1f}")


if __name__ == "__main__":
    main()
