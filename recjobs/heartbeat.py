"""Progress lines for long steps that have no loop of their own to report from.

A stage such as the split is a few large array operations (a sort of every row, a
matrix build), each of which may take minutes at 200M rows. :class:`Heartbeat` names
the phase a stage is in and, from a background thread, logs it again whenever nothing
was logged for ``every`` seconds, so an operator watching the task log always sees
what it is doing and for how long. NumPy and Arrow release the GIL in those operations,
so the thread gets to run.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType


class Heartbeat:
    """Use as a context manager; call :meth:`phase` as the stage moves on."""

    def __init__(self, logger: logging.Logger, name: str, every: float = 10.0) -> None:
        self.logger, self.name, self.every = logger, name, every
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._phase = "starting"
        self._started = self._phase_started = self._last_log = time.perf_counter()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        self._started = self._phase_started = self._last_log = time.perf_counter()
        self._thread = threading.Thread(target=self._beat, name=f"{self.name}-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

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

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            now = time.perf_counter()
            with self._lock:
                if now - self._last_log < self.every:
                    continue
                self._last_log = now
                text, running = self._phase, now - self._phase_started
            self.logger.info("%s: still %s, %.0fs in (elapsed %.0fs)", self.name, text, running, now - self._started)
