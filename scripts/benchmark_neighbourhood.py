"""Neighbourhood top-N scoring (EASE, item-item) at ML-20M shape: the fast path against today's.

Generates ``recjobs.data.synthetic``'s ML-20M-shaped log (138k users, 27k items, 20M
ratings at ``--scale 1``), fits EASE and item-item with their default settings in a child
process (``--cache DIR`` keeps the matrix and the fits between runs), then ranks the
top-N of every user, seen items excluded, two ways, chunk by chunk interleaved so that a
busy machine's load hits both alike:

* fast: ``NeighbourhoodRecommender.recommend`` (the publish path);
* reference: the plain path it replaced, ``Recommender.recommend``: scipy's CSR history x
  ``S`` product widened to all items, then numpy argpartition top-k.

It prints, per family, users/s and seconds of each (wall and CPU), the projected seconds
for 138,493 users, the ratio, whether every list is identical (items, order and scores),
then ranks every user by the fast path alone in a child process of its own, for the peak
RSS that publishing's scoring needs (model, seen matrix and its blocks; no reference).

    .venv/bin/python scripts/benchmark_neighbourhood.py --cache /tmp/nb          # ML-20M shape
    .venv/bin/python scripts/benchmark_neighbourhood.py --scale 0.1 --families ease
    .venv/bin/python scripts/benchmark_neighbourhood.py --cache /tmp/nb --reference-users 20000

Goal (issue 18): top-50 for all 138k users in <= 60 s on 2 cores per family.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ML20M_USERS = 138_493
GOAL_SECONDS = 60.0


def prepare(folder: Path, scale: float, families: list[str]) -> None:
    """The generated matrix and each family's fit under ``folder`` (what is there already is kept)."""
    import pyarrow.csv as pacsv

    from recjobs.data import Interactions, LargeSpec, write_large_csv
    from recjobs.data.interactions import Events
    from recjobs.models import get_family

    matrix = folder / "matrix"
    if not matrix.exists():
        started = time.perf_counter()
        spec = LargeSpec().scaled(scale)
        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / "ratings.csv"
            write_large_csv(csv, spec)
            table = pacsv.read_csv(csv)
        users, user_ids = _codes(table["user_id"].to_numpy())
        items, item_ids = _codes(table["item_id"].to_numpy())
        events = Events(user_ids, item_ids, users, items, table["rating"].to_numpy().astype(np.float32),
                        table["timestamp"].to_numpy() * 1000)
        del table
        Interactions.from_events(events).save(matrix)
        print(f"generated {len(events):,} ratings at scale {scale} in {time.perf_counter() - started:.0f}s",
              flush=True)
    data = Interactions.load(matrix)
    for family in families:
        if not (folder / family).exists():
            started = time.perf_counter()
            get_family(family)().fit(data).save(folder / family)
            print(f"{family}: fitted in {time.perf_counter() - started:.0f}s", flush=True)


