"""Validated rows spilled to disk before the merge, and bad rows streamed to quarantine."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recjobs import columns as C
from recjobs.data.lake import DAY_MS, RATINGS_SCHEMA, SEQ
from recjobs.files import commit
from recjobs.ingest._layout import REQUIRED

_SPILL_CHUNK = 16_384  # rows per spill record batch: the merge reads whole batches


class Spill:
    """A file's validated rows on disk: one Arrow IPC run per batch, sorted by time, so
    the merge reads only the record batches holding the days it merges."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runs: list[Path] = []
        # Per record batch: (run, batch index in the run, first day, last day).
        self.chunks: list[tuple[int, int, int, int]] = []
        self.day_rows: Counter[int] = Counter()
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        days = table.column(C.TIMESTAMP).cast(pa.int64()).to_numpy() // DAY_MS  # floor division
        order = np.argsort(days, kind="stable")  # by day is enough: the merge sorts each day
        table = table.take(order).combine_chunks().cast(SPILL_SCHEMA)
        days = days[order]
        counts = np.bincount(days - days[0])
        found = np.flatnonzero(counts)
        self.day_rows.update(dict(zip((found + days[0]).tolist(), counts[found].tolist(), strict=True)))
        run = len(self.runs)
        path = self.folder / f"run-{run:06d}.arrow"
        options = pa.ipc.IpcWriteOptions(compression="lz4")
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as out:
            out.write_table(table, max_chunksize=_SPILL_CHUNK)
        for i, start in enumerate(range(0, table.num_rows, _SPILL_CHUNK)):
            end = min(start + _SPILL_CHUNK, table.num_rows) - 1
            self.chunks.append((run, i, int(days[start]), int(days[end])))
        self.runs.append(path)
        self.rows += table.num_rows

    def read_days(self, first: int, last: int) -> pa.Table:
        """Every spilled row whose day is in ``first..last`` (days since 1970)."""
        parts: list[pa.RecordBatch] = []
        readers: dict[int, pa.ipc.RecordBatchFileReader] = {}
        for run, i, lo, hi in self.chunks:
            if hi < first or lo > last:
                continue
            if run not in readers:
                readers[run] = pa.ipc.open_file(pa.OSFile(str(self.runs[run]), "rb"))
            batch = readers[run].get_batch(i)
            if lo < first or hi > last:
                day = np.floor_divide(batch.column(C.TIMESTAMP).cast(pa.int64()).to_numpy(), DAY_MS)
                batch = batch.filter(pa.array((day >= first) & (day <= last)))
            parts.append(batch)
        return pa.Table.from_batches(parts, schema=SPILL_SCHEMA)


SPILL_SCHEMA = RATINGS_SCHEMA.append(pa.field(SEQ, pa.int64(), nullable=False))
QUARANTINE_SCHEMA = pa.schema(
    [(C.SOURCE_FILE, pa.string())] + [(c, pa.string()) for c in REQUIRED]
    + [(C.REASON, pa.string()), (C.SOURCE_ROW, pa.int64()), (C.EVENT_TYPE, pa.string())]
)


class Quarantine:
    """Bad rows streamed to a temporary Parquet file, put in place whole by :meth:`finish`."""

    def __init__(self, path: Path, source: str) -> None:
        self.path, self.source = path, source
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, bad: pd.DataFrame) -> None:
        """Append one batch's bad rows (raw values as text, a reason, indexed by line)."""
        if bad.empty:
            return
        bad = bad.sort_index()
        columns = {C.SOURCE_FILE: pa.array([self.source] * len(bad), pa.string())}
        for col in (*REQUIRED, C.REASON):
            columns[col] = pa.array(bad[col].astype(object).where(bad[col].notna(), None).tolist(),
                                    pa.string())
        columns[C.SOURCE_ROW] = pa.array(bad.index.to_numpy(dtype=np.int64))
        # Event logs only; last, so readers of the original columns are unaffected.
        types = bad[C.EVENT_TYPE] if C.EVENT_TYPE in bad.columns else pd.Series(pd.NA, index=bad.index)
        columns[C.EVENT_TYPE] = pa.array(types.astype(object).where(types.notna(), None).tolist(), pa.string())
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, QUARANTINE_SCHEMA, compression="zstd")
        self.writer.write_table(pa.table(columns, schema=QUARANTINE_SCHEMA))
        self.rows += len(bad)

    def finish(self) -> str | None:
        """Close and move the file into place (fsynced, atomic); its path, or None if empty."""
        if self.writer is None:
            return None
        self.writer.close()
        self.writer = None
        return str(commit(self.tmp, self.path))

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.tmp.unlink(missing_ok=True)
