"""The whole nightly run on generated MovieLens-20M-shaped data: wall time and peak RSS per stage.

Every stage runs as its own `recjobs` CLI process, as each Airflow task runs in its own
process and calls the same library functions, so the per-stage peak RSS is what one task
needs. Then the exact scoring path is timed against implicit's own `recommend` for every
user (BLAS limited to one thread in both, as in publish), with the champion's vectors, and
so is ranking through the ``clustered`` index (``publish.ann``), with its recall of exact.
A neighbourhood champion (EASE, item-item) is timed against the plain scipy path its fast
ranking replaced (the neighbourhood ratio), with its lists compared.

    .venv/bin/python scripts/benchmark_e2e.py                 # ML-20M shape: 138k users, 20M ratings
    .venv/bin/python scripts/benchmark_e2e.py --scale 10      # ten times that
    .venv/bin/python scripts/benchmark_e2e.py --home DIR --scoring-only   # comparisons only, on a kept run
    .venv/bin/python scripts/benchmark_e2e.py --scale 0.1 --families popularity,als \\
        --set models.lightfm.epochs=5 --database-url postgresql://...

Progress of each stage streams to stderr; the table is printed at the end. With a
PostgreSQL --database-url, the publish's staged rows are also loaded by our path and by
ADBC's adbc_ingest into scratch tables, and the two rates are printed as a ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from recjobs.cli import parse_set
from recjobs.data import LargeSpec, write_large_csv
from recjobs.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
RECJOBS = Path(sys.executable).with_name("recjobs")


@dataclass
class Stage:
    name: str
    seconds: float
    peak_rss_mib: float
    status: int


# `recjobs` exits 4 when a guard held the night: it ran, and its lists were kept as history.
HELD = 4


def run_stage(name: str, args: list[str], env: dict[str, str], tree: bool = False) -> Stage:
    """Run one CLI stage, streaming its log, and measure it with wait4 (this child only).

    ``tree``: the peak is the largest of any process under it (``recjobs run`` runs each
    stage in a child of its forkserver, which wait4 on the parent does not count), read
    from each one's ``VmHWM`` while it runs.
    """
    print(f"== {name}: recjobs {' '.join(args)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen([str(RECJOBS), *args], env=env)
    peaks: dict[int, int] = {}
    done = threading.Event()
    watcher = threading.Thread(target=_watch_tree, args=(proc.pid, peaks, done), daemon=True)
    if tree:
        watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    if tree:
        watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    return Stage(name, seconds, max([usage.ru_maxrss, *peaks.values()]) / 1024, proc.returncode)


def _watch_tree(root: int, peaks: dict[int, int], done: threading.Event, every: float = 0.2) -> None:
    """Each descendant of ``root``'s peak RSS in KiB (its VmHWM, a high-water mark), until ``done``."""
    while not done.wait(every):
        parent: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    # Field 4 of stat is the parent; the name (field 2) may hold spaces, so split after it.
                    parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        under, grew = {root}, True
        while grew:
            more = {pid for pid, ppid in parent.items() if ppid in under} - under
            under |= more
            grew = bool(more)
        for pid in under - {root}:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]))
            except (OSError, ValueError):
                continue


