"""Sequence-aware retrieval: a query tower over each user's latest items in time order.

Trained for next-item retrieval: for every position ``t`` of a user's time-ordered
history, the query is the (at most ``max_length``) items before ``t`` and the candidate
is the item at ``t``. The loss is the same in-batch softmax as the two-tower family's
(:mod:`recjobs.models.tfrs`): log-q sampling correction, accidental hits removed, a
temperature over L2-normalised towers, early stopping on held-out data carved from
training (each of ``validation_users`` users' latest item), and the wall-clock budget.

The query tower encodes the window with a GRU, one self-attention block, or learned
position-weighted pooling (``encoder``); the candidate tower is the item embedding table
the query reads too. After training, each user's vector is the query tower run over their
latest ``max_length`` training items, so the model is an ordinary
:class:`VectorRecommender` and the batch publish path scores every user with a dot product. Side
features are not used (the history is the user's description).

Memory stays bounded at ML-20M size: the time-ordered history is one int32 array over
all interactions, a training example is one position in it, and the windows of a chunk
of batches are gathered with numpy just before they are fed to TensorFlow.
"""

from __future__ import annotations

import logging

import numpy as np

from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions, ordered_by_user_time_item
from recjobs.models.tfrs import KeepBest, retrieval_steps, seeded_tensorflow
from recjobs.models.vectors import VectorRecommender, Vectors
from recjobs.progress import EpochProgress
from recjobs.settings import SequenceParams

log = logging.getLogger(__name__)

# Batches per call of the compiled multi-step function, as in the two-tower family.
_STEPS_PER_CALL = 32
_VALIDATION_K = 20


# Stored pairs ordered at a time when building :class:`Histories`.
_ORDER_BLOCK = 8_000_000


class Histories:
    """Every user's items in time order, as one array with CSR-style row bounds.

    ``items[indptr[u]:indptr[u + 1]]`` are user ``u``'s items, oldest first (ties in
    time broken by item index, so the order depends only on the data).
    """

    def __init__(self, data: Interactions) -> None:
        if data.pair_seconds is None:
            raise ValueError("sequence: ordering histories needs per-pair times; this matrix was saved "
                             "without them (rerun `recjobs split` for the date)")
        m = data.matrix
        indptr = m.indptr.astype(np.int64)
        self.items = np.empty(m.nnz, np.int32)
        self.indptr = indptr
        # Typed events: each position's weight (its pair's strongest event), else None.
        self.weights = np.empty(m.nnz, np.float64) if data.typed else None
        # Ordered one range of users at a time (rows are grouped by user already): the same
        # order as one sort of the whole matrix, without its int64 keys and permutation (at 10x
        # size, about 5 GB of temporaries).
        bounds = np.searchsorted(indptr, np.arange(0, m.nnz, _ORDER_BLOCK), side="right") - 1
        firsts = np.unique(np.append(bounds, data.n_users))
        for u0, u1 in zip(firsts[:-1], firsts[1:], strict=True):
            a, b = int(indptr[u0]), int(indptr[u1])
            if a == b:
                continue
            rows = np.repeat(np.arange(u0, u1, dtype=np.int64), np.diff(indptr[u0:u1 + 1]))
            order = ordered_by_user_time_item(rows, data.pair_seconds[a:b], m.indices[a:b].astype(np.int64)) + a
            self.items[a:b] = m.indices[order]
            if self.weights is not None:
                self.weights[a:b] = m.data[order]

    def windows(self, ends: np.ndarray, length: int, starts: np.ndarray | None = None) -> np.ndarray:
        """The ``length`` items before each position in ``ends``, as item index + 1, 0-padded on the left.

        ``ends`` are exclusive positions in :attr:`items`, each inside or at the end of its
        user's history; ``starts`` are those users' first positions (default: found from
        ``ends``, which then must not be a user's first position). The window never
        crosses into the previous user's history.
        """
        ends = np.asarray(ends, np.int64)
        if starts is None:
            starts = self.indptr[np.searchsorted(self.indptr, ends - 1, side="right") - 1]
        idx = ends[:, None] - length + np.arange(length, dtype=np.int64)
        valid = idx >= starts[:, None]
        return np.where(valid, self.items[np.maximum(idx, 0)] + 1, 0).astype(np.int32)


