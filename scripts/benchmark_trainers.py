"""Training throughput of one model family on an ML-20M-shaped rating log at a given scale.

Generates (once, cached under the temp folder) ``LargeSpec().scaled(scale)``: at 0.1 that
is 13.8k users, 2.7k items, 2M ratings, no side features. Fits the family with the
given overrides, logs its progress lines, and prints seconds per epoch and examples/s
(training pairs x epochs / fit seconds).

    .venv/bin/python scripts/benchmark_trainers.py --family lightfm [--scale 0.1]
        [--set epochs=3 --set num_threads=2]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _value(raw: str) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, choices=["als", "lightfm", "tfrs"])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter of the family, e.g. epochs=3")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from recjobs import columns as C
    from recjobs.data import Interactions, LargeSpec, write_large_csv
    from recjobs.models import get_family
    from recjobs.settings import Settings

    spec = LargeSpec().scaled(args.scale)
    path = Path(tempfile.gettempdir()) / f"recjobs-large-{args.scale:g}.csv"
    if not path.exists():
        write_large_csv(path.with_suffix(".part"), spec)
        path.with_suffix(".part").rename(path)
    frame = pd.read_csv(path, dtype={"user_id": str, "item_id": str})
    frame[C.TIMESTAMP] = pd.to_datetime(frame[C.TIMESTAMP], unit="s", utc=True)
    data = Interactions.from_frame(frame)
    del frame
    print(f"data: {data.n_users} users, {data.n_items} items, {data.nnz} pairs (scale {args.scale:g})")

    overrides = dict(item.split("=", 1) for item in args.set)
    params = Settings().model_params(args.family).model_copy(
        update={k: _value(v) for k, v in overrides.items()})
    params = type(params).model_validate(params.model_dump())
    model = get_family(args.family)(params, seed=args.seed)
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(data)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    epochs = model.info.get("epochs_run") or getattr(params, "epochs", None) or getattr(params, "iterations", 1)
    pairs = data.nnz
    if args.family == "tfrs":
        pairs = round(pairs * (1 - params.validation_fraction))
    print(f"{args.family} {overrides}: fit {seconds:.1f}s, {epochs} epochs, {seconds / epochs:.2f} s/epoch "
          f"(incl. setup), {pairs * epochs / seconds:,.0f} examples/s; CPU {cpu:.1f}s ({cpu / epochs:.2f} s/epoch); "
          f"info {model.info}")
    print(f"checksum {float(np.abs(model.vectors.item_vectors).sum()):.6f}")


if __name__ == "__main__":
    main()
