"""Two-tower retrieval with TensorFlow Recommenders, trained with in-batch softmax.

What makes it competitive with matrix factorisation on a temporal holdout, beyond
the tutorial setup: log-q correction of in-batch negatives (the task is given each
candidate's sampling probability, so popular items are not over-penalised),
removal of accidental hits (a user's other positives in the batch are not
negatives), a softmax temperature over L2-normalised towers, and early stopping
on a validation slice carved from the training data (never the holdout).

The artifact is the towers' output for every user and item, so batch scoring is
the shared chunked matrix product.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from recjobs.arrays import distinct
from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions
from recjobs.models.vectors import VectorRecommender, Vectors
from recjobs.progress import EpochProgress
from recjobs.settings import TFRSParams

log = logging.getLogger(__name__)

# Batches per call of the compiled multi-step function: large enough that Python's
# per-call overhead vanishes, small enough for a progress count every second or so.
_STEPS_PER_CALL = 64


_TF_NATIVE_LOG = re.compile(r"^(?:[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]|WARNING: All log messages before "
                            r"absl::InitializeLog\(\) is called are written to STDERR)")


@contextlib.contextmanager
def _native_stderr_to_debug() -> Iterator[None]:
    """Send what native code writes to stderr inside the block to this module's debug log.

    TensorFlow's C++ start-up (oneDNN and CUDA probing, "Could not find cuda drivers",
    "failed call to cuInit") writes straight to file descriptor 2 before its own log level
    applies, and Airflow shows every stderr line of a task as a red ERROR. Anything else
    written to stderr meanwhile (a real Python warning) is passed on unchanged.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured): nothing to redirect
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if _TF_NATIVE_LOG.match(line):
                    log.debug("tensorflow start-up: %s", line)
                elif line.strip():
                    print(line, file=sys.stderr)


def import_tensorflow():  # noqa: ANN201 - returns the tensorflow module
    """Import TensorFlow (with Keras 2, as TensorFlow Recommenders needs) and TFRS, quietly.

    ``TF_USE_LEGACY_KERAS`` only has an effect before TensorFlow's first import, so
    it is set here (and when :mod:`recjobs` is imported) rather than left to users.
    ``TF_CPP_MIN_LOG_LEVEL=3`` (unless set already) hides TensorFlow's C++ info, warning
    and error lines (NodeDef attributes, oneDNN fallbacks) that no user can act on; a real
    failure still raises. The start-up lines written before that level applies go to the
    debug log (``recjobs -v``); set ``TF_CPP_MIN_LOG_LEVEL=0`` to see everything.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow_recommenders" in sys.modules:
        return sys.modules["tensorflow"]
    with _native_stderr_to_debug():
        import tensorflow as tf
        import tensorflow_recommenders  # noqa: F401 - loads its own native libraries: same start-up lines

        # Device discovery probes CUDA (cuInit) now rather than in the middle of training.
        tf.config.list_physical_devices()
    # TensorFlow's Python side logs deprecation notices through "tensorflow" and absl.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    return tf


def seeded_tensorflow(threads: int, seed: int):  # noqa: ANN201 - TensorFlow's module
    """TensorFlow with ``threads`` threads per pool, seeded, with deterministic ops: the same data give the same model."""
    tf = import_tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already initialised in this process; keep its setting
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    return tf


def _dense_features(features: np.ndarray | None, n: int, use: bool) -> np.ndarray | None:
    if not use or features is None:
        return None
    return np.asarray(features.todense(), dtype=np.float32).reshape(n, -1)



def retrieval_steps(tf, task, query_tower, item_tower, variables, optimizer,  # noqa: ANN001, ANN201
                    sampling: object | None, jit_compile: bool | None = None):
    """A two-tower retrieval model's training step, and the same run over a chunk of batches per call.

    ``step`` takes one batch; ``steps`` takes ``[k, batch]`` query and target tensors and returns the
    summed loss: one Python round trip per chunk instead of per batch. ``sampling`` (item
    sampling probabilities, or None) corrects the in-batch softmax for popular items;
    the towers' own losses (regularisers) are added. Shared by ``tfrs`` and ``sequence``.
    """
    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def step(queries, targets):  # noqa: ANN001, ANN202
        with tf.GradientTape() as tape:
            loss = task(
                query_tower(queries, training=True), item_tower(targets, training=True),
                candidate_sampling_probability=None if sampling is None else tf.gather(sampling, targets),
                candidate_ids=targets,
                compute_metrics=False,
            )
            loss += sum(query_tower.losses) + sum(item_tower.losses)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    @tf.function(reduce_retracing=True)
    def steps(queries, targets):  # noqa: ANN001, ANN202
        total = tf.constant(0.0)
        for k in tf.range(tf.shape(queries)[0]):
            total += step(queries[k], targets[k])
        return total

    return step, steps


class KeepBest:
    """Early stopping over epochs: keeps the weights of the best validation score so far.

    A score counts as a gain only above the best by 1e-4; after ``patience`` epochs
    without one, :attr:`exhausted` is true. :meth:`restore` puts the best weights back.
    """

    def __init__(self, name: str, weights: list, patience: int) -> None:  # tf.Variable list (lazy TF import)
        self.name, self.weights, self.patience = name, weights, patience
        self.best, self.best_epoch, self.waited = -1.0, 0, 0
        self._saved: list | None = None

    def offer(self, score: float, epoch: int, out_of_time: bool) -> bool:
        """Record epoch ``epoch``'s validation score (copying the weights if it is a gain);
        True when training should stop: ``out_of_time`` (the budget), or patience run out."""
        if score > self.best + 1e-4:
            self.best, self.best_epoch, self.waited = score, epoch, 0
            self._saved = [w.numpy() for w in self.weights]
        else:
            self.waited += 1
        if out_of_time:
            return True
        if self.exhausted:
            log.info("%s: no validation gain for %d epochs; stopping early", self.name, self.waited)
        return self.exhausted

    @property
    def exhausted(self) -> bool:
        """True once ``patience`` epochs in a row brought no gain."""
        return self.waited >= self.patience

    def restore(self) -> None:
        """Assign the best epoch's weights back (nothing if no epoch was offered)."""
        if self._saved is not None:
            for var, value in zip(self.weights, self._saved, strict=True):
                var.assign(value)

