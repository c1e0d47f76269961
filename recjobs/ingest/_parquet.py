"""Parquet deliveries: ids through the one id rule, numbers and timestamps typed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recjobs import columns as C
from recjobs.data.ids import id_text
from recjobs.errors import IngestError
from recjobs.ingest._layout import Layout
from recjobs.settings import Settings


def _ids(arr: pa.Array, path: Path, name: str) -> pd.Series:
    """A Parquet id column as text, by the one id rule (:func:`recjobs.data.ids.id_text`)."""
    try:
        return pd.Series(id_text(arr), dtype="string")
    except TypeError:
        raise IngestError(f"{path}: column {name!r} has type {arr.type}, which cannot be an id") from None


def read_parquet_frame(path: Path, as_text: Callable[[str, pa.DataType], bool]) -> pd.DataFrame:
    """A small Parquet file (a side file, a rules list) whole, its rows numbered from 1.

    Columns for which ``as_text(name, type)`` holds become text by the one id rule (239.0
    is "239"); the others keep their pandas type. Raises :class:`IngestError` naming the
    file for an unreadable file, a repeated column, or a column that cannot be text.
    """
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"{path}: not a readable Parquet file ({exc})") from None
    names = table.column_names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise IngestError(f"{path}: column(s) {twice} appear more than once")
    index = pd.RangeIndex(1, table.num_rows + 1)  # 1-based row numbers, as for text files' lines
    columns: dict[str, pd.Series] = {}
    for name in names:
        column = table.column(name)
        if not as_text(name, column.type):
            columns[name] = column.to_pandas().set_axis(index)
            continue
        try:
            columns[name] = pd.Series(id_text(column), index=index, dtype=object)
        except TypeError:
            raise IngestError(f"{path}: column {name!r} has type {column.type}, which cannot be an id or text") from None
    return pd.DataFrame(columns, index=index)


def _value_column(arr: pa.Array) -> pd.Series:
    """Ratings and timestamps: numbers as float64, timestamps/dates as ms UTC, else text."""
    kind = arr.type
    if pa.types.is_dictionary(kind):
        arr = arr.dictionary_decode()
        kind = arr.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return pd.Series(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False))
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        # A time-zone-less column is read as UTC; safe=False truncates finer units to ms.
        ms = pc.cast(arr, pa.timestamp("ms", tz="UTC"), safe=False)
        return ms.to_pandas()
    return pd.Series(pc.cast(arr, pa.string()).to_numpy(zero_copy_only=False), dtype="string")


def parquet_batches(
    path: Path, layout: Layout, settings: Settings
) -> Iterator[tuple[pd.DataFrame, pd.Series, float]]:
    """Yield (rows, no malformed rows, share read) per batch, indexed by 1-based row number."""
    names = sorted({s for s in layout.source.values() if s is not None})
    done = 0
    try:
        pfile = pq.ParquetFile(path)
        total = max(pfile.metadata.num_rows, 1)
        for batch in pfile.iter_batches(batch_size=settings.ingest.batch_rows, columns=names):
            index = pd.RangeIndex(done + 1, done + 1 + batch.num_rows)
            done += batch.num_rows
            frame = pd.DataFrame(index=index)
            for col, name in layout.source.items():
                if name is None:
                    values = pd.Series(settings.ingest.default_rating, index=index, dtype="float64")
                elif col in (C.USER, C.ITEM):
                    values = _ids(batch.column(name), path, name)
                else:
                    values = _value_column(batch.column(name))
                frame[col] = values.set_axis(index)
            yield frame, pd.Series(dtype="string"), done / total
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"{path}: not a readable Parquet file after row {done} ({exc})") from None
