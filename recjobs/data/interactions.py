"""Interaction matrices: the data contract every model family fits on (ids coded by :mod:`recjobs.data.ids`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recjobs import columns as C
from recjobs.arrays import distinct
from recjobs.data.ids import load_ids, positions, save_ids
from recjobs.errors import ArtifactError
from recjobs.files import atomic_dir


@dataclass(frozen=True)
class Events:
    """Interaction rows as integer codes: the columnar form the split works on.

    ``users``/``items`` index ``user_ids``/``item_ids``, which are sorted, so code order
    is id order and ties broken by code are broken by id. ``millis`` are Unix milliseconds.
    Id arrays may hold ids that no row uses (a part of a split keeps the whole's ids).
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    millis: np.ndarray
    # As read from the lake: per row, a code into ``type_names`` (-1: no type, a rating); None
    # when no row is typed.
    types: np.ndarray | None = None
    type_names: np.ndarray | None = None
    # After :func:`recjobs.data.feedback.apply_feedback` on typed events: ``ratings`` are the
    # types' weights, and this marks the rows that count as relevant when held out (None: all).
    relevant: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    @property
    def typed(self) -> bool:
        """Whether the rows are weighted typed events (a pair then weighs its strongest event)."""
        return self.relevant is not None

    def take(self, rows: np.ndarray) -> Events:
        """The rows selected by ``rows`` (indices or a mask), with the same id arrays."""
        return Events(self.user_ids, self.item_ids, self.users[rows], self.items[rows], self.ratings[rows],
                      self.millis[rows], None if self.types is None else self.types[rows], self.type_names,
                      None if self.relevant is None else self.relevant[rows])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Events:
        """Code a frame of canonical columns (timestamps as tz-aware datetimes)."""
        user_ids, users = _sorted_codes(frame[C.USER].to_numpy(dtype=object))
        item_ids, items = _sorted_codes(frame[C.ITEM].to_numpy(dtype=object))
        epoch = pd.Timestamp(0, tz="UTC")
        millis = ((frame[C.TIMESTAMP] - epoch) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64)
        types = type_names = None
        if C.EVENT_TYPE in frame.columns and frame[C.EVENT_TYPE].notna().any():
            typed = frame[C.EVENT_TYPE].notna().to_numpy()
            type_names, codes = np.unique(frame[C.EVENT_TYPE][typed].astype(str).to_numpy(dtype=object),
                                          return_inverse=True)
            types = np.full(len(frame), -1, np.int16)
            types[typed] = codes
        return cls(user_ids, item_ids, users, items, frame[C.RATING].to_numpy(dtype=np.float32), millis,
                   types, None if type_names is None else type_names.astype(object))

    @classmethod
    def from_arrow(cls, table: pa.Table) -> Events:
        """Code an Arrow table of canonical columns without making a Python object per row
        (see :meth:`from_batches`)."""
        return cls.from_batches(table.to_batches(), table.num_rows)

    @classmethod
    def from_batches(cls, batches: Iterable[pa.RecordBatch], max_rows: int = 0) -> Events:
        """Code record batches of canonical columns, in order, one batch at a time.

        Ids are coded with Arrow's dictionary encoding (one Python string per distinct id,
        none per row); id columns may already be dictionary-encoded (as Parquet stores them),
        each batch with its own dictionary. Each column is filled in place in an array of
        ``max_rows`` (at least the batches' rows: untouched pages of an over-sized array cost
        no memory; grown if short), so the window is never held twice, nor as Arrow.
        Event types are numbered in order of first appearance.
        """
        size = max(max_rows, 1)
        users, items = np.empty(size, np.int32), np.empty(size, np.int32)
        ratings, millis = np.empty(size, np.float32), np.empty(size, np.int64)
        types: np.ndarray | None = None
        type_codes: dict[str, int] = {}
        coders = {C.USER: _IdCoder(), C.ITEM: _IdCoder()}
        at = 0
        for batch in batches:
            n = batch.num_rows
            if at + n > len(users):  # more rows than promised: grow (copies; not the lake's path)
                size = max(2 * len(users), at + n)
                users, items, ratings, millis = (np.resize(a, size) for a in (users, items, ratings, millis))
                types = None if types is None else np.resize(types, size)
            coders[C.USER].add(batch.column(C.USER), users, at)
            coders[C.ITEM].add(batch.column(C.ITEM), items, at)
            millis[at:at + n] = batch.column(C.TIMESTAMP).cast(pa.int64()).to_numpy(zero_copy_only=False)
            ratings[at:at + n] = batch.column(C.RATING).to_numpy(zero_copy_only=False)
            kinds = batch.column(C.EVENT_TYPE) if C.EVENT_TYPE in batch.schema.names else None
            if kinds is not None and kinds.null_count < n:
                if types is None:  # the first typed rows: those before them are ratings (-1)
                    types = np.empty(len(users), np.int16)
                    types[:at] = -1
                encoded = pc.dictionary_encode(kinds.cast(pa.string()))
                local = np.array([type_codes.setdefault(name, len(type_codes))
                                  for name in encoded.dictionary.to_pylist()], np.int16)
                types[at:at + n] = np.where(encoded.indices.is_valid().to_numpy(zero_copy_only=False),
                                            local[pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False)], -1)
            elif types is not None:
                types[at:at + n] = -1
            at += n
            del batch, kinds
            for col, coder in coders.items():
                coder.maybe_merge(users if col == C.USER else items, at)
        user_ids = coders[C.USER].finish(users[:at])
        item_ids = coders[C.ITEM].finish(items[:at])
        type_names = np.array(list(type_codes), dtype=object) if type_codes else None
        return cls(user_ids, item_ids, users[:at], items[:at], ratings[:at], millis[:at],
                   None if types is None else types[:at], type_names)