def _custom_layers(tf):  # noqa: ANN001, ANN202 - tf module; returns two keras layer classes
    """The two layers Keras lacks, defined once TensorFlow is loaded (it is imported lazily)."""

    class PositionEmbedding(tf.keras.layers.Layer):
        """Adds a learned vector per window position (attention is otherwise order-blind)."""

        def build(self, input_shape) -> None:  # noqa: ANN001
            self.table = self.add_weight(name="table", shape=tuple(input_shape[1:]), initializer="zeros")

        def call(self, x):  # noqa: ANN001, ANN201
            return x + self.table[None]

    class PositionPooling(tf.keras.layers.Layer):
        """Softmax over learned per-position weights (padding excluded), then a weighted sum."""

        def build(self, input_shape) -> None:  # noqa: ANN001
            # Starts as a plain mean; training learns how much recent positions count.
            self.logits = self.add_weight(name="logits", shape=(input_shape[0][1],), initializer="zeros")

        def call(self, inputs):  # noqa: ANN001, ANN201
            x, seq = inputs
            mask = tf.not_equal(seq, 0)
            logits = tf.where(mask, tf.broadcast_to(self.logits[None, :], tf.shape(mask)), -1e9)
            weights = tf.nn.softmax(logits, axis=-1)
            return tf.reduce_sum(x * weights[:, :, None], axis=1)

    return PositionEmbedding, PositionPooling


def _build_towers(tf, p: SequenceParams, n_items: int):  # noqa: ANN001, ANN202 - tf module, keras models
    """The query tower (window of item index + 1 -> vector) and the candidate tower (item -> vector)."""
    position_embedding, position_pooling = _custom_layers(tf)
    d, length = p.embedding_dim, p.max_length
    # Row 0 is padding; item i is row i + 1. Both towers read this one table, which
    # gives rarely-queried items the training signal of their candidate side too.
    table = tf.keras.layers.Embedding(n_items + 1, d, name="item_embedding")

    seq = tf.keras.Input(shape=(length,), dtype=tf.int32, name="history")
    x = table(seq)
    mask = tf.not_equal(seq, 0)
    if p.encoder == "gru":
        h = tf.keras.layers.GRU(d, name="gru")(x, mask=mask)
    elif p.encoder == "attention":
        x = position_embedding(name="position_embedding")(x)
        # The latest item attends over the whole window: only its output is the query,
        # so one query row is computed instead of a causal L x L block.
        last = x[:, -1:, :]
        heads = 2 if d % 2 == 0 else 1
        att = tf.keras.layers.MultiHeadAttention(heads, d // heads, name="attention")(
            last, x, attention_mask=mask[:, None, :])
        h = tf.keras.layers.LayerNormalization(name="attention_norm")(last + att)
        ff = tf.keras.layers.Dense(d, activation="relu", name="ffn_in")(h)
        h = tf.keras.layers.LayerNormalization(name="ffn_norm")(h + tf.keras.layers.Dense(d, name="ffn_out")(ff))
        h = h[:, 0, :]
    else:  # pool
        h = position_pooling(name="position_pooling")([x, seq])
    h = tf.keras.layers.Dense(d, name="query_projection")(h)
    query_out = tf.math.l2_normalize(h, axis=-1)
    query = tf.keras.Model(seq, query_out, name="query_tower")

    ids = tf.keras.Input(shape=(), dtype=tf.int32, name="item")
    cand_out = tf.math.l2_normalize(table(ids + 1), axis=-1)
    candidate = tf.keras.Model(ids, cand_out, name="candidate_tower")
    return query, candidate


