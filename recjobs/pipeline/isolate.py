"""Stages in child processes: a one-process night (``recjobs run``) whose peak memory is its
largest stage's, not the sum of what every stage left behind.

Each Airflow task is its own process, so a DAG run never accumulates memory from one
stage to the next; a night run as one process would (TensorFlow's graphs and allocator,
Arrow's pools, numpy's freed-but-kept pages). With ``runs.isolate_stages`` (the CLI's
default) :func:`stage_runner` runs every stage in a fresh child forked from a
*forkserver* that has recjobs already imported, so a child starts in a fraction of a
second, begins with no thread state (safe for BLAS and Arrow), and returns all its memory
when it exits. Results and errors come back pickled; a child killed by the OS (out of
memory) is reported naming the stage.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from recjobs.errors import PipelineError
from recjobs.settings import Settings

log = logging.getLogger(__name__)

_context: multiprocessing.context.BaseContext | None = None


def _stage(name: str, settings: Settings, args: tuple[Any, ...], level: int | None = None) -> Any:  # noqa: ANN401
    """A stage by name with its own database engine; ``level``: a child's log level to set up."""
    if level is not None and not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from recjobs.db.schema import engine_for
    from recjobs.ingest import ingest_inbox
    from recjobs.pipeline.candidates import evaluate_candidate, train_candidate
    from recjobs.pipeline.final import train_final
    from recjobs.pipeline.gate import promote
    from recjobs.pipeline.publish import publish
    from recjobs.pipeline.split import guard_and_prepare

    with_engine: dict[str, Callable[..., Any]] = {
        "ingest": ingest_inbox, "train": train_candidate, "evaluate": evaluate_candidate,
        "promote": promote, "final": train_final, "publish": publish, "guard_and_split": guard_and_prepare,
    }
    engine = engine_for(settings)
    try:
        return with_engine[name](settings, engine, *args)
    finally:
        engine.dispose()


def _forkserver() -> multiprocessing.context.BaseContext:
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        # Children fork from a server that has imported these: each starts in well under a
        # second instead of importing numpy, pandas, Arrow and SQLAlchemy again.
        context.set_forkserver_preload(["recjobs.pipeline"])
        _context = context
    return _context


def stage_runner(settings: Settings, isolate: bool) -> Callable[..., Any]:
    """A ``run(name, *args)`` that runs stage ``name`` (ingest, guard_and_split, train, evaluate,
    promote, final, publish) with ``settings``: in a fresh child process when ``isolate``, else here."""
    if not isolate:
        return lambda name, *args: _stage(name, settings, args)

    def run(name: str, *args: Any) -> Any:  # noqa: ANN401
        level = logging.getLogger().getEffectiveLevel()
        with ProcessPoolExecutor(max_workers=1, mp_context=_forkserver(), max_tasks_per_child=1) as pool:
            try:
                return pool.submit(_stage, name, settings, args, level).result()
            except BrokenProcessPool:
                raise PipelineError(f"the {name} stage's process died (killed by the OS, e.g. out of memory?); "
                                    "see its log above") from None

    return run


__all__ = ["stage_runner"]
