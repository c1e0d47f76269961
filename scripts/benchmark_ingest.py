"""Time `recjobs ingest` on a generated MovieLens-20M-shaped CSV: wall time and peak RSS.

Usage::

    .venv/bin/python scripts/benchmark_ingest.py --scale 0.25          # 5M ratings
    .venv/bin/python scripts/benchmark_ingest.py --scale 1.0 --again   # 20M, then a forced rerun

The CSV is generated once (``recjobs.data.synthetic.write_large_csv``) into ``--data``; each
run ingests it into a fresh ``RECJOBS_HOME`` under a temporary folder with
``/usr/bin/time -v`` (peak resident memory of the whole process). ``--again`` also
times a forced re-ingest of the same file into the now full lake: every partition is
read, merged and found unchanged. Figures depend on the machine and on what else runs
on it; quote them with the command and the core count.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECJOBS = Path(sys.executable).with_name("recjobs")


def ensure_csv(folder: Path, scale: float) -> Path:
    """The generated CSV for ``scale``, written on first use."""
    from recjobs.data import LargeSpec, write_large_csv

    path = folder / f"ratings_{scale:g}.csv"
    if not path.exists():
        started = time.monotonic()
        rows = write_large_csv(path, LargeSpec().scaled(scale))
        print(f"generated {path} ({rows} rows, {path.stat().st_size / 1e6:.0f} MB) "
              f"in {time.monotonic() - started:.0f}s")
    return path


def timed_ingest(home: Path, csv: Path, *extra: str) -> dict[str, float]:
    """Run `recjobs ingest` once; wall seconds and peak RSS in MB."""
    env = {**os.environ, "RECJOBS_HOME": str(home)}
    cmd = ["/usr/bin/time", "-v", str(RECJOBS), "ingest", *extra, str(csv)]
    started = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if out.returncode != 0:
        sys.exit(f"ingest failed ({out.returncode}):\n{out.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    for line in out.stderr.splitlines():
        if "recjobs.ingest" in line:
            print("   ", line.split(" INFO ", 1)[-1])
    return {"wall_s": wall, "peak_rss_mb": int(rss.group(1)) / 1024 if rss else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.25, help="share of ML-20M's size (1.0 = 20M ratings)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "recjobs-bench",
                        help="where the generated CSV is kept between runs")
    parser.add_argument("--again", action="store_true", help="also time a forced rerun into the full lake")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    csv = ensure_csv(args.data, args.scale)
    rows = sum(1 for _ in open(csv, "rb")) - 1
    with tempfile.TemporaryDirectory(dir=args.data) as tmp:
        home = Path(tmp) / "home"
        subprocess.run([str(RECJOBS), "initdb"], env={**os.environ, "RECJOBS_HOME": str(home)},
                       check=True, capture_output=True)
        runs = [("first ingest", timed_ingest(home, csv))]
        if args.again:
            runs.append(("forced rerun", timed_ingest(home, csv, "--force")))
    print(f"{csv.name}: {rows} rows, {csv.stat().st_size / 1e6:.0f} MB, {os.cpu_count()} cores")
    for name, r in runs:
        print(f"  {name}: {r['wall_s']:.1f}s wall, {rows / r['wall_s']:,.0f} rows/s, "
              f"peak RSS {r['peak_rss_mb']:,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