class TwoTowerModel(VectorRecommender):
    family = "tfrs"
    params_type = TFRSParams
    # Cold items (recjobs.ranking.coldstart.ColdItemProjection): set by a fit with item features.
    item_feature_names: np.ndarray | None = None
    _feature_kernel: np.ndarray | None = None

    def project_item_features(self, features: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """The item tower for items known by features alone: its id embedding is taken as zero."""
        if self._feature_kernel is None:
            raise RuntimeError("tfrs: not fitted with item features in this process")
        out = np.asarray(features @ self._feature_kernel, np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12), np.zeros(len(out), np.float32)

    def _fit(self, data: Interactions, features: SideFeatures | None) -> Vectors:
        p: TFRSParams = self.params
        tf = seeded_tensorflow(p.threads, self.seed)
        import tensorflow_recommenders as tfrs

        # The pairs as int32 (user, item) rows straight from the CSR structure: at 10x size every
        # whole-matrix copy (a COO, a binary matrix) is about a gigabyte more at the peak.
        m = data.matrix
        users = np.repeat(np.arange(data.n_users, dtype=np.int32), np.diff(m.indptr))
        items = m.indices.astype(np.int32, copy=False)
        rng = np.random.default_rng(self.seed)
        is_val = rng.random(len(users)) < p.validation_fraction
        train_u, train_i = users[~is_val], items[~is_val]
        # Typed events: each epoch draws its pairs in proportion to their weights (a purchase
        # is seen eight times as often as a view), the in-batch softmax's way of weighing them.
        weights = m.data[~is_val].astype(np.float32) if data.typed and len(train_u) else None
        draw = weights / weights.sum() if weights is not None else None
        val_u, val_i = users[is_val], items[is_val]
        del users, items, is_val, weights

        item_freq = np.bincount(train_i, minlength=data.n_items).astype(np.float32)
        sampling_p = item_freq / item_freq.sum()

        user_feats = _dense_features(features.user if features else None, data.n_users, p.use_features)
        item_feats = _dense_features(features.item if features else None, data.n_items, p.use_features)

        def tower(n: int, feats: np.ndarray | None, name: str) -> tf.keras.Model:
            ids = tf.keras.Input(shape=(), dtype=tf.int32, name=f"{name}_id")
            reg = tf.keras.regularizers.l2(p.l2) if p.l2 else None
            emb = tf.keras.layers.Embedding(n, p.embedding_dim, embeddings_regularizer=reg,
                                            name=f"{name}_embedding")(ids)
            if feats is not None:
                table = tf.constant(feats)
                looked_up = tf.keras.layers.Lambda(lambda x: tf.gather(table, x))(ids)
                emb = emb + tf.keras.layers.Dense(p.embedding_dim, use_bias=False, name=f"{name}_features")(looked_up)
            out = tf.keras.layers.Lambda(lambda x: tf.math.l2_normalize(x, axis=-1))(emb)
            return tf.keras.Model(ids, out, name=f"{name}_tower")

        user_tower = tower(data.n_users, user_feats, "user")
        item_tower = tower(data.n_items, item_feats, "item")
        task = tfrs.tasks.Retrieval(temperature=p.temperature, remove_accidental_hits=p.remove_accidental_hits)
        optimizer = (tf.keras.optimizers.Adagrad(p.learning_rate) if p.optimizer == "adagrad"
                     else tf.keras.optimizers.Adam(p.learning_rate))
        sampling_t = tf.constant(sampling_p)
        variables = user_tower.trainable_variables + item_tower.trainable_variables

        step, steps = retrieval_steps(tf, task, user_tower, item_tower, variables, optimizer,
                                      sampling_t if p.sampling_correction else None, p.jit_compile)

        val_users = distinct(val_u)
        if len(val_users) > 2000:
            val_users = np.sort(rng.choice(val_users, 2000, replace=False))
        seen_val = data.binary(val_users)

        def validation_recall(k: int = 20) -> float:
            if len(val_users) == 0:
                return 0.0
            uv = user_tower(val_users.astype(np.int32), training=False).numpy()
            iv = item_tower(np.arange(data.n_items, dtype=np.int32), training=False).numpy()
            scores = uv @ iv.T
            # Exclude training positives only; validation positives are what we look for.
            train_only = seen_val.tocoo()
            mask_val = np.isin(val_users[train_only.row] * data.n_items + train_only.col,
                               val_u.astype(np.int64) * data.n_items + val_i)
            scores[train_only.row[~mask_val], train_only.col[~mask_val]] = -np.inf
            # A catalogue of k items or fewer: every item is in the top k (kth must be < n_items).
            top = np.argpartition(-scores, min(k, data.n_items - 1), axis=1)[:, :k]
            pos = np.searchsorted(val_users, val_u[np.isin(val_u, val_users)])
            truth = np.zeros_like(scores, dtype=bool)
            truth[pos, val_i[np.isin(val_u, val_users)]] = True
            hits = np.take_along_axis(truth, top, axis=1).sum(axis=1)
            return float(np.mean(hits / np.maximum(truth.sum(axis=1), 1)))

        keeper = KeepBest("tfrs", user_tower.weights + item_tower.weights, p.patience)
        # An "epoch" may be a fresh random sample of the training pairs, so that the budget
        # (checked between epochs) and validation come round often enough on large data.
        n = min(len(train_u), p.examples_per_epoch or len(train_u))
        bs = p.batch_size
        chunk = max(1, _STEPS_PER_CALL)
        with EpochProgress(log, "tfrs", p.max_epochs, n, p.max_seconds) as progress:
            for epoch in range(1, p.max_epochs + 1):
                progress.start_epoch(epoch)
                order = (rng.permutation(len(train_u))[:n] if draw is None
                         else rng.choice(len(train_u), n, p=draw))
                full = n // bs * bs
                u_ep = train_u[order[:full]].reshape(-1, bs)
                i_ep = train_i[order[:full]].reshape(-1, bs)
                total = 0.0
                for lo in range(0, len(u_ep), chunk):
                    total += float(steps(tf.constant(u_ep[lo : lo + chunk]), tf.constant(i_ep[lo : lo + chunk])))
                    progress.advance(len(u_ep[lo : lo + chunk]) * bs)
                if n - full >= 2:  # a last batch of one has no in-batch negative
                    total += float(step(tf.constant(train_u[order[full:]]), tf.constant(train_i[order[full:]])))
                progress.examples_done()
                score = validation_recall()
                if keeper.offer(score, epoch, progress.end_epoch(loss=total, validation_recall_at_20=score)):
                    break
        keeper.restore()
        self.info.update(progress.info(), best_epoch=keeper.best_epoch, validation_recall_at_20=keeper.best,
                         stopped_early=keeper.exhausted, examples_per_epoch=n)
        user_vectors = user_tower.predict(np.arange(data.n_users, dtype=np.int32), batch_size=8192, verbose=0)
        item_vectors = item_tower.predict(np.arange(data.n_items, dtype=np.int32), batch_size=8192, verbose=0)
        if item_feats is not None:
            self.item_feature_names = features.item_names
            self._feature_kernel = item_tower.get_layer("item_features").kernel.numpy().astype(np.float32)
        return Vectors(user_vectors, item_vectors, np.zeros(data.n_items, np.float32))
