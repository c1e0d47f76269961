"""Hyper-parameters of each model family (``models.<family>``), with tuned defaults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from recjobs.models.registry import FAMILIES
from recjobs.settings._strict import Strict

# Vector sizes: users and items x dimensions of float32 are allocated at once, so a dimension
# far beyond any real use (1e9) is refused here instead of as a multi-terabyte allocation.
MAX_DIM = 4096


class PopularityParams(Strict):
    # Half-life in days for recency-weighted counts; None counts all interactions equally.
    half_life_days: float | None = None


# Defaults below are the values `recjobs tune` chose on MovieLens 100k's training part
# (grids in recjobs/tune.py); re-tune on your own data.
class ALSParams(Strict):
    factors: int = Field(32, gt=0, le=MAX_DIM)
    regularization: float = Field(2.0, ge=0.0)
    alpha: float = Field(1.0, gt=0.0)
    iterations: int = Field(15, gt=0)
    # Wall-clock budget: another iteration starts only if, at the last one's pace, it ends
    # within it (None: no limit). A run it stopped is reproducible only by its epochs_run.
    max_seconds: float | None = Field(60.0, gt=0.0)
    weighting: Literal["none", "rating", "bm25"] = "none"
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    # Recency: each confidence is multiplied by 0.5 ** (age / half-life), age counting the
    # user's newer interactions, so user factors lean to recent taste (None: off).
    recency_half_life: float | None = Field(None, gt=0.0)


class LightFMParams(Strict):
    loss: Literal["warp", "bpr", "logistic", "warp-kos"] = "warp"
    no_components: int = Field(64, gt=0, le=MAX_DIM)
    learning_rate: float = Field(0.05, gt=0.0)
    item_alpha: float = Field(1e-6, ge=0.0)
    user_alpha: float = Field(1e-6, ge=0.0)
    max_sampled: int = Field(10, gt=0)
    epochs: int = Field(40, gt=0)
    # Wall-clock budget: another epoch starts only if, at the last one's pace, it ends within
    # it (None: no limit). A run it stopped is reproducible only by its epochs_run. 75 s
    # fits two epochs at ML-20M size (~34 s each on one thread).
    max_seconds: float | None = Field(75.0, gt=0.0)
    use_item_features: bool = True
    use_user_features: bool = True
    # One thread: LightFM's Hogwild SGD is bit-reproducible only then, and reruns must give
    # the same lists. 2 measured ~1.3x faster per epoch here, with metrics differing in the
    # third decimal between reruns.
    num_threads: int = Field(1, gt=0)
    # Training pairs per epoch, a fresh seeded sample each epoch (None: all of them), as the
    # TensorFlow families have: a full pass over 160M pairs (10x ML-20M) takes ~11 minutes on
    # one thread, and the budget can only stop between epochs. Data with fewer pairs use all.
    examples_per_epoch: int | None = Field(2_000_000, gt=1)


class TFRSParams(Strict):
    embedding_dim: int = Field(64, gt=0, le=MAX_DIM)
    use_features: bool = True
    batch_size: int = Field(1024, gt=0)
    learning_rate: float = Field(0.1, gt=0.0)
    optimizer: Literal["adagrad", "adam"] = "adagrad"
    temperature: float = Field(0.2, gt=0.0)
    sampling_correction: bool = True
    remove_accidental_hits: bool = True
    l2: float = Field(0.0, ge=0.0)
    max_epochs: int = Field(40, gt=0)
    # Wall-clock budget: another epoch starts only if, at the last one's pace, it ends within
    # it (None: no limit); the best epoch so far is kept, as with early stopping. 75 s fits
    # three ML-20M epochs of ~22 s.
    max_seconds: float | None = Field(75.0, gt=0.0)
    # Training pairs per epoch, a fresh seeded sample each epoch (None: all of them). Keeps
    # epochs under ~30 s on 2 cores at ML-20M size (a full epoch there takes ~4 minutes), so
    # the budget and early stopping act in time; smaller data use all their pairs.
    examples_per_epoch: int | None = Field(2_000_000, gt=1)
    patience: int = Field(3, gt=0)
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    threads: int = Field(2, gt=0)
    # XLA-compile the training step: measured slower on CPU (57k vs 66k examples/s).
    jit_compile: bool = False


class EASEParams(Strict):
    # L2 regularisation of the closed form (Steck 2019); larger for denser data.
    l2: float = Field(500.0, gt=0.0)
    # Recency weighting of each user's history when scoring: an interaction's weight is
    # 0.5 ** (age / half-life), age counting the user's newer interactions (None: off).
    recency_half_life: float | None = Field(5.0, gt=0.0)
    # Score from at most this many of each user's latest interactions (None: all); with a
    # recency half-life older ones weigh almost nothing, and scoring cost grows with them.
    history_limit: int | None = Field(200, gt=0)
    # Size limit: the dense item x item inverse needs 4 * max_items**2 bytes (twice, briefly)
    # and max_items**3 / 3 flops. Above it EASE models the most popular max_items items
    # and recommends only those (logged as a warning with the share of interactions covered).
    max_items: int = Field(8_000, gt=1)
    # Sequential term: weight of "items that follow the user's items" against EASE's
    # "items that go with them" (0: plain EASE), counted within this many steps.
    transition_weight: float = Field(0.2, ge=0.0)
    transition_window: int = Field(10, gt=0)


class ItemKNNParams(Strict):
    # implicit's item-item models: cosine, BM25-weighted or TF-IDF-weighted co-occurrence.
    similarity: Literal["cosine", "bm25", "tfidf"] = "bm25"
    # Neighbours kept per item: the learned matrix stays sparse (items x neighbours).
    neighbours: int = Field(100, gt=0)
    bm25_k1: float = Field(1.2, ge=0.0)
    bm25_b: float = Field(0.75, ge=0.0, le=1.0)
    recency_half_life: float | None = Field(10.0, gt=0.0)
    history_limit: int | None = Field(200, gt=0)


class UserKNNParams(Strict):
    # User-user neighbours: cosine of histories, or cosine of BM25-weighted histories.
    similarity: Literal["cosine", "bm25"] = "cosine"
    # Defaults measured on MovieLens 100k (README 'Model families'): per_user NDCG@10 0.223 with
    # 30 neighbours and half-life 5 (0.186 without recency, 0.200 with 100 neighbours, 0.203 BM25).
    neighbours: int = Field(30, gt=0)
    bm25_k1: float = Field(1.2, ge=0.0)
    bm25_b: float = Field(0.75, ge=0.0, le=1.0)
    # The user's own profile is recency-weighted (as item-item's history), so neighbours are
    # chosen by recent taste; None: all interactions count alike.
    recency_half_life: float | None = Field(5.0, gt=0.0)
    history_limit: int | None = Field(200, gt=0)
    # Neighbours are drawn from the most active users only above this many users: the
    # users x pool similarity product is the family's cost (None: every user).
    max_pool_users: int | None = Field(20_000, gt=1)


class SequenceParams(Strict):
    # Query tower over the user's latest ``max_length`` items in time order: "gru", one
    # self-"attention" block, or learned position-weighted "pool"ing of item embeddings.
    # Measured on MovieLens 100k (README 'Quality'): pool is as good as gru and 5-10x faster.
    encoder: Literal["gru", "attention", "pool"] = "pool"
    max_length: int = Field(20, gt=0)
    embedding_dim: int = Field(64, gt=0, le=MAX_DIM)
    batch_size: int = Field(1024, gt=1)
    learning_rate: float = Field(0.005, gt=0.0)
    optimizer: Literal["adagrad", "adam"] = "adam"
    temperature: float = Field(0.2, gt=0.0)
    sampling_correction: bool = True
    remove_accidental_hits: bool = True
    max_epochs: int = Field(40, gt=0)
    # Wall-clock budget, checked between epochs (another starts only if it would end within
    # it); the best epoch so far is kept. At ML-20M size an epoch of 500k examples takes
    # ~20 s on 2 cores (pool), so 75 s fits three.
    max_seconds: float | None = Field(75.0, gt=0.0)
    # Next-item examples per epoch, a fresh seeded sample each epoch (None: all of them).
    examples_per_epoch: int | None = Field(500_000, gt=1)
    patience: int = Field(3, gt=0)
    # Early stopping: this many users' latest item is held out of training and ranked.
    validation_users: int = Field(2000, gt=0)
    threads: int = Field(2, gt=0)


class RankerParams(Strict):
    """The learned ranker over several families' candidates (README 'Two-stage ranking')."""

    # Generator family -> how many of its top items each user gets as candidates (the union
    # is ranked). Defaults by measurement on MovieLens 100k (README); any family but ranker.
    generators: dict[str, int] = {"popularity": 30, "als": 50, "lightfm": 100, "ease": 100, "itemknn": 50,
                                  "userknn": 50, "sequence": 100}
    # Each generator's parameters: filled from models.<family> when the settings hand the
    # ranker its parameters (Settings.model_params), so the artifact holds them all.
    generator_params: dict[str, dict[str, Any]] = {}
    # Where training labels come from, inside the data the ranker is fitted on: per_user
    # (each user's latest label_fraction), global_time (one cutoff), or auto (global_time
    # when at least min_label_users users get labels, else per_user: the split's own rule;
    # where split.protocol is set, auto follows it, see Settings.model_params).
    label_split: Literal["auto", "per_user", "global_time"] = "auto"
    label_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    min_label_users: int = Field(1000, ge=1)
    # LightGBM: lambdarank (listwise NDCG) or binary (pointwise) over the candidates.
    objective: Literal["lambdarank", "binary"] = "lambdarank"
    # Measured on MovieLens 100k (README): slow learning and small trees with large leaves
    # generalise best (per_user NDCG@10 0.284 at 15 leaves of >= 100 samples against 0.280 at
    # 31 of >= 200, and 0.251 at learning rate 0.05 and 50 samples per leaf).
    trees: int = Field(300, gt=0)
    learning_rate: float = Field(0.02, gt=0.0)
    leaves: int = Field(15, gt=1)
    min_child_samples: int = Field(100, gt=0)
    feature_fraction: float = Field(0.8, gt=0.0, le=1.0)
    # Early stopping on this share of the training users (their candidates' NDCG@10); 0: off,
    # all `trees` are grown (on MovieLens 100k a tenth of the users was too noisy to stop on).
    validation_fraction: float = Field(0.0, ge=0.0, lt=0.5)
    early_stopping: int = Field(30, gt=0)
    # Users whose labelled candidates train the ranker, a seeded sample above this many. At
    # ML-20M size 6,000 users (394k candidates) scored NDCG@10 0.3783 against 0.3794 with all
    # 13,551, and LightGBM took 20 s against 55 s (README 'Two-stage ranking').
    max_train_users: int | None = Field(6_000, gt=0)
    # Per user, every positive candidate and at most this many seeded negatives train it
    # (None: all). lambdarank's cost grows with the square of a group's size: 50 trained
    # 9x faster than all ~130 on MovieLens 100k at the same NDCG@10 (0.266 vs 0.266).
    negatives_per_user: int | None = Field(50, gt=0)
    # Rating prediction (README 'Ratings'): a LightGBM regression boosted from the bias
    # baseline over rating features (biases, an MF residual, user and item recency and
    # spread, neighbourhood residuals), learned from the ratings after each of several label
    # cutoffs (rating_folds: each one's share of the pairs after it, the ranker's protocol).
    # auto: on where ratings look explicit (more than two distinct values, e.g. MovieLens).
    # Defaults measured on MovieLens 100k (README 'Ratings').
    ratings: Literal["auto", "on", "off"] = "auto"
    # auto leaves the rating model off above this many training pairs: its statistics are
    # fitted five times a fit (four folds and serving), and at ML-20M size (20M pairs) one
    # costs about 460 s on 2 cores (its biased MF 380 s), far beyond a night. on: always.
    rating_auto_max_pairs: int = Field(2_000_000, gt=0)
    rating_folds: list[float] = Field([0.1, 0.2, 0.3, 0.4], min_length=1)
    rating_trees: int = Field(300, gt=0)
    rating_learning_rate: float = Field(0.05, gt=0.0)
    rating_leaves: int = Field(7, gt=1)
    # Residuals of this many most similar rated items (and rating users) make the
    # neighbourhood features, chosen among each item's (user's) rating_candidates most
    # similar; similarities shrunk by co-counts over rating_shrink.
    rating_neighbours: int = Field(40, gt=0)
    rating_candidates: int = Field(300, gt=0)
    rating_shrink: float = Field(100.0, ge=0.0)
    # Bounds on the similarities' cost at scale: item-item over a seeded sample of this many
    # users, user-user against a pool of this many, each over their rating_history latest.
    rating_similarity_users: int = Field(20_000, gt=0)
    rating_pool_users: int = Field(2_000, gt=0)
    rating_history: int = Field(200, gt=0)
    rating_max_train_pairs: int = Field(2_000_000, gt=0)
    # Users scored at a time (each generator's dense scores of a block of users are kept).
    chunk_users: int = Field(1024, gt=0)
    threads: int = Field(2, gt=0)

    @field_validator("rating_folds")
    @classmethod
    def _folds_are_shares(cls, value: list[float]) -> list[float]:
        bad = [f for f in value if not 0.0 < f < 1.0]
        if bad:
            raise ValueError(f"each fold is a share of the pairs after its cutoff, between 0 and 1 (exclusive): "
                             f"got {bad}")
        return value

    @field_validator("generators")
    @classmethod
    def _known_generators(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - (set(FAMILIES) - {"ranker"}))
        if unknown:
            raise ValueError(f"unknown generator families {unknown}; known: "
                             f"{[f for f in FAMILIES if f != 'ranker']}")
        if not value:
            raise ValueError("the ranker needs at least one generator")
        bad = sorted(k for k, v in value.items() if v <= 0)
        if bad:
            raise ValueError(f"generators {bad} need a positive number of candidates")
        return value


class ModelsSettings(Strict):
    popularity: PopularityParams = PopularityParams()
    als: ALSParams = ALSParams()
    lightfm: LightFMParams = LightFMParams()
    tfrs: TFRSParams = TFRSParams()
    ease: EASEParams = EASEParams()
    itemknn: ItemKNNParams = ItemKNNParams()
    userknn: UserKNNParams = UserKNNParams()
    sequence: SequenceParams = SequenceParams()
    ranker: RankerParams = RankerParams()