class SequenceModel(VectorRecommender):
    family = "sequence"
    params_type = SequenceParams

    def _fit(self, data: Interactions, features: SideFeatures | None) -> Vectors:
        hist = Histories(data)  # first: a matrix without pair times fails before TensorFlow loads
        p: SequenceParams = self.params
        tf = seeded_tensorflow(p.threads, self.seed)
        import tensorflow_recommenders as tfrs
        rng = np.random.default_rng(self.seed)

        counts = np.diff(hist.indptr)
        # Validation: the latest item of some users with at least 3 items (so the query
        # has 2); it is left out of training and ranked among the items they have not seen.
        eligible = np.flatnonzero(counts >= 3)
        val_users = np.sort(rng.choice(eligible, min(p.validation_users, len(eligible)), replace=False))
        val_pos = hist.indptr[val_users + 1] - 1
        is_train = np.ones(len(hist.items), bool)
        is_train[hist.indptr[:-1][counts > 0]] = False  # a user's first item has nothing before it
        is_train[val_pos] = False
        train_pos = np.flatnonzero(is_train)
        train_pos = train_pos.astype(np.int32 if len(hist.items) < 2**31 else np.int64)
        del is_train
        if len(train_pos) < 2:
            raise ValueError(f"sequence: only {len(train_pos)} next-item examples (users need at least 2 "
                             "interactions); use another family for this data")

        item_freq = np.bincount(hist.items[train_pos], minlength=data.n_items).astype(np.float32)
        sampling_t = tf.constant(item_freq / item_freq.sum())

        query_tower, item_tower = _build_towers(tf, p, data.n_items)
        task = tfrs.tasks.Retrieval(temperature=p.temperature, remove_accidental_hits=p.remove_accidental_hits)
        optimizer = (tf.keras.optimizers.Adagrad(p.learning_rate) if p.optimizer == "adagrad"
                     else tf.keras.optimizers.Adam(p.learning_rate))
        # The shared table appears in both towers: list each variable once.
        variables = list({id(v): v for v in query_tower.trainable_variables + item_tower.trainable_variables}
                         .values())

        step, steps = retrieval_steps(tf, task, query_tower, item_tower, variables, optimizer,
                                      sampling_t if p.sampling_correction else None)

        val_windows = hist.windows(val_pos, p.max_length)
        val_targets = hist.items[val_pos]
        seen = data.binary(val_users)

        def validation_ndcg() -> float:
            """Mean NDCG@20 of each validation user's held-out item among the items they have not seen.

            Graded by rank, not a hit count: a hit rate saturates on small catalogues, and
            early stopping would then keep the first epoch.
            """
            if len(val_users) == 0:
                return 0.0
            items = item_tower(np.arange(data.n_items, dtype=np.int32), training=False).numpy()
            gain = 0.0
            for lo in range(0, len(val_users), 1024):
                q = query_tower(val_windows[lo:lo + 1024], training=False).numpy()
                scores = q @ items.T
                target_score = scores[np.arange(len(q)), val_targets[lo:lo + 1024]]
                block = seen[lo:lo + 1024].tocoo()
                scores[block.row, block.col] = -np.inf  # seen items, the target among them
                rank = (scores > target_score[:, None]).sum(axis=1)
                gain += float(np.sum(np.where(rank < _VALIDATION_K, 1.0 / np.log2(rank + 2.0), 0.0)))
            return gain / len(val_users)

        # The query tower holds every variable (the item table included).
        keeper = KeepBest("sequence", query_tower.weights, p.patience)
        n = min(len(train_pos), p.examples_per_epoch or len(train_pos))
        bs = min(p.batch_size, n)
        # Typed events: each epoch draws its next-item examples in proportion to the target's
        # weight, so the model learns what is bought next more than what is viewed next.
        draw = None if hist.weights is None else hist.weights[train_pos] / hist.weights[train_pos].sum()
        chunk = _STEPS_PER_CALL
        with EpochProgress(log, "sequence", p.max_epochs, n, p.max_seconds) as progress:
            for epoch in range(1, p.max_epochs + 1):
                progress.start_epoch(epoch)
                picked = train_pos[rng.permutation(len(train_pos))[:n] if draw is None
                                   else rng.choice(len(train_pos), n, p=draw)]
                full = n // bs * bs
                total = 0.0
                for lo in range(0, full, chunk * bs):
                    ends = picked[lo:min(lo + chunk * bs, full)]
                    seqs = hist.windows(ends, p.max_length).reshape(-1, bs, p.max_length)
                    targets = hist.items[ends].reshape(-1, bs)
                    total += float(steps(tf.constant(seqs), tf.constant(targets)))
                    progress.advance(len(ends))
                if n - full >= 2:  # a last batch of one has no in-batch negative
                    ends = picked[full:]
                    total += float(step(tf.constant(hist.windows(ends, p.max_length)),
                                        tf.constant(hist.items[ends])))
                progress.examples_done()
                score = validation_ndcg()
                if keeper.offer(score, epoch, progress.end_epoch(loss=total, validation_ndcg_at_20=score)):
                    break
        keeper.restore()
        self.info.update(progress.info(), best_epoch=keeper.best_epoch, validation_ndcg_at_20=keeper.best,
                         stopped_early=keeper.exhausted, examples_per_epoch=n,
                         training_examples=len(train_pos), encoder=p.encoder)

        # Each user's vector: the query tower over their latest items, the held-out one included.
        user_vectors = np.empty((data.n_users, p.embedding_dim), np.float32)
        for lo in range(0, data.n_users, 8192):
            users = np.arange(lo, min(lo + 8192, data.n_users))
            windows = hist.windows(hist.indptr[users + 1], p.max_length, starts=hist.indptr[users])
            user_vectors[users] = query_tower(windows, training=False).numpy()
        item_vectors = item_tower.predict(np.arange(data.n_items, dtype=np.int32), batch_size=8192, verbose=0)
        return Vectors(user_vectors, item_vectors, np.zeros(data.n_items, np.float32))
