"""The one atomic writer: a file or a folder appears whole or not at all.

Every artifact recjobs writes (lake partitions, side tables, quarantine files, staged
lists, saved matrices and models, per-user metrics, caches) is written under a
temporary name beside its final place, flushed to disk, then renamed over it. A reader
(another task, the dashboard) sees the old version or the new one, never half of one;
a writer killed part-way leaves a hidden ``.<name>.<random>.tmp`` that nothing reads.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.{suffix}")


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends cleanly, fsync it and rename it over ``path``.

    Write the whole file to the yielded path inside the block. If the block raises,
    the temporary file is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; when the block ends cleanly, it replaces ``path``.

    The old folder (if any) is moved aside and removed after the new one is in place.
    If the block raises, the temporary folder is removed and ``path`` is left as it was.
    """
    tmp = _sibling(path, "tmp")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb") as fh:
                    os.fsync(fh.fileno())
        old = _sibling(path, "old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, value: Any) -> Path:  # noqa: ANN401 - any JSON value
    """Write ``value`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str))


def write_parquet(table: Any, path: Path, compression: str = "zstd") -> Path:  # noqa: ANN401 - a pyarrow Table
    """Write an Arrow table to the Parquet file ``path`` atomically."""
    import pyarrow.parquet as pq

    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression=compression)
    return path





def commit(tmp: Path, path: Path) -> Path:
    """Flush the finished temporary file ``tmp`` to disk and rename it over ``path``.

    For writers that stream a file over several calls (a quarantine file), where
    :func:`atomic_file`'s ``with`` block does not fit.
    """
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
__all__ = ["atomic_dir", "atomic_file", "commit", "write_json", "write_parquet", "write_text"]
