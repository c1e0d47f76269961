"""Staging: ranked lists written to Parquet files, with no database transaction open.

Scoring happens while a list is written here (the frames are usually a lazy ranking
generator), so ranking never holds a database lock; loading reads the files back.
Each staged file records the model version its lists were ranked with.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recjobs import columns as C
from recjobs.db.schema import LIST_COLUMNS
from recjobs.files import atomic_file

# The staged file's metadata key for the model version its lists were ranked with.
VERSION_KEY = b"recjobs.model_version"


def staging_schema(kind: str) -> pa.Schema:
    """The columns a staged list of ``kind`` holds (the table's, without ``generated_at``)."""
    return _staging_schema(kind)


def _staging_schema(kind: str) -> pa.Schema:
    key, target = (c.name for c in LIST_COLUMNS[kind][:2])
    fields = [
        pa.field(key, pa.string(), nullable=False),
        pa.field(target, pa.string(), nullable=False),
        pa.field(C.RANK, pa.int32(), nullable=False),
        pa.field(C.SCORE, pa.float64(), nullable=False),
        pa.field(C.MODEL_VERSION, pa.string(), nullable=False),
    ]
    if any(c.name == C.PREDICTED_RATING for c in LIST_COLUMNS[kind]):
        fields.append(pa.field(C.PREDICTED_RATING, pa.float64(), nullable=True))
    return pa.schema(fields)


def rank_to_staging(frames: Iterable[pd.DataFrame], kind: str, path: Path, model_version: str | None = None) -> Path:
    """Write the ranked ``frames`` of list ``kind`` to the Parquet file ``path``, atomically.

    This is where scoring happens (``frames`` is usually a lazy ranking generator), so
    it runs with no database connection open: ranking never holds a write lock. The
    file appears whole or not at all (temporary file, fsync, rename). ``model_version``,
    the model the lists were ranked with, is also written to the file's metadata
    (:func:`staged_version`), so a load can check it without reading the rows.
    """
    schema = _staging_schema(kind)
    if model_version is not None:
        schema = schema.with_metadata({VERSION_KEY: model_version.encode()})
    with atomic_file(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for frame in frames:
            # Lists of a model without rating predictions (and fallback lists) have none: NULL.
            missing = {f.name: np.nan for f in schema if f.nullable and f.name not in frame}
            frame = frame.assign(**missing) if missing else frame
            writer.write_table(pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False))
    return path


def staged_rows(paths: Sequence[Path]) -> int:
    """How many rows the staged files ``paths`` hold, from their footers (no row is read)."""
    total = 0
    for path in paths:
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowInvalid) as exc:
            raise FileNotFoundError(f"cannot read staged list {path}: {exc}") from exc
    return total


def staged_version(path: Path) -> str | None:
    """The model version the staged file ``path`` was ranked with; None for an empty file without one.

    Read from the file's metadata; a file staged before the metadata existed is read
    from its ``model_version`` column. Several versions in one file read as
    ``"a, b"``, which matches no model.
    """
    try:
        source = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise FileNotFoundError(f"cannot read staged list {path}: {exc}") from exc
    meta = source.schema_arrow.metadata or {}
    if VERSION_KEY in meta:
        return meta[VERSION_KEY].decode()
    versions = sorted(set(source.read(columns=[C.MODEL_VERSION]).column(0).unique().to_pylist()))
    return ", ".join(versions) or None


def read_staging(paths: Path | Sequence[Path], batch_rows: int = 200_000,
                 arrow: bool = False) -> Iterator[pd.DataFrame] | Iterator[pa.Table]:
    """The staged list at ``paths`` (one file, or a list's shards in order) in frames of ``batch_rows`` rows.

    Frames are pandas, or Arrow tables with ``arrow`` (what the bulk load sends without
    converting). Every file is opened before the first frame is produced, so a missing or
    unreadable shard fails before any transaction starts.
    """
    files = []
    for path in [paths] if isinstance(paths, Path) else list(paths):
        try:
            files.append(pq.ParquetFile(path))
        except (OSError, pa.ArrowInvalid) as exc:
            raise FileNotFoundError(f"cannot read staged list {path}: {exc}") from exc
    batches = (batch for source in files for batch in source.iter_batches(batch_size=batch_rows))
    if arrow:
        return (pa.Table.from_batches([batch]) for batch in batches)
    return (batch.to_pandas() for batch in batches)


__all__ = ["VERSION_KEY", "rank_to_staging", "read_staging", "staged_rows", "staged_version", "staging_schema"]