def _same_buffers(a: pa.Array, b: pa.Array) -> bool:
    """Whether two arrays are views of the same memory (one dictionary shared by batches)."""
    return len(a) == len(b) and [x and x.address for x in a.buffers()] == [x and x.address for x in b.buffers()]


# Rows recoded at a time: a temporary of this many codes, not of the window's.
_CODE_CHUNK = 8_000_000


class _IdCoder:
    """Codes ids met batch by batch: first a code into the pending batches' dictionaries, turned
    into a code in order of first appearance a group of batches at a time (:meth:`maybe_merge`),
    and at the end into the code of the id in sorted order (:meth:`finish`)."""

    # Pending dictionary entries, or rows, that trigger a merge: bounds the memory it takes.
    MERGE_ENTRIES, MERGE_ROWS = 4_000_000, 16_000_000

    def __init__(self) -> None:
        self.distinct = pa.array([], pa.string())  # every id so far, in order of first appearance
        self.pending: list[pa.Array] = []
        self.pending_entries = 0
        self.start = 0  # first row of the pending batches
        # The last dictionary kept, with its offset: held, so its buffer's address is not reused.
        self.last: tuple[pa.Array, int] | None = None

    def add(self, column: pa.Array, out: np.ndarray, at: int) -> None:
        """Write ``column``'s codes into the pending dictionaries at ``out[at:]``."""
        encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
        # Batches of one Parquet row group share its dictionary: it is kept once.
        dictionary = encoded.dictionary
        if self.last is None or not _same_buffers(self.last[0], dictionary):
            self.last = (dictionary, self.pending_entries)
            self.pending.append(encoded.dictionary.cast(pa.string()))
            self.pending_entries += len(encoded.dictionary)
        out[at:at + len(column)] = encoded.indices.to_numpy(zero_copy_only=False)
        out[at:at + len(column)] += self.last[1]

    def maybe_merge(self, out: np.ndarray, stop: int, force: bool = False) -> None:
        """Recode the pending rows ``out[start:stop]`` in order of first appearance, when enough are pending."""
        if not self.pending or not (force or self.pending_entries >= self.MERGE_ENTRIES
                                    or stop - self.start >= self.MERGE_ROWS):
            return
        known = len(self.distinct)
        encoded = pc.dictionary_encode(pa.concat_arrays([self.distinct, *self.pending]))
        self.distinct = encoded.dictionary
        mapping = encoded.indices.to_numpy(zero_copy_only=False)[known:]
        for lo in range(self.start, stop, _CODE_CHUNK):
            hi = min(lo + _CODE_CHUNK, stop)
            out[lo:hi] = mapping[out[lo:hi]]
        self.pending, self.pending_entries, self.start, self.last = [], 0, stop, None

    def finish(self, codes: np.ndarray) -> np.ndarray:
        """Recode ``codes`` (every row) in place as positions in the sorted ids in use; return those ids.

        Sorted by Python's string order, so code order is id order; ids of a dictionary that no
        row uses (a file's ids after the cutoff) are left out.
        """
        self.maybe_merge(codes, len(codes), force=True)
        distinct = self.distinct.to_numpy(zero_copy_only=False).astype(object)
        self.distinct = pa.array([], pa.string())
        used = np.zeros(len(distinct), bool)
        for lo in range(0, len(codes), _CODE_CHUNK):
            used[codes[lo:lo + _CODE_CHUNK]] = True
        order = np.argsort(distinct, kind="stable")
        final = np.empty(len(distinct), np.int32)
        final[order] = np.cumsum(used[order], dtype=np.int64) - 1
        for lo in range(0, len(codes), _CODE_CHUNK):
            codes[lo:lo + _CODE_CHUNK] = final[codes[lo:lo + _CODE_CHUNK]]
        return distinct[order][used[order]]


