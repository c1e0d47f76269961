"""Ids: the one rule that turns an input value into id text, and id text into row numbers.

Every reader of ids (rating files, side files, rules sources, database tables, the
dashboard's lookup) goes through :func:`id_text`, so the same value means the same id
everywhere:

* text is kept exactly as given, spaces, NUL and every other character included (how
  a CSV field becomes text, unquoted fields losing surrounding blanks, is the text
  reader's rule, :mod:`recjobs.ingest`);
* integers become their decimal text; floats that are whole numbers are written as
  integers (``7.0`` -> ``7``), other finite floats as the shortest text that reads back
  the same (``7.5``); decimals likewise (``7.50`` -> ``7.5``);
* null, NaN and infinities are no id (None): a reader reports or quarantines them.

Ids have no length limit. Arrays of ids are numpy object arrays of ``str`` (never
fixed-width ``<U`` arrays, which drop trailing NULs and make one long id cost its
length for every element), saved as UTF-8 bytes plus offsets (:func:`save_ids`).

:class:`Vocabulary` is a sorted set of ids whose positions are row (or column) numbers,
with an explicit policy for ids it does not know.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recjobs.errors import ArtifactError

Unknown = Literal["missing", "error"]


def _float_text(values: np.ndarray) -> np.ndarray:
    out = np.full(len(values), None, dtype=object)
    finite = np.isfinite(values)
    integral = finite & (np.floor(values) == values)
    small = integral & (np.abs(values) < 2.0**63)
    out[small] = values[small].astype(np.int64).astype(str).astype(object)
    out[integral & ~small] = [str(int(v)) for v in values[integral & ~small]]
    rest = finite & ~integral
    out[rest] = [repr(float(v)) for v in values[rest]]
    return out


def _decimal_text(text: np.ndarray) -> np.ndarray:
    out = text.copy()
    for i, value in enumerate(text):
        if value is not None and "." in value:
            value = value.rstrip("0").rstrip(".")
            out[i] = "0" if value in ("", "-", "-0") else value
    return out


def id_text(values: pa.Array | pa.ChunkedArray | np.ndarray | pd.Series | Sequence[object]) -> np.ndarray:
    """``values`` as id text (an object array of ``str``, None where a value is no id).

    Accepts Arrow arrays of any type Arrow can cast to text, numpy and pandas columns,
    and plain sequences (e.g. rows from a database cursor, which may mix types).
    Raises :class:`TypeError` for a column of a type that cannot hold ids (lists, structs).
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return _arrow_text(values)
    if isinstance(values, pd.Series):
        if isinstance(values.dtype, pd.StringDtype):
            return np.asarray(values.astype(object).where(values.notna(), None), dtype=object)
        values = values.to_numpy(dtype=object) if values.dtype == object else values.to_numpy()
    array = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if array.dtype.kind in "US" and not isinstance(values, np.ndarray):
        array = np.asarray(values, dtype=object)  # a fixed-width copy would drop trailing NULs
    if array.dtype.kind in "iu":
        return array.astype(str).astype(object)
    if array.dtype.kind == "f":
        return _float_text(array.astype(np.float64))
    if array.dtype.kind == "U":
        return array.astype(object)
    if array.dtype.kind == "b":
        return np.where(array, "true", "false").astype(object)
    return _python_text(array.ravel())


def _python_text(values: np.ndarray) -> np.ndarray:
    out = np.full(len(values), None, dtype=object)
    for i, value in enumerate(values):
        if value is None or value is pd.NA:
            continue
        if isinstance(value, str):
            out[i] = value
        elif isinstance(value, bool | np.bool_):
            out[i] = "true" if value else "false"
        elif isinstance(value, int | np.integer):
            out[i] = str(int(value))
        elif isinstance(value, float | np.floating):
            out[i] = _float_text(np.asarray([value], np.float64))[0]
        elif isinstance(value, bytes):
            out[i] = value.decode("utf-8", errors="replace")
        else:
            out[i] = _arrow_text(pa.array([value]))[0]
    return out