def scoring_ratio(settings: Settings, day: dt.date) -> list[str]:
    """Our top-N scoring of every user against implicit's recommend on the same vectors.

    Exact scoring first, then (vector champions) the ``clustered`` index of recjobs.ranking.ann,
    whose build time is counted in its rate and whose lists are compared with exact's.
    """
    import numpy as np
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from recjobs.models import NeighbourhoodRecommender, Recommender, VectorRecommender
    from recjobs.pipeline import load_matrix
    from recjobs.ranking.ann import with_ann
    from recjobs.runs import RunFolder

    top_n = settings.publish.top_n
    model = Recommender.load(RunFolder.of(settings, day).final)
    seen = load_matrix(settings, day, "full").matrix
    users = np.arange(len(model.user_ids))
    chunk = settings.publish.chunk_users
    exact = np.empty((len(users), top_n), np.int64)
    started = time.perf_counter()
    for lo in range(0, len(users), chunk):
        exact[lo:lo + chunk] = model.recommend(users[lo:lo + chunk], top_n, exclude=seen)[0]
    ours = time.perf_counter() - started
    lines = []
    if isinstance(model, VectorRecommender):
        # implicit's own path: the same factors (bias as one more factor), its recommend over all users.
        vec = model.vectors
        ref = AlternatingLeastSquares(factors=vec.user_vectors.shape[1] + 1)
        ref.user_factors = np.hstack([vec.user_vectors, np.ones((len(users), 1), np.float32)])
        ref.item_factors = np.hstack([vec.item_vectors, vec.item_bias[:, None]]).astype(np.float32)
        started = time.perf_counter()
        with threadpool_limits(1, "blas"):
            for lo in range(0, len(users), chunk):
                rows = users[lo:lo + chunk]
                ref.recommend(rows, seen[rows], N=top_n, filter_already_liked_items=True)
        theirs = time.perf_counter() - started
        lines.append(f"scoring {len(users):,} users ({model.family}), top-{top_n}, seen excluded: ours {ours:.1f}s, "
                     f"implicit.recommend {theirs:.1f}s, ratio {theirs / ours:.2f}x (>1 is faster than implicit)")
        started = time.perf_counter()
        ranker = with_ann(model, "clustered", top_n, seen, recall=settings.publish.ann_recall,
                          lists=settings.publish.ann_lists)
        built = time.perf_counter() - started
        order = ranker.ranking_order(users)
        got = np.empty_like(exact)
        for lo in range(0, len(users), chunk):
            rows = order[lo:lo + chunk]
            got[rows] = ranker.recommend(rows, top_n, exclude=seen)[0]
        ann = time.perf_counter() - started
        hits = sum(len(np.intersect1d(g[g >= 0], w[w >= 0])) for g, w in zip(got, exact, strict=True))
        lines.append(f"publish.ann=clustered (ann_recall {settings.publish.ann_recall}): {ann:.1f}s with the index "
                     f"build ({built:.1f}s), ratio {theirs / ann:.2f}x implicit.recommend, "
                     f"{ours / ann:.2f}x exact, recall@{top_n} of exact {hits / max((exact >= 0).sum(), 1):.4f}")
    elif isinstance(model, NeighbourhoodRecommender):
        # The plain path the fast one replaced (scipy CSR history x S, numpy argpartition), on
        # every 7th user: rates per user, and the lists compared for those users.
        sample = users[::7]
        started = time.perf_counter()
        differ = 0
        for lo in range(0, len(sample), chunk):
            rows = sample[lo:lo + chunk]
            want = Recommender.recommend(model, rows, top_n, exclude=seen)[0]
            differ += int((exact[rows] != want).any(axis=1).sum())
        theirs = (time.perf_counter() - started) * len(users) / len(sample)
        lines.append(f"scoring {len(users):,} users ({model.family}), top-{top_n}, seen excluded: ours {ours:.1f}s, "
                     f"plain scipy x S + argpartition ~{theirs:.1f}s ({len(sample):,} users, scaled), neighbourhood "
                     f"ratio {theirs / ours:.2f}x; lists identical for {len(sample) - differ:,} of {len(sample):,}")
    else:
        lines.append(f"scoring {len(users):,} users ({model.family}, not a vector family: no implicit "
                     f"equivalent), top-{top_n}, seen excluded: {ours:.1f}s")
    return lines


