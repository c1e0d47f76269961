"""Predictions of a trained LightGBM forest, compiled to native code once they are many.

Serving the ranker at ML-20M size predicts ~130 candidates for each of ~140k users with
300 trees: LightGBM's own tree walk was 41% of the publish's ranking. lleaves compiles
the same trees into straight-line machine code (LLVM), measured 6.3x faster on two
threads at the same scores (within 1e-14 in float64, then rounded to float32 as
before). Compiling costs a few seconds, so a forest is compiled only once it has
predicted ``COMPILE_AFTER_ROWS`` rows in this process: small fits and the tests keep
LightGBM's path, a night's evaluation and publish switch after their first blocks.

The compiled code is for this machine's CPU (its vector extensions), so it is never
saved with the model: every process compiles its own.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Rows predicted by LightGBM before the forest is compiled: ~5 s of LightGBM's time at
# 300 trees on 2 threads, against a compile of ~4 s.
COMPILE_AFTER_ROWS = 1_000_000


def _compile(booster: Any) -> Any:  # noqa: ANN401 - a lightgbm Booster in, an lleaves Model out
    import lleaves

    with tempfile.TemporaryDirectory(prefix="recjobs-forest-") as tmp:
        path = os.path.join(tmp, "model.txt")
        booster.save_model(path)
        model = lleaves.Model(model_file=path)
        model.compile()
    return model


class ForestPredictor:
    """``predict`` of a LightGBM booster: LightGBM's own until ``compile_after`` rows, then compiled.

    ``compile_after=None`` never compiles. When lleaves is missing or its compile fails,
    it says so once and keeps LightGBM's path (same scores, slower).
    """

    def __init__(self, booster: Any, threads: int, compile_after: int | None = COMPILE_AFTER_ROWS) -> None:  # noqa: ANN401
        self.booster = booster
        self.threads = threads
        self.compile_after = compile_after
        self.rows = 0
        self.compiled: Any = None
        self._failed = False

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The booster's raw scores of the rows of ``x`` (float32)."""
        if self.compiled is None and not self._failed and self.compile_after is not None \
                and self.rows >= self.compile_after:
            started = time.perf_counter()
            try:
                self.compiled = _compile(self.booster)
            except (ImportError, AttributeError, RuntimeError, OSError, ValueError) as exc:
                # lleaves missing, or an llvmlite it does not fit (0.45 dropped an API it uses)
                self._failed = True
                log.warning("forest: not compiled (%s: %s); LightGBM predicts every row",
                            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            else:
                log.info("forest: %d trees compiled to native code in %.1fs after %s rows",
                         self.booster.num_trees(), time.perf_counter() - started, f"{self.rows:,}")
        self.rows += len(x)
        if self.compiled is not None and len(x):
            return np.asarray(self.compiled.predict(np.asarray(x, np.float64), n_jobs=self.threads), np.float32)
        return np.asarray(self.booster.predict(x, num_threads=self.threads), np.float32)


__all__ = ["COMPILE_AFTER_ROWS", "ForestPredictor"]