def _arrow_text(arr: pa.Array) -> np.ndarray:
    kind = arr.type
    if pa.types.is_dictionary(kind):
        arr = arr.dictionary_decode()
        kind = arr.type
    if pa.types.is_floating(kind):
        return _float_text(arr.cast(pa.float64()).to_numpy(zero_copy_only=False))
    if pa.types.is_null(kind):
        return np.full(len(arr), None, dtype=object)
    if pa.types.is_decimal(kind):
        return _decimal_text(pc.cast(arr, pa.string()).to_numpy(zero_copy_only=False).astype(object))
    if pa.types.is_boolean(kind):
        return _python_text(arr.to_numpy(zero_copy_only=False).astype(object))
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _python_text(arr.to_numpy(zero_copy_only=False).astype(object))
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        try:
            arr = pc.cast(arr, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise TypeError(f"a column of type {kind} cannot hold ids") from None
    return arr.to_numpy(zero_copy_only=False).astype(object)


class Vocabulary:
    """Sorted, distinct ids; an id's position is its row (users) or column (items) number.

    Built from data with :meth:`encode`; looked up with :meth:`positions`, which says
    what to do with an id it does not know (``unknown``): ``"missing"`` gives -1,
    ``"error"`` raises :class:`KeyError` naming the first few.
    """

    __slots__ = ("ids", "_index")

    def __init__(self, ids: np.ndarray | Iterable[str]) -> None:
        self.ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=object)
        self._index: pd.Index | None = None

    @classmethod
    def encode(cls, values: np.ndarray) -> tuple[Vocabulary, np.ndarray]:
        """The vocabulary of ``values`` (id text) and each value's code (int32), in id order."""
        ids, codes = np.unique(np.asarray(values, dtype=object), return_inverse=True)
        return cls(ids.astype(object)), codes.astype(np.int32)

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        other_ids = other.ids if isinstance(other, Vocabulary) else other
        return same_ids(self.ids, other_ids)  # type: ignore[arg-type]

    __hash__ = None  # type: ignore[assignment]

    def positions(self, values: np.ndarray | Sequence[object] | pd.Series, unknown: Unknown = "missing") -> np.ndarray:
        """Positions of ``values`` (any input a reader gives, through :func:`id_text`); -1 where unknown."""
        if self._index is None:
            self._index = pd.Index(self.ids, dtype=object)
        text = id_text(values)
        found = np.asarray(self._index.get_indexer(text), dtype=np.int64)
        if unknown == "error" and (found < 0).any():
            missing = [str(v) for v in np.asarray(text, dtype=object)[found < 0][:5]]
            raise KeyError(f"{int((found < 0).sum())} unknown id(s), e.g. {missing}")
        return found


def positions(ids: np.ndarray, values: np.ndarray | Sequence[object] | pd.Series) -> np.ndarray:
    """Positions of ``values`` among ``ids`` (-1 where absent): :meth:`Vocabulary.positions` once."""
    return Vocabulary(ids).positions(values)


def same_ids(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two id arrays hold the same ids in the same order (exactly: no trimming, NULs count)."""
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and bool(np.all(np.asarray(a, dtype=object) == np.asarray(b, dtype=object)))


def sort_key(ids: np.ndarray) -> np.ndarray:
    """``ids`` for ``np.lexsort``/``argsort`` ties by id text, without a fixed-width copy."""
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


# -- saving -----------------------------------------------------------------------------
def id_buffers(ids: np.ndarray) -> dict[str, np.ndarray]:
    """``ids`` as UTF-8 bytes and int64 offsets (keys ``data`` and ``offsets``)."""
    arr = pa.array(np.asarray(ids, dtype=object), pa.large_string())
    if arr.null_count:
        raise ValueError("an id array holds a null")
    offsets = np.frombuffer(arr.buffers()[1], np.int64, len(arr) + 1, arr.offset * 8)
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    return {"data": data[int(offsets[0]):int(offsets[-1])].copy(), "offsets": offsets - offsets[0]}


def ids_from_buffers(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """What :func:`id_buffers` took apart, as an object array of ``str``."""
    n = len(offsets) - 1
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(np.ascontiguousarray(offsets, np.int64)),
                                           pa.py_buffer(np.ascontiguousarray(data, np.uint8)))
    return arr.to_numpy(zero_copy_only=False).astype(object)


def save_ids(folder: Path, name: str, ids: np.ndarray) -> None:
    """Write ``ids`` into ``folder`` as ``<name>.data.npy`` and ``<name>.offsets.npy``."""
    parts = id_buffers(ids)
    for part, array in parts.items():
        np.save(folder / f"{name}.{part}.npy", array, allow_pickle=False)


def load_ids(folder: Path, name: str) -> np.ndarray:
    """Read what :func:`save_ids` wrote (or an older ``<name>.npy`` text array)."""
    data, offsets = folder / f"{name}.data.npy", folder / f"{name}.offsets.npy"
    if data.exists() and offsets.exists():
        return ids_from_buffers(np.load(data, allow_pickle=False), np.load(offsets, allow_pickle=False))
    legacy = folder / f"{name}.npy"
    if legacy.exists():
        return np.load(legacy, allow_pickle=False).astype(object)
    raise ArtifactError(f"{folder}: no {name} ids (missing {data.name})")


def visible(text: str) -> str:
    """``text`` with each character that is not printable (a control such as NUL or tab, a
    zero-width or direction mark) written as its escape (``\\x00``, ``\\u202e``): ids and messages
    shown to a person, where two ids differing by such a character must look different and a
    direction mark must not reorder what follows it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


__all__ = ["Vocabulary", "id_buffers", "id_text", "ids_from_buffers", "load_ids", "positions", "same_ids",
           "save_ids", "sort_key", "visible"]
