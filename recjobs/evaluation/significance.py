"""Paired significance tests over users: is one model's gain over another real or noise?"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Above this many users, the bootstrap resamples this many random groups of users instead.
BOOTSTRAP_UNITS = 20_000


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison over users: mean of (challenger - reference), its interval, the p-value.

    ``ci_low``/``ci_high`` bound a two-sided ``1 - level`` interval; ``p_value`` is
    two-sided, for "no difference". Both are None when no test was run.
    """

    diff: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    users: int
    test: str

    def describe(self) -> str:
        """E.g. ``+0.0120 [0.0040, 0.0200], p=0.003``."""
        if self.p_value is None or self.ci_low is None or self.ci_high is None:
            return f"{self.diff:+.4f} (no significance test)"
        return f"{self.diff:+.4f} [{self.ci_low:.4f}, {self.ci_high:.4f}], p={self.p_value:.3g}"


def paired_test(
    challenger: np.ndarray,
    reference: np.ndarray,
    test: str = "bootstrap",
    level: float = 0.05,
    samples: int = 1000,
    seed: int = 0,
) -> PairedTest:
    """Compare two per-user metric arrays aligned on the same users.

    ``bootstrap``: users are resampled with replacement ``samples`` times (seeded, so
    reruns agree); the interval is the percentile interval of the resampled mean
    differences and the p-value that of the shifted null, ``(1 + #|m* - d| >= |d|) /
    (samples + 1)``. ``ttest``: the paired t-test and its t interval. ``none``: only
    the mean difference. Per-user NDCG is mostly zeros with a long tail, which is why
    the default is the bootstrap: it assumes no shape.
    """
    d = np.asarray(challenger, np.float64) - np.asarray(reference, np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("paired test over no users")
    mean = float(d.mean())
    if test == "none":
        return PairedTest(mean, None, None, None, n, test)
    if test == "ttest":
        from scipy import stats

        sd = float(d.std(ddof=1)) if n > 1 else 0.0
        if sd == 0.0:
            # No spread: identical lists give no evidence of a difference; a constant gain is certain.
            return PairedTest(mean, mean, mean, 1.0 if mean == 0.0 else 0.0, n, test)
        se = sd / math.sqrt(n)
        t_crit = float(stats.t.ppf(1.0 - level / 2.0, n - 1))
        p = float(2.0 * stats.t.sf(abs(mean) / se, n - 1))
        return PairedTest(mean, mean - t_crit * se, mean + t_crit * se, p, n, test)
    if test != "bootstrap":
        raise ValueError(f"unknown paired test {test!r}; use bootstrap, ttest or none")
    rng = np.random.default_rng(seed)
    sums, sizes = d, np.ones(n)
    if n > BOOTSTRAP_UNITS:
        # Resampling 138k users 1000 times draws 138M indices (~7 s on 2 cores). Users are
        # independent, so seeded random groups of them are independent units too: the
        # groups are resampled instead, at a fixed cost, with the same interval in expectation.
        group = np.empty(n, np.int64)
        group[rng.permutation(n)] = np.arange(n) % BOOTSTRAP_UNITS
        sums = np.bincount(group, weights=d, minlength=BOOTSTRAP_UNITS)
        sizes = np.bincount(group, minlength=BOOTSTRAP_UNITS).astype(np.float64)
    units = len(sums)
    means = np.empty(samples, np.float64)
    # A block of resamples at a time, so the index matrix stays small.
    block = max(1, 4_000_000 // units)
    for lo in range(0, samples, block):
        hi = min(samples, lo + block)
        pick = rng.integers(0, units, size=(hi - lo, units), dtype=np.int32 if units < 2**31 else np.int64)
        means[lo:hi] = sums[pick].sum(axis=1) / sizes[pick].sum(axis=1)
    low, high = np.quantile(means, [level / 2.0, 1.0 - level / 2.0])
    extreme = int(np.count_nonzero(np.abs(means - mean) >= abs(mean) - 1e-15))
    return PairedTest(mean, float(low), float(high), (1 + extreme) / (samples + 1), n, test)


def lower_bound(values: np.ndarray, test: str = "bootstrap", level: float = 0.05, samples: int = 1000,
                seed: int = 0) -> float:
    """The lower end of the two-sided ``1 - level`` interval of the mean of ``values`` (per-user).

    ``bootstrap``: the ``level / 2`` quantile of ``samples`` seeded resampled means (users
    in random groups above :data:`BOOTSTRAP_UNITS`, as :func:`paired_test`); ``ttest``: the
    t interval's; ``none``: the mean itself (no interval).
    """
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        raise ValueError("lower bound over no users")
    mean = float(v.mean())
    if test == "none" or len(v) == 1:
        return mean
    if test == "ttest":
        from scipy import stats

        se = float(v.std(ddof=1)) / math.sqrt(len(v))
        return mean - float(stats.t.ppf(1.0 - level / 2.0, len(v) - 1)) * se
    # A paired test against zero resamples exactly the user means we need.
    test_ = paired_test(v, np.zeros_like(v), "bootstrap", level, samples, seed)
    return float(test_.ci_low) if test_.ci_low is not None else mean


__all__ = ["BOOTSTRAP_UNITS", "PairedTest", "lower_bound", "paired_test"]
