"""The one progress logger: every long step says what it does, how fast, and when it ends.

Three shapes of long step, one module:

* :class:`RateProgress`: a loop over rows or users (ingest's validation and merge,
  ranking users, bulk loads) logs rows done, rows/s and an ETA at most every ``every``
  seconds.
* :class:`Heartbeat`: a step made of a few large array operations with no loop to
  report from (the split's sort, EASE's inverse, an index build) names its phase and,
  from a background thread, repeats it whenever nothing was logged for ``every``
  seconds. NumPy, Arrow, LAPACK and the databases release the GIL there, so the thread
  gets to run.
* :class:`EpochProgress`: an iterative trainer logs one line per epoch and a heartbeat
  inside long epochs, and keeps the wall-clock budget (below).

The budget is a deadline checked at the end of each epoch: another epoch starts only if,
at the pace of the one just finished, it would end within ``max_seconds``. The first
epoch always runs (a model needs one), so only a first epoch longer than the whole
budget makes a run exceed it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any


def duration(seconds: float) -> str:
    """``seconds`` as a short human duration: 42s, 3.5m, 1.2h."""
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


class RateProgress:
    """Logs a loop's progress at most every ``every`` seconds, with a rate and an ETA.

    Call :meth:`update` as the loop goes with the count done so far; the share done is
    ``done / total`` when ``total`` is known, else the ``share`` given.
    """

    def __init__(self, logger: logging.Logger, what: str, total: int | None = None, every: float = 10.0,
                 unit: str = "rows", clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.what, self.total, self.every, self.unit = logger, what, total, every, unit
        self._clock = clock
        self.start = self.last = clock()

    def update(self, done: int, *, share: float | None = None, detail: str = "", final: bool = False) -> None:
        """Log ``done`` (and ``detail``) if ``every`` seconds passed since the last line, or ``final``."""
        now = self._clock()
        if not final and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        if share is None and self.total:
            share = min(done / self.total, 1.0)
        rate = done / max(elapsed, 1e-9)
        count = f"{done:,}/{self.total:,}" if self.total else f"{done:,}"
        if share is None:
            # Nothing says how much is left (no total): no share done and no ETA to invent.
            self.logger.info("%s: %s%s %s, %.0f %s/s, %.0fs elapsed", self.what, f"{detail}; " if detail else "",
                             count, self.unit, rate, self.unit, elapsed)
            return
        eta = f"{elapsed * (1 - share) / share:.0f}s" if share else "unknown"
        self.logger.info("%s: %s%s %s, %.0f %s/s, %.0f%% done, ETA %s, %.0fs elapsed", self.what,
                         f"{detail}; " if detail else "", count, self.unit, rate, self.unit,
                         100 * share, eta, elapsed)


class _Beating:
    """A background thread that calls :meth:`_tick` about every second until the block ends."""

    _thread_name = "progress"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start_beating(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def _stop_beating(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self._every())):
            self._tick()

    def _every(self) -> float:
        raise NotImplementedError

    def _tick(self) -> None:
        raise NotImplementedError

class Heartbeat(_Beating):
    """Use as a context manager; call :meth:`phase` as the stage moves on."""

    def __init__(self, logger: logging.Logger, name: str, every: float = 10.0) -> None:
        super().__init__()
        self.logger, self.name, self.every = logger, name, every
        self._thread_name = f"{name}-heartbeat"
        self._lock = threading.Lock()
        self._phase = "starting"
        self._started = self._phase_started = self._last_log = time.perf_counter()

    def __enter__(self) -> Heartbeat:
        self._started = self._phase_started = self._last_log = time.perf_counter()
        self._start_beating()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop_beating()

    @property
    def elapsed(self) -> float:
        """Seconds since the stage started."""
        return time.perf_counter() - self._started

    def phase(self, text: str) -> None:
        """Log that the stage now does ``text`` (and keep repeating it while it does)."""
        now = time.perf_counter()
        with self._lock:
            self._phase, self._phase_started, self._last_log = text, now, now
        self.logger.info("%s: %s (elapsed %.0fs)", self.name, text, now - self._started)

    def _every(self) -> float:
        return self.every

    def _tick(self) -> None:
        now = time.perf_counter()
        with self._lock:
            if now - self._last_log < self.every:
                return
            self._last_log = now
            text, running = self._phase, now - self._phase_started
        self.logger.info("%s: still %s, %.0fs in (elapsed %.0fs)", self.name, text, running, now - self._started)


class EpochProgress(_Beating):
    """Epoch loop bookkeeping: progress lines, heartbeat, and the ``max_seconds`` budget.

    Use as a context manager; call :meth:`start_epoch` before and :meth:`end_epoch`
    after each epoch, and optionally :meth:`advance` with examples done within one.
    """

    def __init__(
        self,
        logger: logging.Logger,
        name: str,
        epochs: int,
        examples_per_epoch: int,
        max_seconds: float | None = None,
        every: float = 10.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self._thread_name = f"{name}-progress"
        self._clock = clock  # seconds; tests give a clock of their own
        self.logger = logger
        self.name = name
        self.epochs = epochs
        self.examples_per_epoch = max(int(examples_per_epoch), 1)
        self.max_seconds = max_seconds
        self.every = every
        self.epochs_done = 0
        self.stopped_by_budget = False
        self._lock = threading.Lock()
        self._started = self._clock()
        self._epoch = 0
        self._epoch_started = self._started
        self._epoch_examples = 0
        self._last_epoch_seconds: float | None = None
        self._examples_seconds: float | None = None
        self._last_log = self._started

    # -- context -----------------------------------------------------------------
    def __enter__(self) -> EpochProgress:
        self._started = self._last_log = self._clock()
        self._start_beating()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop_beating()

    @property
    def elapsed(self) -> float:
        """Seconds since the loop started."""
        return self._clock() - self._started

    # -- the loop ------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        """Mark the start of 1-based ``epoch``."""
        with self._lock:
            self._epoch = epoch
            self._epoch_started = self._clock()
            self._epoch_examples = 0

    def advance(self, examples: int) -> None:
        """Count ``examples`` done within the current epoch (for mid-epoch lines)."""
        with self._lock:
            self._epoch_examples += examples

    def examples_done(self) -> None:
        """Mark the end of the epoch's training steps, before any validation.

        examples/s is then the training rate alone; the epoch's duration still counts both.
        """
        with self._lock:
            self._examples_seconds = self._clock() - self._epoch_started

    def end_epoch(self, **scores: float) -> bool:
        """Log the finished epoch; True when the budget is spent and training should stop."""
        now = self._clock()
        with self._lock:
            seconds = now - self._epoch_started
            training = self._examples_seconds or seconds
            self._examples_seconds = None
            self._last_epoch_seconds = seconds
            self.epochs_done = self._epoch
            self._epoch = 0
            self._last_log = now
        rate = self.examples_per_epoch / max(training, 1e-9)
        extra = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in scores.items())
        self.logger.info("%s epoch %d/%d done in %.1fs: %s examples/s%s, elapsed %s, %s",
                         self.name, self.epochs_done, self.epochs, seconds, f"{rate:,.0f}", extra,
                         duration(now - self._started), self._eta(now, remaining_in_epoch=0.0))
        spent = now - self._started
        if (self.max_seconds is not None and self.epochs_done < self.epochs
                and spent + seconds > self.max_seconds):
            self.stopped_by_budget = True
            why = ("spent" if spent >= self.max_seconds else
                   f"would be passed by another epoch ({duration(spent)} + about {duration(seconds)})")
            self.logger.info("%s: budget of %s %s after epoch %d/%d; stopping here",
                             self.name, duration(self.max_seconds), why, self.epochs_done, self.epochs)
            return True
        return False

    def info(self) -> dict[str, Any]:
        """What to record in the model's ``info``: epochs run and whether the budget stopped it."""
        return {"epochs_run": self.epochs_done, "epochs_planned": self.epochs,
                "stopped_by_budget": self.stopped_by_budget, "max_seconds": self.max_seconds,
                "train_seconds": round(self.elapsed, 3)}

    # -- lines -----------------------------------------------------------------------
    def _eta(self, now: float, remaining_in_epoch: float, per_epoch: float | None = None,
             running: bool = False) -> str:
        per_epoch = self._last_epoch_seconds or per_epoch
        epochs_left = self.epochs - max(self.epochs_done, self._epoch)
        if per_epoch is None:
            by_epochs = "ETA unknown until the first epoch ends"
        else:
            by_epochs = f"ETA {duration(remaining_in_epoch + epochs_left * per_epoch)} by epochs"
        if self.max_seconds is None:
            return by_epochs + ", no time budget"
        left = self.max_seconds - (now - self._started)
        if left <= 0:
            return by_epochs + (", budget spent (stops at the end of this epoch)" if running else ", budget spent")
        return by_epochs + f", budget ends in {duration(left)}"

    def _every(self) -> float:
        return self.every

    def _tick(self) -> None:
        now = self._clock()
        with self._lock:
            if now - self._last_log < self.every or self._epoch == 0:
                return
            self._last_log = now
            epoch, done = self._epoch, self._epoch_examples
            in_epoch = now - self._epoch_started
            per_epoch = self._last_epoch_seconds
        if done:
            rate = done / max(in_epoch, 1e-9)
            share = min(done / self.examples_per_epoch, 1.0)
            where = f"{share:.0%} ({done:,} of {self.examples_per_epoch:,} examples), {rate:,.0f} examples/s"
            remaining = (self.examples_per_epoch - done) / max(rate, 1e-9)
            per_epoch = per_epoch or self.examples_per_epoch / max(rate, 1e-9)
        elif per_epoch is not None:
            # No count from inside the library's loop: estimate from the previous epoch.
            share = min(in_epoch / per_epoch, 0.99)
            rate = self.examples_per_epoch / per_epoch
            where = f"~{share:.0%} (estimated), ~{rate:,.0f} examples/s"
            remaining = max(per_epoch - in_epoch, 0.0)
        else:
            where = f"{self.examples_per_epoch:,} examples, first epoch"
            remaining = 0.0
        self.logger.info("%s epoch %d/%d running %.0fs: %s, elapsed %s, %s",
                         self.name, epoch, self.epochs, in_epoch, where,
                         duration(now - self._started), self._eta(now, remaining, per_epoch, running=True))
