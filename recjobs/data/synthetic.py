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


# Stars -> the event a shopper with that taste would leave (settings.feedback's default types).
_EVENT_OF_STARS = {1: "dislike", 2: "view", 3: "click", 4: "add_to_cart", 5: "purchase"}


def events_of(ratings: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    """An event log (``user_id,item_id,event_type,timestamp``) with the ratings' structure.

    Each rating becomes the event its stars stand for (1 dislike, 2 view, 3 click, 4
    add_to_cart, 5 purchase); an add to cart or a purchase is preceded by a view of the item a
    minute earlier, as a shop's funnel logs them, and a few purchases are returned a week later.
    """
    rng = np.random.default_rng(seed)
    stars = ratings[C.RATING].round().astype(int).clip(1, 5)
    main = pd.DataFrame({C.USER: ratings[C.USER], C.ITEM: ratings[C.ITEM],
                         C.EVENT_TYPE: stars.map(_EVENT_OF_STARS), C.TIMESTAMP: ratings[C.TIMESTAMP]})
    funnel = main[main[C.EVENT_TYPE].isin(["add_to_cart", "purchase"])]
    views = funnel.assign(**{C.EVENT_TYPE: "view", C.TIMESTAMP: funnel[C.TIMESTAMP] - pd.Timedelta(minutes=1)})
    bought = main[main[C.EVENT_TYPE] == "purchase"]
    returned = bought[rng.random(len(bought)) < 0.05]
    returns = returned.assign(**{C.EVENT_TYPE: "return", C.TIMESTAMP: returned[C.TIMESTAMP] + pd.Timedelta(days=7)})
    # A return a week later may fall after the data's last day: keep the log's span.
    returns = returns[returns[C.TIMESTAMP] <= ratings[C.TIMESTAMP].max()]
    events = pd.concat([main, views, returns], ignore_index=True)
    return events.sort_values([C.TIMESTAMP, C.USER, C.ITEM, C.EVENT_TYPE], kind="stable").reset_index(drop=True)


def write_inbox(directory: Path, spec: SyntheticSpec = SyntheticSpec(), events: bool = False) -> list[Path]:
    """Write the generated files as CSV into ``directory`` (an inbox); returns the paths.

    ``events``: the interactions as an event log (:func:`events_of`, ``synthetic_events.csv``)
    instead of ratings.
    """
    directory.mkdir(parents=True, exist_ok=True)
    data = generate(spec)
    ratings = events_of(data["ratings"], spec.seed) if events else data["ratings"].copy()
    epoch = pd.Timestamp(0, tz="UTC")
    ratings[C.TIMESTAMP] = (ratings[C.TIMESTAMP] - epoch) // pd.Timedelta(seconds=1)
    paths = []
    for name, frame in (("events" if events else "ratings", ratings), ("item_features", data["item_features"]),
                        ("items", data["items"])):
        path = directory / f"synthetic_{name}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class LargeSpec:
    """A MovieLens-20M-shaped rating log (138k users, 27k items, 20M ratings at scale 1).

    Users have a heavy-tailed number of ratings (at least ``min_per_user``), items a
    Zipf-like popularity, and each user draws mostly from one of ``n_clusters`` taste
    groups, so personalised models have structure to find. Unlike :func:`generate`
    it is vectorised and written in user chunks, so memory stays bounded at any scale.
    """

    n_users: int = 138_493
    n_items: int = 26_744
    n_ratings: int = 20_000_263
    n_clusters: int = 20
    min_per_user: int = 20
    taste_share: float = 0.7
    start: dt.date = dt.date(2010, 1, 1)
    end: dt.date = dt.date(2015, 3, 31)
    seed: int = 11

    def scaled(self, factor: float) -> LargeSpec:
        """``factor`` times the users and ratings; the catalogue only shrinks, never grows."""
        from dataclasses import replace

        return replace(self, n_users=max(1, round(self.n_users * factor)),
                       n_items=max(10, round(self.n_items * min(factor, 1.0))),
                       n_ratings=max(1, round(self.n_ratings * factor)))


def write_large_csv(path: Path, spec: LargeSpec = LargeSpec(), chunk_users: int = 20_000) -> int:
    """Write a ``user_id,item_id,rating,timestamp`` CSV of ``spec``; returns the row count."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(spec.seed)
    extra = max(spec.n_ratings - spec.min_per_user * spec.n_users, 0)
    # Heavy-tailed activity: a log-normal share of the ratings above the minimum per user.
    weights = rng.lognormal(0.0, 1.2, spec.n_users)
    counts = spec.min_per_user + rng.multinomial(extra, weights / weights.sum())
    user_cluster = rng.integers(0, spec.n_clusters, spec.n_users)
    item_cluster = rng.integers(0, spec.n_clusters, spec.n_items)
    pop = 1.0 / np.power(rng.permutation(spec.n_items) + 1.0, 0.9)
    global_cdf = np.cumsum(pop / pop.sum())
    cluster_cdfs = []
    for c in range(spec.n_clusters):
        p = pop * (item_cluster == c)
        cluster_cdfs.append(np.cumsum(p / p.sum()) if p.sum() > 0 else global_cdf)
    t0 = dt.datetime.combine(spec.start, dt.time(), tzinfo=dt.UTC).timestamp()
    t1 = dt.datetime.combine(spec.end, dt.time(), tzinfo=dt.UTC).timestamp()
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float32()),
                        ("timestamp", pa.int64())])
    with open(path, "wb") as fh:
        fh.write(b"user_id,item_id,rating,timestamp\n")  # unquoted, as most exports write it
    with open(path, "ab") as fh, pacsv.CSVWriter(fh, schema, write_options=pacsv.WriteOptions(
            include_header=False)) as out:
        for lo in range(0, spec.n_users, chunk_users):
            users = np.arange(lo, min(lo + chunk_users, spec.n_users))
            n = counts[users]
            u = np.repeat(users, n)
            taste = rng.random(len(u)) < spec.taste_share
            items = np.searchsorted(global_cdf, rng.random(len(u)))
            for c in range(spec.n_clusters):
                sel = taste & (user_cluster[u] == c)
                items[sel] = np.searchsorted(cluster_cdfs[c], rng.random(int(sel.sum())))
            items = np.minimum(items, spec.n_items - 1)
            # Each user is active over a window of the period; ratings in time order within it.
            first = rng.uniform(t0, t1, len(users))
            span = rng.exponential(86400 * 200, len(users))
            ts = np.repeat(first, n) + rng.random(len(u)) * np.repeat(span, n)
            ts = np.minimum(ts, t1 - 1).astype(np.int64)
            rating = np.clip(np.round(rng.normal(3.6, 1.0, len(u)) * 2) / 2, 0.5, 5.0).astype(np.float32)
            out.write_table(pa.table({"user_id": u + 1, "item_id": items + 1, "rating": rating,
                                      "timestamp": ts}))
            written += len(u)
    return written