def _sorted_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # np.unique sorts with Python's string order, as ``sorted`` did.
    ids, codes = np.unique(values, return_inverse=True)
    return ids.astype(object), codes.astype(np.int32)


def _recode(ids: np.ndarray, codes: np.ndarray, target: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Codes over ``ids`` as positions in ``target`` (-1 where absent); default: the ids in use, compacted."""
    if target is None:
        used = np.bincount(codes, minlength=len(ids)) > 0
        if used.all():
            return ids, codes.astype(np.int32, copy=False)
        position = np.cumsum(used, dtype=np.int64) - 1
        return ids[used], position[codes].astype(np.int32)
    position = positions(target, ids)
    return target, position[codes].astype(np.int32)


def _time_ordered_per_row(rows: np.ndarray, ts: np.ndarray) -> bool:
    """Whether rows come grouped in ascending order with time ascending inside each row."""
    if len(rows) < 2:
        return True
    step = np.diff(rows)
    return bool((step >= 0).all() and (np.diff(ts)[step == 0] >= 0).all())


def ordered_by_user_time_item(users: np.ndarray, millis: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The permutation sorting rows by (user, time, item), stable for full ties.

    Equivalent to ``np.lexsort((items, millis, users))`` but, where the user and the
    time fit one int64 key (users < 2**22, a window under 69 years), one stable sort of
    that key plus a small fix-up of the rare rows that tie on it, about 3x faster.
    """
    if len(users) == 0:
        return np.zeros(0, dtype=np.int64)
    span = int(millis.max()) - int(millis.min())
    if int(users.max()) >= 1 << 22 or span >= 1 << 41:
        return np.lexsort((items, millis, users))
    key = (users.astype(np.int64) << 41) | (millis - millis.min())
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(tied):
        # Positions inside runs of equal keys; sorting them by (key, item) keeps every run
        # in its place (runs are contiguous and ordered by key) and orders it by item.
        involved = np.union1d(tied, tied + 1)
        sub = order[involved]
        order[involved] = sub[np.lexsort((items[sub], key[sub]))]
    return order


# Rows deduplicated at a time when building a matrix from rows grouped by user.
_PAIR_BLOCK = 16_000_000


def _latest_per_pair(rows: np.ndarray, cols: np.ndarray, n_items: int,
                     values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices of each distinct (row, col) pair's last row, in (row, col) order, and with
    ``values`` given, each pair's largest value (typed events: the strongest event counts).

    Rows come in time order (within each user at least), so a stable sort by (user,
    item) leaves each repeated pair's latest row last in its run.
    """
    if not len(rows):
        return np.zeros(0, np.int64), None if values is None else np.zeros(0, np.float32)
    pair = rows.astype(np.int64) * max(n_items, 1) + cols
    by_pair = np.argsort(pair, kind="stable")
    pair = pair[by_pair]
    ends = np.append(pair[1:] != pair[:-1], True)
    if values is None:
        return by_pair[np.flatnonzero(ends)], None
    starts = np.flatnonzero(np.insert(ends[:-1], 0, True))
    return by_pair[np.flatnonzero(ends)], np.maximum.reduceat(values[by_pair], starts)


def _code_map(ids: np.ndarray, codes: np.ndarray, target: np.ndarray | None) -> np.ndarray:
    """Per code over ``ids``: its code after :func:`_recode` with the same arguments (-1: dropped)."""
    if target is None:
        used = np.bincount(codes, minlength=len(ids)) > 0
        return np.where(used, np.cumsum(used, dtype=np.int64) - 1, -1)
    return positions(target, ids)


def user_blocks(rows: np.ndarray, block_rows: int) -> np.ndarray:
    """Bounds of consecutive blocks of about ``block_rows`` rows that never split a user's rows
    (``rows`` grouped by user, ascending); ``[0, 0]`` for no rows."""
    if not len(rows):
        return np.zeros(2, np.int64)
    cuts = np.searchsorted(rows, rows[np.arange(block_rows, len(rows), block_rows)], side="left")
    return np.unique(np.concatenate([[0], cuts, [len(rows)]]))


def pair_block(rows: np.ndarray, cols: np.ndarray, millis: np.ndarray, ratings: np.ndarray, n_items: int,
               strongest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stored pairs of a block of whole users' rows (time ordered within each user):
    (row, value, column as int32, latest time in Unix seconds) per distinct (row, column) pair,
    in (row, column) order. A pair's value is its latest rating, or with ``strongest`` its largest."""
    last, pair_max = _latest_per_pair(rows, cols, n_items, ratings if strongest else None)
    values = ratings[last] if pair_max is None else pair_max
    return (rows[last], values.astype(np.float32), cols[last].astype(np.int32),
            np.floor_divide(millis[last], 1000).astype(np.int64, copy=False))


def row_pointers(counts: np.ndarray) -> np.ndarray:
    """CSR row pointers (int64) of rows with ``counts`` stored pairs each."""
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr


def excluded_matrix(pairs: tuple[np.ndarray, np.ndarray], shape: tuple[int, int]) -> sp.csr_matrix:
    """The binary users x items matrix of the negative (row, column) ``pairs`` (repeats merged)."""
    out = sp.csr_matrix((np.ones(len(pairs[0]), np.float32), pairs), shape=shape)
    out.sum_duplicates()
    out.data[:] = 1.0
    return out


@dataclass(frozen=True)
class Interactions:
    """A users x items matrix with the ids of its rows and columns.

    ``matrix`` holds, per (user, item) pair, the latest rating. ``item_last_seen`` is
    the latest event time per item in Unix seconds; ``pair_seconds`` (aligned with
    ``matrix.data``) the latest event time of each stored pair, so recency-aware models
    can order each user's history. Ids are strings, sorted, so the same data always
    gives the same indices.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    matrix: sp.csr_matrix
    item_last_seen: np.ndarray
    pair_seconds: np.ndarray | None = None
    # Typed events (settings.feedback): ``matrix`` holds each pair's weight, which models take as
    # its confidence (:meth:`confidences`), and ``excluded`` (users x items, binary) the pairs of
    # negative events, never recommended (:meth:`exclusions`). Rating data: False and None.
    typed: bool = False
    excluded: sp.csr_matrix | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        user_ids: np.ndarray | None = None,
        item_ids: np.ndarray | None = None,
    ) -> Interactions:
        """Build from canonical columns; rows whose ids are not in given id lists are dropped."""
        return cls.from_events(Events.from_frame(frame), user_ids, item_ids)

    @classmethod
    def from_events(
        cls,
        events: Events,
        user_ids: np.ndarray | None = None,
        item_ids: np.ndarray | None = None,
        time_ordered: bool = False,
        excluded: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Interactions:
        """The matrix of ``events`` over their own ids (only those that occur), or over given id lists.

        Rows whose ids are not in given id lists are dropped. ``time_ordered``: the caller
        promises rows in (user, time) order (as the split has them), so no check is made.
        Typed events (``events.typed``) give each pair its largest weight instead of its latest
        rating. ``excluded``: (user codes, item codes) over ``events``' id arrays of pairs never
        to recommend; those outside the matrix's ids are dropped.
        """
        exclusion = None
        if excluded is not None:
            user_map = _code_map(events.user_ids, events.users, user_ids)
            item_map = _code_map(events.item_ids, events.items, item_ids)
            ex_rows, ex_cols = user_map[excluded[0]], item_map[excluded[1]]
            inside = (ex_rows >= 0) & (ex_cols >= 0)
            exclusion = (ex_rows[inside], ex_cols[inside])
        users, rows = _recode(events.user_ids, events.users, user_ids)
        items, cols = _recode(events.item_ids, events.items, item_ids)
        millis, ratings = events.millis, events.ratings
        keep = (rows >= 0) & (cols >= 0)
        if not keep.all():
            rows, cols, millis, ratings = rows[keep], cols[keep], millis[keep], ratings[keep]
        del keep
        # The split passes rows already in (user, time) order; checking costs two arrays of
        # the rows' size, which at 200M rows is gigabytes of the stage's peak.
        grouped = time_ordered or _time_ordered_per_row(rows, millis)
        strongest = events.typed
        if not grouped:
            by_time = np.argsort(millis, kind="stable")
            rows, cols, millis, ratings = rows[by_time], cols[by_time], millis[by_time], ratings[by_time]
            bounds = np.array([0, len(rows)])
        else:
            # Rows grouped by user: pairs never cross users, so blocks of whole users can be
            # deduplicated one at a time, with sort buffers of a block's size, not the window's.
            bounds = user_blocks(rows, _PAIR_BLOCK)
        blocks = [pair_block(rows[lo:hi], cols[lo:hi], millis[lo:hi], ratings[lo:hi], len(items), strongest)
                  for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        pair_rows, values, indices, pair_seconds = (np.concatenate([b[k] for b in blocks]) for k in range(4))
        del blocks
        # Sorted, distinct (row, col) pairs are CSR order already: no COO round trip.
        matrix = sp.csr_matrix((values, indices, row_pointers(np.bincount(pair_rows, minlength=len(users)))),
                               shape=(len(users), len(items)))
        matrix.has_sorted_indices = True
        last_seen = np.full(len(items), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last_seen, matrix.indices, pair_seconds)
        return cls(users, items, matrix, last_seen, pair_seconds, strongest,
                   None if exclusion is None else excluded_matrix(exclusion, matrix.shape))

    def binary(self, rows: np.ndarray | None = None) -> sp.csr_matrix:
        """The seen pairs as ones: of every user, or of ``rows`` only (no copy of the whole matrix)."""
        out = self.matrix.copy() if rows is None else self.matrix[rows]
        out.data[:] = 1.0
        return out

    def confidences(self) -> sp.csr_matrix:
        """What a model weighs each pair by: typed events' weights, else 1 (ratings say nothing of confidence)."""
        return self.matrix.astype(np.float32, copy=True) if self.typed else self.binary()

    def exclusions(self) -> sp.csr_matrix:
        """The pairs no list may contain: the seen pairs, and the negative events' (``excluded``)."""
        if self.excluded is None or not self.excluded.nnz:
            return self.matrix
        both = (self.matrix != 0).astype(np.float32) + self.excluded
        both.data[:] = 1.0
        out = both.tocsr()
        out.sort_indices()
        return out

    def save(self, path: Path) -> Path:
        """Write to the directory ``path`` as plain ``.npy`` arrays, atomically.

        A later stage loads it with :meth:`load` in about a second at ML-20M size,
        instead of re-reading Parquet and re-coding string ids.
        """
        arrays = {
            "data": self.matrix.data, "indices": self.matrix.indices, "indptr": self.matrix.indptr,
            "shape": np.asarray(self.matrix.shape, np.int64), "item_last_seen": self.item_last_seen,
        }
        if self.pair_seconds is not None:
            arrays["pair_seconds"] = self.pair_seconds
        if self.typed:
            arrays["typed"] = np.ones(1, np.int8)
        if self.excluded is not None:
            arrays["excluded_indices"] = self.excluded.indices
            arrays["excluded_indptr"] = self.excluded.indptr
        _save_arrays(path, arrays, {"user_ids": self.user_ids, "item_ids": self.item_ids})
        return path

    @classmethod
    def load(cls, path: Path) -> Interactions:
        """Read what :meth:`save` wrote."""
        a = _load_arrays(path, ("data", "indices", "indptr", "shape", "item_last_seen"))
        matrix = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=tuple(a["shape"]))
        matrix.has_sorted_indices = True  # saved sorted, see from_frame
        seconds = np.load(path / "pair_seconds.npy") if (path / "pair_seconds.npy").exists() else None
        excluded = None
        if (path / "excluded_indices.npy").exists():
            indices = np.load(path / "excluded_indices.npy")
            excluded = sp.csr_matrix((np.ones(len(indices), np.float32), indices,
                                      np.load(path / "excluded_indptr.npy")), shape=matrix.shape)
        return cls(load_ids(path, "user_ids"), load_ids(path, "item_ids"), matrix, a["item_last_seen"], seconds,
                   (path / "typed.npy").exists(), excluded)

    def recency_ages(self) -> np.ndarray:
        """Per stored pair (aligned with ``matrix.data``): how many of the user's interactions are newer.

        0 for the user's latest; ties in time are broken by item index, so ages depend
        only on the data.
        """
        if self.pair_seconds is None:
            raise ArtifactError("recency weighting needs per-pair times; this matrix was saved without them "
                             "(rerun `recjobs split` for the date)")
        rows = np.repeat(np.arange(self.n_users, dtype=np.int32), np.diff(self.matrix.indptr))
        order = ordered_by_user_time_item(rows, self.pair_seconds, self.matrix.indices)
        ends = self.matrix.indptr[1:][rows[order]]
        del rows
        age = np.empty(self.nnz, np.int64)
        age[order] = ends - 1 - np.arange(self.nnz)
        return age

    def recency_weights(self, half_life: float | None) -> np.ndarray:
        """Per stored pair: ``0.5 ** (age / half_life)`` (see :meth:`recency_ages`); ``None``: all ones.

        "Recent" is relative to each user's own activity, not to the calendar: a user
        back after a year still has a most-recent taste.
        """
        if half_life is None:
            return np.ones(self.nnz, np.float32)
        return np.power(0.5, self.recency_ages() / half_life).astype(np.float32)

    def weighted(self, weights: np.ndarray) -> sp.csr_matrix:
        """The binary matrix with ``weights`` (aligned with ``matrix.data``) as values."""
        # Copies of the index arrays: a caller pruning zeros must not rewrite this matrix's.
        return sp.csr_matrix((weights.astype(np.float32), self.matrix.indices.copy(), self.matrix.indptr.copy()),
                             shape=self.matrix.shape)


@dataclass(frozen=True)
class Holdout:
    """Held-out (user, item) pairs coded against a training :class:`Interactions`.

    ``user_rows`` index the training users (held-out users unknown to training are
    dropped: no model can rank for them). ``item_cols`` index the training items;
    an item never seen in training gets a code ``>= n_items``, one per distinct id,
    so each counts as its own relevant item that no model can recommend.
    Pairs are distinct. ``ratings`` (aligned with the pairs, each pair's latest rating)
    are what rating prediction is measured on; None for holdouts saved without them.
    """

    user_rows: np.ndarray
    item_cols: np.ndarray
    ratings: np.ndarray | None = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, train: Interactions) -> Holdout:
        """Code a frame of canonical columns against ``train``'s ids."""
        return cls.from_events(Events.from_frame(frame), train)

    @classmethod
    def from_events(cls, events: Events, train: Interactions) -> Holdout:
        """Code held-out ``events`` against ``train``'s ids (see :meth:`coded`)."""
        return cls.coded(events, train.user_ids, train.item_ids)

    @classmethod
    def coded(cls, events: Events, user_ids: np.ndarray, item_ids: np.ndarray) -> Holdout:
        """Code held-out ``events`` against a training matrix's user and item ids.

        Typed events: only the rows marked ``relevant`` (settings.feedback.relevant) are truth,
        and there are no ratings to predict (their weights are not ratings).
        """
        if events.relevant is not None:
            return replace(cls.coded(replace(events.take(events.relevant), relevant=None), user_ids, item_ids),
                           ratings=None)
        rows = positions(user_ids, events.user_ids)[events.users]
        cols = positions(item_ids, events.item_ids)[events.items]
        unseen = cols < 0
        if unseen.any():
            # Codes are in id order, so unseen items are numbered in id order too.
            new = distinct(events.items[unseen])
            cols[unseen] = len(item_ids) + np.searchsorted(new, events.items[unseen])
        keep = rows >= 0
        width = int(cols.max()) + 1 if len(cols) else 1
        keys = rows[keep].astype(np.int64) * width + cols[keep]
        # np.unique keeps each key's first occurrence; reversed, that is the latest row
        # (the split passes rows in time order), whose rating is the pair's.
        pairs, last = np.unique(keys[::-1], return_index=True)
        ratings = events.ratings[keep][::-1][last].astype(np.float32)
        return cls((pairs // width).astype(np.int32), (pairs % width).astype(np.int32), ratings)

    def save(self, path: Path) -> Path:
        """Write to the directory ``path``, atomically."""
        arrays = {"user_rows": self.user_rows, "item_cols": self.item_cols}
        if self.ratings is not None:
            arrays["ratings"] = self.ratings
        _save_arrays(path, arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> Holdout:
        """Read what :meth:`save` wrote."""
        a = _load_arrays(path, ("user_rows", "item_cols"))
        ratings = np.load(path / "ratings.npy") if (path / "ratings.npy").exists() else None
        return cls(a["user_rows"], a["item_cols"], ratings)


def _save_arrays(path: Path, arrays: dict[str, np.ndarray], ids: dict[str, np.ndarray] | None = None) -> None:
    with atomic_dir(path) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        for name, values in (ids or {}).items():
            save_ids(tmp, name, values)


def _load_arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    missing = [n for n in names if not (path / f"{n}.npy").exists()]
    if missing:
        raise ArtifactError(f"{path}: not a saved matrix folder (missing {', '.join(missing)})")
    return {n: np.load(path / f"{n}.npy", allow_pickle=False) for n in names}