def load_ratio(settings: Settings, day: dt.date, url: str, rounds: int = 2) -> str:
    """PostgreSQL: our load path against ADBC's ``adbc_ingest`` on the publish's staged rows.

    Both load the staged ``recommendations`` shards, stamped with ``generated_at`` as a
    publish stamps them, into unindexed scratch tables of the list's DDL: ours with
    ``publish.bulk_load`` inside one transaction (as ``publish_list`` does), ADBC on a
    connection of its own. Best of ``rounds`` each, alternating, so a noisy neighbour on
    the cores hurts neither side alone.
    """
    import adbc_driver_postgresql.dbapi as adbc_pg
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recjobs import columns as C
    from recjobs.db import LIST_COLUMNS, libpq_uri, list_table, make_engine
    from recjobs.publish import bulk_load, read_staging
    from recjobs.runs import RunFolder

    parts = sorted((RunFolder.of(settings, day).staging / "recommendations").rglob("*.parquet"))
    if not parts:
        return f"load ratio: no staged recommendations under {RunFolder.of(settings, day).staging}"
    columns = [c.name for c in LIST_COLUMNS["recommendations"]]
    stamp = pa.scalar(dt.datetime.now(dt.UTC), pa.timestamp("us", tz="UTC"))
    stamp_text = stamp.as_py().strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    schema = pq.read_schema(parts[0]).remove_metadata().append(pa.field(C.GENERATED_AT, stamp.type))
    engine = make_engine(url)
    tables = {"ours": "bench_load_ours", "adbc": "bench_load_adbc"}

    def fresh(name: str) -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
            list_table("recommendations", name).create(conn)

    def ours() -> int:
        with engine.begin() as conn:
            frames = (f.assign(**{C.GENERATED_AT: stamp_text}) for f in read_staging(parts))
            return bulk_load(conn, tables["ours"], columns, frames)

    def adbc() -> int:
        batches = (pa.RecordBatch.from_arrays([*b.columns, pa.repeat(stamp, b.num_rows)], schema=schema)
                   for p in parts for b in pq.ParquetFile(p).iter_batches(batch_size=200_000))
        with adbc_pg.connect(libpq_uri(url)) as conn, conn.cursor() as cur:
            rows = cur.adbc_ingest(tables["adbc"], pa.RecordBatchReader.from_batches(schema, batches), mode="append")
            conn.commit()
        return rows

    best = {"ours": 0.0, "adbc": 0.0}
    rows = 0
    try:
        for _ in range(rounds):
            for name, load in (("ours", ours), ("adbc", adbc)):
                fresh(tables[name])
                started = time.perf_counter()
                rows = load()
                best[name] = max(best[name], rows / (time.perf_counter() - started))
    finally:
        with engine.begin() as conn:
            for name in tables.values():
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        engine.dispose()
    return (f"PostgreSQL load of {rows:,} staged rows: ours (binary COPY in the publish transaction) "
            f"{best['ours']:,.0f} rows/s, adbc_ingest {best['adbc']:,.0f} rows/s, "
            f"ratio {best['ours'] / best['adbc']:.2f}x (goal >= 0.7x)")


def forced_champions(which: str, families: list[str], date: str, common: list[str], env: dict[str, str],
                     stages: list[Stage], settings: Settings) -> list[str]:
    """Each named family made champion in turn (the gate run over it alone), its final model
    trained and published; the night each would make: the shared stages plus its own."""
    from recjobs.models import NeighbourhoodRecommender, get_family

    chosen = families if which == "all" else [f.strip() for f in which.split(",") if f.strip()]
    ratios: list[str] = []
    shared = sum(s.seconds for s in stages if s.name not in ("promote", "train final", "publish"))
    lines = [f"{'champion':<12}{'promote s':>10}{'final s':>9}{'publish s':>10}{'peak MiB':>10}{'night s':>9}"]
    for family in chosen:
        forced = ["--set", f"families={json.dumps([family])}"]
        own = [run_stage(f"promote {family}", ["promote", "--date", date, *common, *forced], env),
               run_stage(f"final {family}", ["train", "--date", date, "--final", *common], env),
               run_stage(f"publish {family}", ["publish", "--date", date, *common], env)]
        night = shared + sum(s.seconds for s in own)
        peak = max([s.peak_rss_mib for s in stages] + [s.peak_rss_mib for s in own])
        held = own[2].status == HELD and all(s.status == 0 for s in own[:2])
        lines.append(f"{family:<12}{own[0].seconds:10.1f}{own[1].seconds:9.1f}{own[2].seconds:10.1f}{peak:10,.0f}"
                     f"{night:9.1f}" + ("" if all(s.status == 0 for s in own) else
                                        "  (held by the output guard: published as history only)" if held
                                        else "  (a stage failed)"))
        if issubclass(get_family(family), NeighbourhoodRecommender) and own[1].status == 0:
            # The neighbourhood ratio for this champion, against the plain scipy path.
            ratios += scoring_ratio(settings, dt.date.fromisoformat(date))
    return lines + ratios


