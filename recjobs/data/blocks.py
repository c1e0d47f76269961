"""A large window in blocks of users: ordering its rows and writing its matrices without
window-sized temporaries.

The split holds the window's coded rows (about 20 bytes a row) and little else: rows are
ordered one block of users at a time (an int32 permutation, not int64 sort keys of the
whole window), permuted one column at a time, and each matrix is deduplicated a block of
users at a time and streamed to its ``.npy`` files. What is written is byte for byte what
:meth:`~recjobs.data.interactions.Interactions.from_events` followed by
:meth:`~recjobs.data.interactions.Interactions.save` writes for the same rows (both use
:func:`~recjobs.data.interactions.pair_block`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np

from recjobs.data.ids import save_ids
from recjobs.data.interactions import (
    Events,
    excluded_matrix,
    ordered_by_user_time_item,
    pair_block,
    row_pointers,
    user_blocks,
)
from recjobs.files import atomic_dir

# Rows handled at a time: a block's temporaries are a few hundred MB at most.
BLOCK_ROWS = 8_000_000
_INT32_MAX = np.iinfo(np.int32).max


def _index_dtype(n_rows: int) -> type:
    return np.int32 if n_rows <= _INT32_MAX else np.int64


def ordered_in_blocks(users: np.ndarray, millis: np.ndarray, items: np.ndarray, n_users: int,
                      block_rows: int | None = None) -> np.ndarray:
    """The permutation of :func:`~recjobs.data.interactions.ordered_by_user_time_item`, computed
    one range of users at a time (int32 while the rows fit)."""
    block_rows = block_rows or BLOCK_ROWS
    order = np.empty(len(users), _index_dtype(len(users)))
    if not len(users):
        return order
    # Ranges of whole users holding about ``block_rows`` rows each; each range's rows go to
    # order[start:end] (users below the first range have no rows).
    ends = np.cumsum(np.bincount(users, minlength=n_users))
    firsts = np.unique(np.searchsorted(ends, np.arange(0, ends[-1], block_rows), side="right"))
    block_of = np.zeros(n_users, np.int16 if len(firsts) < 2**15 else np.int64)
    block_of[firsts[1:]] = 1
    np.cumsum(block_of, out=block_of)
    starts = np.append(0, ends[firsts[1:] - 1])
    stops = np.append(starts[1:], len(users))
    # Each range's rows in input order, scattered into its slot a chunk of rows at a time (one
    # pass over the window, no lists of pieces), so full ties keep their input order as in one sort.
    filled = starts.copy()
    for lo in range(0, len(users), block_rows):
        blocks = block_of[users[lo:lo + block_rows]]
        by_block = np.argsort(blocks, kind="stable")
        counts = np.bincount(blocks, minlength=len(firsts))
        cuts = np.cumsum(counts)
        for b in np.flatnonzero(counts):
            order[filled[b]:filled[b] + counts[b]] = by_block[cuts[b] - counts[b]:cuts[b]] + lo
            filled[b] += counts[b]
    for start, stop in zip(starts, stops, strict=True):
        rows = order[start:stop]
        order[start:stop] = rows[ordered_by_user_time_item(users[rows], millis[rows], items[rows])]
    return order


def order_in_place(events: Events, block_rows: int | None = None) -> None:
    """Reorder ``events``' arrays in place to (user, time, item) order: afterwards they hold what
    ``events.take(ordered_by_user_time_item(...))`` would, without a second copy of the window
    (the peak is its rows, the int32 permutation and one column)."""
    order = ordered_in_blocks(events.users, events.millis, events.items, len(events.user_ids), block_rows)
    for column in (events.users, events.items, events.ratings, events.millis, events.types, events.relevant):
        if column is not None:
            column[:] = column[order]


class _NpyStream:
    """A 1-D ``.npy`` file written block by block: what ``np.save`` writes for the whole array."""

    def __init__(self, path: Path, dtype: type) -> None:
        self.dtype = np.dtype(dtype)
        self.length = 0
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by finish()
        self.header = self._header(0)
        self.file.write(self.header)

    def _header(self, length: int) -> bytes:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buffer, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (length,)})
        return buffer.getvalue()

    def write(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.length += len(block)

    def finish(self) -> None:
        header = self._header(self.length)
        # numpy pads the header for a length of up to 21 digits: it never changes size.
        assert len(header) == len(self.header), "npy header changed size"
        self.file.seek(0)
        self.file.write(header)
        self.file.close()


def _used_codes(codes: np.ndarray, keep: np.ndarray | None, size: int, bounds: np.ndarray) -> np.ndarray:
    """Per code below ``size``: its code among the codes used by the kept rows (-1: unused)."""
    used = np.zeros(size, bool)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        used[codes[lo:hi] if keep is None else codes[lo:hi][keep[lo:hi]]] = True
    return np.where(used, np.cumsum(used, dtype=np.int64) - 1, -1)


def save_matrix(path: Path, events: Events, keep: np.ndarray | None = None,
                excluded: tuple[np.ndarray, np.ndarray] | None = None,
                block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Write the matrix of ``events``' rows marked by ``keep`` (all: None) to the folder ``path``.

    The same files as ``Interactions.from_events(events.take(keep), time_ordered=True,
    excluded=excluded).save(path)``, for ``events`` in (user, time) order, written a block
    of users at a time. Returns the matrix's (user ids, item ids, rows used).
    """
    bounds = user_blocks(events.users, block_rows or BLOCK_ROWS)
    user_map = _used_codes(events.users, keep, len(events.user_ids), bounds)
    item_map = _used_codes(events.items, keep, len(events.item_ids), bounds)
    user_ids, item_ids = events.user_ids[user_map >= 0], events.item_ids[item_map >= 0]
    n_users, n_items = len(user_ids), len(item_ids)
    counts = np.zeros(n_users, np.int64)
    last_seen = np.full(n_items, np.iinfo(np.int64).min, dtype=np.int64)
    n_rows = 0
    with atomic_dir(path) as tmp:
        streams = {"data": _NpyStream(tmp / "data.npy", np.float32),
                   "indices": _NpyStream(tmp / "indices.npy", np.int32),
                   "pair_seconds": _NpyStream(tmp / "pair_seconds.npy", np.int64)}
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            part = slice(lo, hi) if keep is None else np.flatnonzero(keep[lo:hi]) + lo
            rows = user_map[events.users[part]].astype(np.int32)
            cols = item_map[events.items[part]].astype(np.int32)
            n_rows += len(rows)
            pair_rows, values, indices, seconds = pair_block(rows, cols, events.millis[part], events.ratings[part],
                                                             n_items, events.typed)
            counts += np.bincount(pair_rows, minlength=n_users)
            np.maximum.at(last_seen, indices, seconds)
            streams["data"].write(values)
            streams["indices"].write(indices)
            streams["pair_seconds"].write(seconds)
        for stream in streams.values():
            stream.finish()
        indptr = row_pointers(counts)
        # scipy's CSR keeps int32 indices and row pointers while they fit, as a loaded matrix has them.
        if indptr[-1] > _INT32_MAX or max(n_users, n_items) > _INT32_MAX:
            np.save(tmp / "indices.npy", np.load(tmp / "indices.npy").astype(np.int64), allow_pickle=False)
        else:
            indptr = indptr.astype(np.int32)
        arrays = {"indptr": indptr, "shape": np.asarray((n_users, n_items), np.int64), "item_last_seen": last_seen}
        if events.typed:
            arrays["typed"] = np.ones(1, np.int8)
        if excluded is not None:
            rows, cols = user_map[excluded[0]], item_map[excluded[1]]
            inside = (rows >= 0) & (cols >= 0)
            matrix = excluded_matrix((rows[inside], cols[inside]), (n_users, n_items))
            arrays["excluded_indices"], arrays["excluded_indptr"] = matrix.indices, matrix.indptr
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        save_ids(tmp, "user_ids", user_ids)
        save_ids(tmp, "item_ids", item_ids)
    return user_ids, item_ids, n_rows


__all__ = ["BLOCK_ROWS", "order_in_place", "ordered_in_blocks", "save_matrix"]
