"""The guards' checks as pure functions of arrays and counts: no database, no files.

A night's input is compared with the trailing nights that have data (their median, or
their pooled ratings); the champion's lists with the live ones and its holdout metric
with the trailing champions'. Each check is a :class:`Check` with its value, the
threshold it was held to, and whether it passed. With too few trailing nights
(``guard.min_trailing_nights``) the comparisons pass with a note: a first run is never
held. The stage functions that feed them are in :mod:`recjobs.guard.stage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recjobs.arrays import distinct
from recjobs.settings import GuardSettings

INPUT, OUTPUT = "input", "output"
STAGES = (INPUT, OUTPUT)


@dataclass(frozen=True)
class Check:
    """One check of a night: its value, the threshold in words, whether it passed, and any note."""

    name: str
    value: float | None
    threshold: str
    passed: bool
    note: str = ""

    def describe(self) -> str:
        """``name = value (threshold ...)``, with the note if any: how a reason names the check."""
        value = "-" if self.value is None else f"{self.value:.4g}"
        return f"{self.name} = {value} (threshold {self.threshold})" + (f": {self.note}" if self.note else "")


@dataclass(frozen=True)
class NightStats:
    """What one night (a UTC day) delivered: volumes, newcomers and its rating histogram."""

    day: int  # days since 1970-01-01
    rows: int
    users: int
    items: int
    new_users: int  # users first seen that night
    new_items: int
    rating_counts: np.ndarray  # per bin of the rating range
    rating_sum: float

    @classmethod
    def empty(cls, day: int, bins: int) -> NightStats:
        """A night without rows."""
        return cls(day, 0, 0, 0, 0, 0, np.zeros(bins, dtype=np.int64), 0.0)

    @property
    def mean_rating(self) -> float:
        return self.rating_sum / self.rows if self.rows else 0.0


def rating_edges(rating_min: float, rating_max: float, bins: int) -> np.ndarray:
    """``bins`` equal bins over the rating range (one bin holds every rating when the range is empty)."""
    hi = rating_max if rating_max > rating_min else rating_min + 1.0
    return np.linspace(rating_min, hi, bins + 1)


# Rows looked at a time: the stats of 200M rows need no temporary of the window's size.
_CHUNK = 8_000_000


def nightly_stats(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, days: np.ndarray,
                  edges: np.ndarray, unit: int = 1) -> dict[int, NightStats]:
    """Each day's :class:`NightStats` from coded rows (user and item codes, ratings, day numbers).

    A user (item) is new on the first day it appears in these rows, so pass every row
    since the beginning of the data for newcomers to mean "never seen before". ``unit``:
    ``days`` holds times, each day being ``unit`` of them (Unix ms and ``DAY_MS``). Rows are
    taken a chunk at a time, in order (each day's rating sum adds its rows in row order).
    """
    bins = len(edges) - 1
    if len(days) == 0:
        return {}
    chunks = [slice(lo, lo + _CHUNK) for lo in range(0, len(days), _CHUNK)]

    def day_of(part: slice) -> np.ndarray:
        return np.asarray(days[part], dtype=np.int64) // unit

    first_day = min(int(day_of(part).min()) for part in chunks)
    present = np.zeros(max(int(day_of(part).max()) for part in chunks) - first_day + 1, bool)
    for part in chunks:
        present[day_of(part) - first_day] = True
    unique_days = first_day + np.flatnonzero(present)
    index_of = np.cumsum(present, dtype=np.int64) - 1
    n_days = len(unique_days)
    columns = (users, items)
    widths = [max(int(codes[part].max()) for part in chunks) + 1 for codes in columns]
    rows = np.zeros(n_days, np.int64)
    counts = np.zeros(n_days * bins, np.int64)
    sums = np.zeros(n_days, np.float64)
    # Per column: the distinct (day, code) keys met so far, and each code's first day.
    pairs: list[list[np.ndarray]] = [[], []]
    firsts = [np.full(width, n_days, dtype=np.int64) for width in widths]
    for part in chunks:
        day_index = index_of[day_of(part) - first_day]
        rows += np.bincount(day_index, minlength=n_days)
        for codes, width, found, first in zip(columns, widths, pairs, firsts, strict=True):
            chunk = np.asarray(codes[part], dtype=np.int64)
            found.append(distinct(day_index * width + chunk))
            # Merged once the chunks' keys outnumber those merged so far: each key is sorted
            # a few times in all, and the memory stays about twice the distinct keys.
            if sum(len(f) for f in found[1:]) > max(len(found[0]), _CHUNK):
                found[:] = [distinct(np.concatenate(found))]
            np.minimum.at(first, chunk, day_index)
        chunk_ratings = np.asarray(ratings[part], dtype=np.float64)
        # The last edge is inclusive: a rating at rating_max lies in the last bin.
        bin_of = np.clip(np.searchsorted(edges, chunk_ratings, side="right") - 1, 0, bins - 1)
        counts += np.bincount(day_index * bins + bin_of, minlength=n_days * bins)
        np.add.at(sums, day_index, chunk_ratings)  # one running sum per day, in row order
    active, new = [], []
    for width, found, first in zip(widths, pairs, firsts, strict=True):
        active.append(np.bincount(distinct(np.concatenate(found)) // width, minlength=n_days))
        new.append(np.bincount(first[first < n_days], minlength=n_days))
    (active_users, active_items), (new_users, new_items) = active, new
    counts = counts.reshape(n_days, bins)
    return {int(d): NightStats(int(d), int(rows[i]), int(active_users[i]), int(active_items[i]), int(new_users[i]),
                               int(new_items[i]), counts[i], float(sums[i]))
            for i, d in enumerate(unique_days)}


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance of two histograms (counts): 0 the same shape, 1 disjoint."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def _few(trailing: int, g: GuardSettings) -> str:
    return (f"only {trailing} trailing night(s) with data (guard.min_trailing_nights = {g.min_trailing_nights}): "
            "recorded, not judged")


def input_checks(night: NightStats, trailing: Sequence[NightStats], quarantine_share: float | None,
                 g: GuardSettings, day_over: bool = True) -> list[Check]:
    """The input guard's checks of ``night`` against the ``trailing`` nights (oldest first).

    ``day_over`` False: the night is still running (a manual run for today), so a short
    volume is expected and only the upper bounds are judged.
    """
    median_rows = float(np.median([t.rows for t in trailing])) if trailing else 0.0
    enough = len(trailing) >= g.min_trailing_nights and median_rows >= g.min_judged_rows
    few = ("" if enough else _few(len(trailing), g) if len(trailing) < g.min_trailing_nights else
           f"trailing median {median_rows:g} rows a night (guard.min_judged_rows = {g.min_judged_rows}): "
           "recorded, not judged")
    running = "" if day_over else "the day is not over: only the upper bound is judged"
    checks = [Check("min_rows", float(night.rows), f">= {g.min_rows}",
                    not enough or not day_over or night.rows >= g.min_rows, few or running)]
    band = (g.min_volume_ratio if day_over else 0.0, g.max_volume_ratio)
    for name in ("rows", "users", "items"):
        median = float(np.median([getattr(t, name) for t in trailing])) if trailing else 0.0
        ratio = getattr(night, name) / median if median > 0 else None
        threshold = f"{band[0]:g}..{band[1]:g} x trailing median {median:g}"
        passed = not enough or (ratio is not None and band[0] <= ratio <= band[1])
        checks.append(Check(f"{name}_ratio", ratio, threshold, passed, few or running))
    for name, new, active in (("new_users", "new_users", "users"), ("new_items", "new_items", "items")):
        share = getattr(night, new) / getattr(night, active) if getattr(night, active) else 0.0
        shares = [getattr(t, new) / getattr(t, active) for t in trailing if getattr(t, active)]
        median = float(np.median(shares)) if shares else 0.0
        limit = max(g.max_new_share, g.max_volume_ratio * median)
        checks.append(Check(f"{name}_share", share, f"<= {limit:.4g} (max of guard.max_new_share and "
                            f"{g.max_volume_ratio:g} x trailing median {median:.4g})",
                            not enough or share <= limit, few))
    pooled = np.sum([t.rating_counts for t in trailing], axis=0) if trailing else None
    pooled_rows = sum(t.rows for t in trailing)
    judged = enough and night.rows >= g.min_rating_rows and pooled_rows > 0
    note = few or ("" if judged else f"only {night.rows} rows (guard.min_rating_rows = {g.min_rating_rows}): "
                   "recorded, not judged")
    distance = total_variation(night.rating_counts, pooled) if pooled is not None and night.rows else None
    checks.append(Check("rating_distance", distance, f"<= {g.max_rating_distance:g}",
                        not judged or (distance or 0.0) <= g.max_rating_distance, note))
    trailing_mean = sum(t.rating_sum for t in trailing) / pooled_rows if pooled_rows else None
    shift = abs(night.mean_rating - trailing_mean) if trailing_mean is not None and night.rows else None
    checks.append(Check("mean_rating_shift", shift, f"<= {g.max_mean_rating_shift:g}"
                        + ("" if trailing_mean is None else f" from trailing mean {trailing_mean:.3f}"),
                        not judged or (shift or 0.0) <= g.max_mean_rating_shift, note))
    checks.append(Check("quarantine_share", quarantine_share, f"<= {g.max_quarantine_share:g}",
                        quarantine_share is None or quarantine_share <= g.max_quarantine_share,
                        "" if quarantine_share is not None else "no ingested file delivered rows of the date"))
    return checks


@dataclass(frozen=True)
class ListStats:
    """What the champion's lists of a date hold, and how they compare with the live ones."""

    listed_items: int  # distinct items in the lists
    catalogue: int  # items the champion knows
    users: int  # users of the date (each should have a list)
    users_with_list: int
    live_items: int | None  # distinct items in the live lists; None: nothing live
    overlap: float | None  # mean share of a user's live list kept in the new one; None: no common user


def output_checks(lists: ListStats, metric: float | None, trailing_metrics: Sequence[float], metric_name: str,
                  g: GuardSettings) -> list[Check]:
    """The output guard's checks of the champion's lists and its holdout metric."""
    coverage = lists.listed_items / lists.catalogue if lists.catalogue else 0.0
    checks = [Check("coverage", coverage, f">= {g.min_coverage:g} (distinct listed items / catalogue "
                    f"{lists.catalogue})", coverage >= g.min_coverage)]
    if lists.live_items:
        ratio = lists.listed_items / lists.live_items
        checks.append(Check("coverage_ratio", ratio, f">= {g.min_coverage_ratio:g} x the live lists' "
                            f"{lists.live_items} distinct items", ratio >= g.min_coverage_ratio))
    else:
        checks.append(Check("coverage_ratio", None, f">= {g.min_coverage_ratio:g} x the live lists'", True,
                            "no live lists to compare with"))
    fallback = 1.0 - lists.users_with_list / lists.users if lists.users else 0.0
    checks.append(Check("fallback_share", fallback, f"<= {g.max_fallback_share:g} (users without a personal list, "
                        "served the fallback lists)", fallback <= g.max_fallback_share))
    checks.append(Check("overlap", lists.overlap, f">= {g.min_overlap:g} (mean share of a user's live list kept)",
                        lists.overlap is None or lists.overlap >= g.min_overlap,
                        "" if lists.overlap is not None else "no user with a live list to compare with"))
    enough = len(trailing_metrics) >= g.min_trailing_nights
    median = float(np.median(trailing_metrics)) if trailing_metrics else 0.0
    ratio = metric / median if metric is not None and median > 0 else None
    floor = 1.0 - g.max_metric_drop
    note = "" if enough else _few(len(trailing_metrics), g).replace("night(s) with data", "champion(s)")
    if enough and ratio is None:
        note = "no holdout metric to compare"
    checks.append(Check("metric_ratio", ratio, f">= {floor:g} x trailing champions' median {metric_name} "
                        f"{median:.4g}", not enough or ratio is None or ratio >= floor, note))
    return checks


def summary(checks: Sequence[Check]) -> str:
    """The failed checks, each with its value and threshold, in one line."""
    return "; ".join(c.describe() for c in checks if not c.passed)


__all__ = ["INPUT", "OUTPUT", "STAGES", "Check", "ListStats", "NightStats", "input_checks", "nightly_stats",
           "output_checks", "rating_edges", "summary", "total_variation"]