def run_one_process(data: Path, date: str, common: list[str], env: dict[str, str]) -> Stage:
    """The same night as one `recjobs run` in a fresh home (the data file copied in)."""
    import shutil

    home = Path(tempfile.mkdtemp(prefix="recjobs-e2e-one-"))
    try:
        (home / "inbox").mkdir(parents=True)
        shutil.copy(data, home / "inbox" / data.name)
        one = {**env, "RECJOBS_HOME": str(home)}
        one.pop("RECJOBS_DATABASE_URL", None)  # its own SQLite: the staged run keeps the database
        return run_stage("recjobs run", ["run", "--date", date, *common], one, tree=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 = ML-20M shape, 10 = ten times it")
    parser.add_argument("--families", help="comma-separated families (default: the settings' families)")
    parser.add_argument("--database-url", help="default: SQLite in the benchmark's home")
    parser.add_argument("--home", help="keep everything here (default: a temporary folder)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every stage")
    parser.add_argument("--scoring-only", action="store_true",
                        help="with --home of an earlier run: only the scoring (and load) comparisons")
    parser.add_argument("--no-scoring", action="store_true", help="with --scoring-only: the load comparison only")
    parser.add_argument("--champion", metavar="F[,F...]|all",
                        help="after the candidates, force each named family (or every one) to be the champion in "
                             "turn and time its final training and publish: the night's worst case")
    parser.add_argument("--one-process", action="store_true",
                        help="also time the same night as one `recjobs run` (stages in child processes) in a fresh "
                             "home on the same data, with its peak RSS")
    args = parser.parse_args()

    tmp = None if args.home else tempfile.TemporaryDirectory(prefix="recjobs-e2e-")
    home = Path(args.home or tmp.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECJOBS_")}
    env["RECJOBS_HOME"] = str(home)
    if args.database_url:
        env["RECJOBS_DATABASE_URL"] = args.database_url
    spec = LargeSpec().scaled(args.scale)
    if args.scoring_only:
        settings = load_settings(parse_set(args.set),
                                 environ={k: v for k, v in env.items() if k.startswith("RECJOBS_")})
        if not args.no_scoring:
            print("\n".join(scoring_ratio(settings, spec.end)))
        if args.database_url and make_url(args.database_url).get_backend_name() == "postgresql":
            print(load_ratio(settings, spec.end, args.database_url))
        return 0
    data = home / "inbox" / "ratings.csv"
    started = time.perf_counter()
    if not data.exists():
        rows = write_large_csv(data, spec)
        print(f"generated {rows:,} ratings ({spec.n_users:,} users x {spec.n_items:,} items, "
              f"{data.stat().st_size / 2**20:,.0f} MiB CSV) in {time.perf_counter() - started:.0f}s",
              file=sys.stderr)
    date = spec.end.isoformat()
    common = [x for pair in args.set for x in ("--set", pair)]
    settings = load_settings(parse_set(args.set), environ={k: v for k, v in env.items() if k.startswith("RECJOBS_")})
    families = args.families.split(",") if args.families else settings.families
    family_set = ["--set", f"families={json.dumps(families)}"]
    stages = [run_stage("ingest", ["ingest", *common], env),
              run_stage("split", ["split", "--date", date, *common], env)]
    for fam in families:
        stages.append(run_stage(f"train {fam}", ["train", "--date", date, "--family", fam, *common], env))
        stages.append(run_stage(f"evaluate {fam}", ["evaluate", "--date", date, "--family", fam, *common], env))
    stages.append(run_stage("promote", ["promote", "--date", date, *common, *family_set], env))
    stages.append(run_stage("train final", ["train", "--date", date, "--final", *common], env))
    stages.append(run_stage("publish", ["publish", "--date", date, *common], env))
    total = sum(s.seconds for s in stages)
    # The night's own champion is compared before any forced one replaces its final model and staging.
    scoring = scoring_ratio(settings, spec.end) if all(s.status == 0 for s in stages[-2:]) else []
    postgres = args.database_url and make_url(args.database_url).get_backend_name() == "postgresql"
    loading = load_ratio(settings, spec.end, args.database_url) if stages[-1].status == 0 and postgres else None
    forced = forced_champions(args.champion, families, date, common, env, stages, settings) if args.champion else []
    one_process = run_one_process(data, date, [*common, *family_set], env) if args.one_process else None
    print(f"\nrecjobs end to end: {spec.n_ratings:,} ratings, {spec.n_users:,} users, {spec.n_items:,} items, "
          f"{os.cpu_count()} cores, database {args.database_url and 'given' or 'SQLite'}")
    print(f"{'stage':<22}{'wall s':>9}{'peak RSS MiB':>14}{'exit':>6}")
    for s in stages:
        print(f"{s.name:<22}{s.seconds:9.1f}{s.peak_rss_mib:14,.0f}{s.status:6d}")
    print(f"{'total':<22}{total:9.1f}{max(s.peak_rss_mib for s in stages):14,.0f}")
    if scoring:
        print("\n".join(scoring))
    if loading:
        print(loading)
    if forced:
        print("\n".join(forced))
    if one_process is not None:
        print(f"one process: `recjobs run` (each stage in a child process) {one_process.seconds:.1f}s, peak RSS "
              f"{one_process.peak_rss_mib:,.0f} MiB (any process of its tree), exit {one_process.status}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(s.status == 0 for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
