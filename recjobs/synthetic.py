"""Generated sample data with real structure, for the demo and the tests.

Users and items have latent tastes in a few clusters; item popularity is skewed
(Zipf-like); each user's interactions are spread over months, drawn from a mix of
taste and popularity, and a user's taste drifts little, so personalised models can
beat popularity on a temporal holdout. Everything is a function of the seed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recjobs import columns as C


@dataclass(frozen=True)
class SyntheticSpec:
    n_users: int = 500
    n_items: int = 300
    n_clusters: int = 6
    dim: int = 8
    mean_interactions: int = 40
    days: int = 120
    end: dt.date = dt.date(2026, 1, 31)
    popularity_skew: float = 1.0
    taste_weight: float = 3.0
    seed: int = 7


def generate(spec: SyntheticSpec = SyntheticSpec()) -> dict[str, pd.DataFrame]:
    """Ratings, item features (cluster as genre) and item titles."""
    rng = np.random.default_rng(spec.seed)
    centers = rng.normal(size=(spec.n_clusters, spec.dim))
    item_cluster = rng.integers(0, spec.n_clusters, spec.n_items)
    user_cluster = rng.integers(0, spec.n_clusters, spec.n_users)
    items = centers[item_cluster] + 0.5 * rng.normal(size=(spec.n_items, spec.dim))
    users = centers[user_cluster] + 0.5 * rng.normal(size=(spec.n_users, spec.dim))
    pop = 1.0 / np.power(rng.permutation(spec.n_items) + 1.0, spec.popularity_skew)
    log_pop = np.log(pop / pop.sum())
    affinity = users @ items.T / np.sqrt(spec.dim)
    logits = spec.taste_weight * affinity + log_pop
    start = dt.datetime.combine(spec.end, dt.time(), tzinfo=dt.UTC) - dt.timedelta(days=spec.days - 1)
    rows = []
    counts = np.clip(rng.poisson(spec.mean_interactions, spec.n_users), 5, spec.n_items // 2)
    for u in range(spec.n_users):
        p = np.exp(logits[u] - logits[u].max())
        p /= p.sum()
        chosen = rng.choice(spec.n_items, size=counts[u], replace=False, p=p)
        # Each user is active over a window of the period, in time order.
        first = rng.uniform(0, spec.days * 0.5)
        span = rng.uniform(spec.days * 0.3, spec.days - first)
        offsets = np.sort(first + rng.uniform(0, span, counts[u])) * 86400.0
        # Earlier picks are the stronger tastes: order by affinity plus noise.
        order = np.argsort(-(affinity[u, chosen] + rng.normal(0, 0.7, counts[u])))
        chosen = chosen[order]
        a = affinity[u, chosen]
        stars = np.clip(np.round(3 + 1.2 * (a - a.mean()) / (a.std() + 1e-9) + rng.normal(0, 0.5, len(a))), 1, 5)
        for i, off, r in zip(chosen, offsets, stars, strict=True):
            rows.append((f"u{u + 1}", f"i{i + 1}", float(r), start + dt.timedelta(seconds=float(off))))
    ratings = pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS))
    ratings[C.TIMESTAMP] = pd.to_datetime(ratings[C.TIMESTAMP], utc=True).dt.floor("s")
    ratings = ratings.sort_values([C.TIMESTAMP, C.USER, C.ITEM], kind="stable").reset_index(drop=True)
    item_ids = [f"i{i + 1}" for i in range(spec.n_items)]
    genres = [f"genre=g{c}" for c in item_cluster]
    features = pd.DataFrame({C.ITEM: item_ids, C.FEATURE: genres})
    titles = pd.DataFrame({C.ITEM: item_ids, C.TITLE: [f"Item {i + 1} (g{c})" for i, c in enumerate(item_cluster)]})
    return {"ratings": ratings, "item_features": features, "items": titles}


def write_inbox(directory: Path, spec: SyntheticSpec = SyntheticSpec()) -> list[Path]:
    """Write the generated files as CSV into ``directory`` (an inbox); returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    data = generate(spec)
    ratings = data["ratings"].copy()
    epoch = pd.Timestamp(0, tz="UTC")
    ratings[C.TIMESTAMP] = (ratings[C.TIMESTAMP] - epoch) // pd.Timedelta(seconds=1)
    paths = []
    for name, frame in (("ratings", ratings), ("item_features", data["item_features"]), ("items", data["items"])):
        path = directory / f"synthetic_{name}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths
