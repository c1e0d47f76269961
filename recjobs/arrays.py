"""Array helpers that numpy lacks, or makes slow.

numpy 2.4's plain ``np.unique(a)`` (no ``return_*`` argument) takes a hash-based path that
is about 80x slower than one sort on large integer arrays (8M int64: 11.9 s against 0.14 s
on this machine), so large arrays go through :func:`distinct` instead.
"""

from __future__ import annotations

import numpy as np


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of ``values``, as ``np.unique(values)`` gives them, by one sort.

    For integer (and NaN-free float) arrays: unlike ``np.unique``, NaNs are not merged.
    """
    values = np.sort(np.asarray(values).ravel())
    return values[np.append(True, values[1:] != values[:-1])] if len(values) else values


__all__ = ["distinct"]
