"""Thin users on MovieLens 100k: a family's own ranking vs item neighbours (README "Cold start").

200 random holdout users (per-user split) are cut to their latest k training
interactions; each family is fitted on that data and NDCG@10 / recall@10 on those
users' holdout is compared for the model's own ranking and for
:class:`recjobs.ranking.coldstart.ThinUserNeighbourhood`.

    .venv/bin/python scripts/measure_thin_users.py --k 1,3,5 --families lightfm,tfrs,als
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recjobs.data import Holdout, Interactions, Lake, load_side_features
from recjobs.evaluation import evaluate_model
from recjobs.ingest import import_movielens
from recjobs.models import get_family
from recjobs.pipeline import engine_for, load_matrix, prepare
from recjobs.ranking import ThinUserNeighbourhood
from recjobs.runs import RunFolder
from recjobs.settings import load_settings

ML100K = Path(os.environ.get("RECJOBS_ML100K", Path(__file__).resolve().parents[2] / "shared/data/ml-100k"))


def thinned(train: Interactions, users: np.ndarray, k: int) -> Interactions:
    """``train`` with ``users`` cut to their latest ``k`` interactions."""
    m = train.matrix
    keep = np.ones(m.nnz, bool)
    for u in users:
        lo, hi = m.indptr[u], m.indptr[u + 1]
        order = np.lexsort((m.indices[lo:hi], train.pair_seconds[lo:hi]))
        keep[lo + order[:-k]] = False
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    matrix = sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)
    return Interactions(train.user_ids, train.item_ids, matrix, train.item_last_seen, train.pair_seconds[keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="1,3,5")
    parser.add_argument("--families", default="lightfm,tfrs,als")
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    if not (ML100K / "u.data").exists():
        raise SystemExit(f"MovieLens 100k not found at {ML100K} (set RECJOBS_ML100K)")
    home = Path(tempfile.mkdtemp()) / "home"
    settings = load_settings({"home": str(home), "split": {"protocol": "per_user"},
                              "models": {"lightfm": {"epochs": 20, "max_seconds": None},
                                         "tfrs": {"max_epochs": 10}}}, environ={})
    import_movielens(ML100K, settings, engine_for(settings))
    day = dt.date(1998, 4, 30)
    prepare(settings, day)
    train = load_matrix(settings, day, "train")
    hold = Holdout.load(RunFolder.of(settings, day).matrix("holdout"))
    chosen = np.sort(np.random.default_rng(0).choice(np.unique(hold.user_rows), args.users, replace=False))
    mask = np.zeros(train.n_users, bool)
    mask[chosen] = True
    sel = np.isin(hold.user_rows, chosen)
    truth = Holdout(hold.user_rows[sel], hold.item_cols[sel])
    for k in (int(x) for x in args.k.split(",")):
        data = thinned(train, chosen, k)
        features = load_side_features(Lake.of(settings), data)
        for family in args.families.split(","):
            started = time.perf_counter()
            model = get_family(family)(settings.model_params(family), seed=42).fit(data, features)
            own = evaluate_model(model, data, truth, 10)
            line = f"k={k} {family:10s} model ndcg={own.ndcg:.4f} recall={own.recall:.4f}"
            if model.has_similar_items():
                nb = evaluate_model(ThinUserNeighbourhood(model, data.matrix, mask), data, truth, 10)
                line += f" | neighbours ndcg={nb.ndcg:.4f} recall={nb.recall:.4f}"
            print(f"{line} ({time.perf_counter() - started:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