def _codes(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids as the pipeline codes them: text ids, sorted, and each row's position."""
    distinct = np.unique(raw)
    text = np.asarray([str(x) for x in distinct], dtype=object)
    order = np.argsort(text, kind="stable")
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return rank[np.searchsorted(distinct, raw)], text[order]


def compare(folder: Path, family: str, top_n: int, chunk: int, reference_users: int) -> list[str]:
    """Both paths over every user (the reference over ``reference_users`` of them, 0: all)."""
    from recjobs.data import Interactions
    from recjobs.models import Recommender

    seen = Interactions.load(folder / "matrix").matrix
    model = Recommender.load(folder / family)
    users = np.arange(len(model.user_ids))
    checked = users if not reference_users or reference_users >= len(users) else np.sort(
        np.random.default_rng(1).choice(len(users), reference_users, replace=False))
    is_checked = np.zeros(len(users), bool)
    is_checked[checked] = True
    fast = {"wall": 0.0, "cpu": 0.0, "users": 0}
    ref = {"wall": 0.0, "cpu": 0.0, "users": 0}
    differ = 0
    for lo in range(0, len(users), chunk):
        rows = users[lo:lo + chunk]
        wall, cpu = time.perf_counter(), time.process_time()
        ids, scores = model.recommend(rows, top_n, exclude=seen)
        fast["wall"] += time.perf_counter() - wall
        fast["cpu"] += time.process_time() - cpu
        fast["users"] += len(rows)
        rows = rows[is_checked[rows]]
        if len(rows):
            wall, cpu = time.perf_counter(), time.process_time()
            want_ids, want_scores = Recommender.recommend(model, rows, top_n, exclude=seen)  # today's path
            ref["wall"] += time.perf_counter() - wall
            ref["cpu"] += time.process_time() - cpu
            ref["users"] += len(rows)
            mine = is_checked[lo:lo + chunk]
            same = (ids[mine] == want_ids).all(axis=1) & (scores[mine] == want_scores).all(axis=1)
            differ += int((~same).sum())
    fast_rate, ref_rate = fast["users"] / fast["wall"], ref["users"] / ref["wall"]
    cpus = len(os.sched_getaffinity(0))
    status = "within" if ML20M_USERS / fast_rate <= GOAL_SECONDS else "over"
    return [
        f"{family}: {len(users):,} users x {len(model.item_ids):,} items, top-{top_n}, seen excluded, "
        f"chunks of {chunk}",
        f"  fast      {fast['wall']:7.1f}s wall {fast['cpu']:7.1f}s cpu  {fast_rate:8,.0f} users/s  "
        f"-> {ML20M_USERS / fast_rate:6.1f}s for {ML20M_USERS:,} users ({status} the {GOAL_SECONDS:.0f}s goal, "
        f"{cpus} cpus)",
        f"  reference {ref['wall']:7.1f}s wall {ref['cpu']:7.1f}s cpu  {ref_rate:8,.0f} users/s  "
        f"-> {ML20M_USERS / ref_rate:6.1f}s ({ref['users']:,} users)",
        f"  ratio {fast_rate / ref_rate:.2f}x wall, {ref['cpu'] / ref['users'] / (fast['cpu'] / fast['users']):.2f}x "
        f"cpu; lists identical (items, order, scores) for {ref['users'] - differ:,} of {ref['users']:,} users",
    ]


def fast_alone(folder: Path, family: str, top_n: int, chunk: int) -> str:
    """Every user by the fast path only, in this process: seconds and peak RSS."""
    from recjobs.data import Interactions
    from recjobs.models import Recommender

    seen = Interactions.load(folder / "matrix").matrix
    model = Recommender.load(folder / family)
    users = np.arange(len(model.user_ids))
    wall, cpu = time.perf_counter(), time.process_time()
    listed = 0
    for lo in range(0, len(users), chunk):
        ids, _ = model.recommend(users[lo:lo + chunk], top_n, exclude=seen)
        listed += int((ids >= 0).sum())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
    status = Path("/proc/self/status").read_text()
    peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
    return (f"  fast alone (own process): {wall:.1f}s wall {cpu:.1f}s cpu, {len(users) / wall:,.0f} users/s, "
            f"{listed:,} rows, peak RSS {peak:,.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--cache", type=Path, help="folder keeping the matrix and the fits between runs")
    parser.add_argument("--families", default="ease,itemknn")
    parser.add_argument("--top-n", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=2048, help="users per recommend call (publish.chunk_users)")
    parser.add_argument("--reference-users", type=int, default=0,
                        help="users the reference ranks and the lists are compared for (0: all)")
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fast-alone", help=argparse.SUPPRESS)
    args = parser.parse_args()
    families = [f.strip() for f in args.families.split(",") if f.strip()]

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.cache or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if args.prepare_only:
            prepare(folder, args.scale, families)
            return 0
        if args.fast_alone:
            print(fast_alone(folder, args.fast_alone, args.top_n, args.chunk), flush=True)
            return 0
        # Fitting in a child: this process's peak RSS is then scoring's alone.
        subprocess.run([sys.executable, __file__, "--prepare-only", "--cache", str(folder),
                        "--scale", str(args.scale), "--families", ",".join(families)], check=True)
        print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        for family in families:
            print("\n".join(compare(folder, family, args.top_n, args.chunk, args.reference_users)), flush=True)
            subprocess.run([sys.executable, __file__, "--fast-alone", family, "--cache", str(folder),
                            "--top-n", str(args.top_n), "--chunk", str(args.chunk)], check=True)
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
