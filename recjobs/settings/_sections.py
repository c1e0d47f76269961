"""The settings sections and :class:`Settings`, with their embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from recjobs.columns import EVENT_TYPE, INTERACTION_COLUMNS
from recjobs.models.registry import DEFAULT_FAMILIES, FAMILIES
from recjobs.settings._operations import AlertsSettings, GuardSettings
from recjobs.settings._params import ModelsSettings
from recjobs.settings._strict import Strict

# The longest list (top_n, similar_n, popular_n, evaluate.k) and the largest chunk of users
# scored at once: chunk x list x 12 bytes of ranks and scores (10k x 64k: 7.9 GB) and
# chunk x catalogue x 4 bytes of scores stay within one machine.
MAX_LIST = 10_000
MAX_CHUNK_USERS = 65_536


def known_families(value: list[str]) -> list[str]:
    """``value`` if every name in it is a registered family; else a ValueError naming the others."""
    unknown = sorted(set(value) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown model families {unknown}; known: {list(FAMILIES)}")
    return value


class IngestSettings(Strict):
    rating_min: float = 0.5
    rating_max: float = 5.0
    max_invalid_share: float = Field(0.01, ge=0.0, le=1.0)
    # Upper bounds on sizes here and below: a value far beyond any real use (1e9) would only
    # surface as a multi-terabyte allocation deep in a stage; refused here in one line.
    batch_rows: int = Field(1_000_000, gt=0, le=100_000_000)
    # Canonical column -> the file's column name, e.g. {"user_id": "customer", "item_id": "sku"}.
    columns: dict[str, str] = {}
    # Weight given to every row of a file without a rating column (event data); None: such
    # a file is refused as missing its rating column.
    default_rating: float | None = None
    # How long an ingest waits for another one holding the lake's lock before giving up.
    lock_timeout_seconds: float = Field(3600.0, gt=0.0)
    # Validated rows are spilled to disk (<lake>/.spill) and merged a few days at a time:
    # consecutive days are merged together up to this many new rows, which bounds the
    # merge's memory (a single larger day is merged alone).
    merge_rows: int = Field(2_000_000, gt=0, le=1_000_000_000)
    # Long files log progress (rows, rows/s, partitions, ETA) at most this often.
    progress_seconds: float = Field(10.0, gt=0.0)
    # Threads for the I/O- and Arrow-bound parts (spill writes, partition merges); Arrow
    # releases the GIL there, so 2 keeps both cores of a small worker busy.
    threads: int = Field(2, ge=1)

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - {*INTERACTION_COLUMNS, EVENT_TYPE})
        if unknown:
            raise ValueError(f"unknown columns {unknown}; map only {[*INTERACTION_COLUMNS, EVENT_TYPE]}")
        empty = sorted(k for k, v in value.items() if not v.strip())
        if empty:
            raise ValueError(f"columns {empty} are mapped to an empty file column name")
        return value

    @model_validator(mode="after")
    def _default_rating_in_range(self) -> IngestSettings:
        if self.rating_min > self.rating_max:
            raise ValueError(f"rating_min {self.rating_min:g} is above rating_max {self.rating_max:g}")
        if self.default_rating is not None and not (
            self.rating_min <= self.default_rating <= self.rating_max
        ):
            raise ValueError(
                f"default_rating {self.default_rating:g} is outside rating_min..rating_max "
                f"[{self.rating_min:g}, {self.rating_max:g}]"
            )
        return self


# Longest event type name: types are short words; a longer name is a mistake, not a type.
MAX_EVENT_TYPE = 64


def _event_type_name(name: str, setting: str) -> str:
    if not name or name != name.strip() or len(name) > MAX_EVENT_TYPE or not name.isprintable():
        raise ValueError(f"{setting}: event type {name[:MAX_EVENT_TYPE]!r} must be 1..{MAX_EVENT_TYPE} printable "
                         "characters without surrounding spaces")
    return name


class FeedbackSettings(Strict):
    """Typed events (an ``event_type`` column): how each type counts. Rows without a type keep their rating."""

    # Event type -> weight of a (user, item) pair in training: the confidence of implicit
    # feedback. A pair with several events weighs its strongest one.
    weights: dict[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
    # Negative types: the pair is never recommended to that user (it joins the seen items at
    # ranking time), and it is neither trained on nor counted relevant, whatever else the user did with the item.
    exclude: list[str] = ["dislike", "return"]
    # A typed pair is a positive (trained on, kept in the seen set) only when its weight reaches this.
    min_weight: float = Field(1.0, gt=0.0)
    # Held-out typed pairs that count as relevant in evaluation: a pair with an event of one of these
    # types. Intent, not exposure: a view is often what the recommender showed, so counting it would
    # reward a model for predicting its own lists.
    relevant: list[str] = ["add_to_cart", "purchase"]

    @field_validator("weights")
    @classmethod
    def _positive_weights(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            _event_type_name(name, "weights")
            if weight <= 0:
                raise ValueError(f"weight of {name!r} is {weight:g}; weights must be above 0 (negative feedback "
                                 "goes in feedback.exclude)")
        if not value:
            raise ValueError("at least one event type needs a weight")
        return value

    @field_validator("exclude", "relevant")
    @classmethod
    def _names(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for name in value:
            _event_type_name(name, str(info.field_name))
        return sorted(set(value), key=value.index)

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackSettings:
        both = sorted(set(self.weights) & set(self.exclude))
        if both:
            raise ValueError(f"event types {both} are in both feedback.weights and feedback.exclude")
        unweighted = sorted(set(self.relevant) - set(self.weights))
        if unweighted:
            raise ValueError(f"feedback.relevant names {unweighted}, which have no weight in feedback.weights "
                             f"({sorted(self.weights)})")
        if self.min_weight > max(self.weights.values()):
            raise ValueError(f"feedback.min_weight {self.min_weight:g} is above every weight in feedback.weights: "
                             "no typed pair would be a positive")
        return self

    @property
    def known_types(self) -> frozenset[str]:
        """Every event type ingest accepts: the weighted and the negative ones."""
        return frozenset(self.weights) | frozenset(self.exclude)


class ItemSegmentsSettings(Strict):
    """``item_segments``: for each item, the users most likely to want it (campaign audiences)."""

    # Users listed per item, by the champion's scores with each user's seen (and excluded)
    # items left out; 0 (the default) publishes no segments: they cost a scoring pass as
    # large as the recommendations'.
    top_users: int = Field(0, ge=0, le=MAX_LIST)
    # Only these item ids (a campaign's items); None: every item no rule excludes.
    items: list[str] | None = None

    @field_validator("items")
    @classmethod
    def _ids(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("an empty list selects no item; unset it for every item")
        bad = [v for v in value if not v or "\x00" in v]
        if bad:
            raise ValueError(f"item ids must be non-empty text without NUL characters, got {bad[:3]!r}")
        return value


class SplitSettings(Strict):
    # per_user: each user's latest holdout_fraction of interactions is the truth.
    # global_time: one cutoff per run date; train strictly before it, truth at or after it
    # for users seen before it (leak-free, see README 'Quality').
    # auto (default): global_time when its holdout evaluates at least min_eval_users users,
    # else per_user: a gate deciding on a hundred returning users picks by noise (README 'Gate
    # evidence' has the measurements). The snapshot records the protocol chosen and why.
    protocol: Literal["auto", "per_user", "global_time"] = "auto"
    min_eval_users: int = Field(1000, ge=1)
    # per_user: share of each user's history held out. global_time: share of all
    # interactions (the latest by time) after the cutoff, unless holdout_days is set.
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # global_time only: the cutoff is this many days before the run's cutoff instead.
    holdout_days: float | None = Field(None, gt=0.0)
    # per_user only: users with fewer interactions stay wholly in training: holding out
    # their only interaction would make them cold users that no model can be judged on.
    min_user_interactions: int = Field(2, ge=2)


class EvaluateSettings(Strict):
    k: int = Field(10, gt=0, le=MAX_LIST)
    chunk_users: int = Field(2048, gt=0, le=MAX_CHUNK_USERS)
    # RMSE/MAE on the holdout's ratings (families that predict ratings, and the bias
    # baseline beside them): auto where ratings look explicit (more than two distinct values,
    # e.g. MovieLens' 1-5 stars), on, or off (event data: a rating is only a weight).
    ratings: Literal["auto", "on", "off"] = "auto"


class GateSettings(Strict):
    metric: Literal["ndcg", "map", "precision", "recall"] = "ndcg"
    # Absolute improvement a challenger needs over the champion on the same holdout.
    margin: float = Field(0.002, ge=0.0)
    # And the gain must be significant: a paired test over the holdout's users (two-sided,
    # at level `significance`); "none" promotes on the margin alone. The bootstrap resamples
    # users `bootstrap_samples` times with the run's seed, so reruns decide the same.
    test: Literal["bootstrap", "ttest", "none"] = "bootstrap"
    significance: float = Field(0.05, gt=0.0, lt=1.0)
    bootstrap_samples: int = Field(1000, ge=100, le=1_000_000)
    # A first run (no champion) whose best mean is not significantly above the runner-up:
    # "lower_bound" promotes the candidate with the highest lower confidence bound of its mean
    # (bootstrap over the users all candidates share, at `significance`), the one whose score
    # is surest; "best_mean" promotes the highest mean however small its lead.
    first_run: Literal["lower_bound", "best_mean"] = "lower_bound"
    # A gate compares with the champion of the latest earlier gate, so when several dates
    # run at once (a backfill) it waits for earlier dates of the last `wait_window_days`
    # that have candidates but no gate yet, at most `wait_timeout_minutes`, polling every
    # `wait_poll_seconds`; then it gates anyway and its reason names the dates it skipped.
    wait_window_days: int = Field(7, ge=0)
    wait_timeout_minutes: float = Field(60.0, ge=0.0)
    wait_poll_seconds: int = Field(30, gt=0)


class PublishSettings(Strict):
    # List lengths: each chunk of users holds chunk_users x top_n ranks and scores, and a
    # list longer than the catalogue only pads, so they are bounded (see MAX_LIST).
    top_n: int = Field(50, gt=0, le=MAX_LIST)
    similar_n: int = Field(20, gt=0, le=MAX_LIST)
    popular_n: int = Field(100, gt=0, le=MAX_LIST)
    keep_versions: int = Field(3, ge=1)
    chunk_users: int = Field(2048, gt=0, le=MAX_CHUNK_USERS)
    # Days of recommendations_history kept behind the newest run date; None keeps all.
    history_days: int | None = Field(90, gt=0)
    # PostgreSQL: how long one attempt to repoint a view may wait for its lock. While it
    # waits, new readers of the view queue behind it, so this bounds their delay.
    swap_lock_timeout_ms: int = Field(500, gt=0)
    # Total time to keep retrying (with backoff) before the publish fails; the new table
    # stays loaded and a rerun publishes again.
    swap_deadline_s: float = Field(300.0, gt=0.0)
    # Users (and items) are ranked in this many shards: in Airflow one mapped task each, so
    # with Celery/Kubernetes they run on several workers; `recjobs publish` ranks them in turn.
    shards: int = Field(1, ge=1, le=1024)
    # Ranking users of a vector family (recjobs.ranking.ann): "off" scores every item exactly;
    # "pruned" is exact too but skips items a norm bound rules out; "ivf"/"hnsw" are faiss
    # indexes (approximate; recall against exact is measured by scripts/benchmark_scale.py).
    # Neighbourhood families always rank exactly.
    # "clustered" groups users by k-means and scores each group against a shared candidate
    # list calibrated to ann_recall of exact's top-N (the fastest; see recjobs.ranking.ann).
    ann: Literal["off", "ivf", "hnsw", "pruned", "clustered"] = "off"
    # ivf: k-means lists (None: about 1.5 sqrt(items)); clustered: user clusters (None: users / 256)
    ann_lists: int | None = Field(None, gt=0)
    ann_recall: float = Field(0.99, gt=0.0, le=1.0)  # clustered: recall of exact top-N to calibrate to
    ann_probe: int = Field(32, gt=0)  # ivf: lists searched per user
    ann_hnsw_m: int = Field(32, gt=1)  # hnsw: links per node
    ann_ef_search: int = Field(128, gt=0)  # hnsw: search breadth (at least the retrieval depth)
    # ivf/hnsw: candidates retrieved before seen items are dropped; users left short are
    # retrieved again up to ann_max_depth, then ranked exactly.
    ann_depth: int = Field(128, gt=0)
    ann_max_depth: int = Field(512, gt=0)



class ColdStartSettings(Strict):
    """Users and items the champion knows little or nothing about (see recjobs/coldstart.py)."""

    # Items with side features but no interactions are scored from their features by the
    # families that can (LightFM, TFRS with features) and published on their first night.
    cold_items: bool = True
    # Users with fewer interactions than this (but at least one) are ranked by the summed
    # cosine similarity of the champion's item vectors to their few items, instead of by
    # their own barely-trained user vector, when the champion is one of thin_user_families;
    # 0 or 1: off. ALS is not listed: its user vector is a least-squares fit to the user's
    # items, which ranked better than neighbours (README "Cold start" has the numbers).
    min_interactions: int = Field(6, ge=0)
    thin_user_families: list[str] = ["lightfm", "tfrs"]
    # User feature prefix naming a user's segment, e.g. "occupation=" or "age=": popular
    # items are then also published per segment for new users; None: one global list.
    segment_prefix: str | None = None
    # Segments with fewer users with interactions than this get no list of their own.
    min_segment_users: int = Field(20, gt=0)

    @field_validator("segment_prefix")
    @classmethod
    def _non_empty_prefix(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("segment_prefix is empty; use null to turn segments off")
        return value

    @field_validator("thin_user_families")
    @classmethod
    def _known_thin_families(cls, value: list[str]) -> list[str]:
        return known_families(value)


class RulesSettings(Strict):
    """Business rules honoured by every published list and by the gate's evaluation; off by default.

    A source is a CSV or Parquet file (a path ending in .csv/.tsv/.parquet; relative paths
    are under ``home``) or the name of a table or view in the recommendations database. It
    is read at every publish and evaluation, so a nightly refresh of it takes effect the
    next night; a source that cannot be read fails the stage (it never publishes unfiltered).
    """

    # Items never recommended (out of stock, withdrawn): a source with an item_id column.
    exclude_items: str | None = None
    # If set, only these items are recommended: a source with an item_id column.
    allow_items: str | None = None
    # Per-user exclusions beyond the items a user has seen: a source with user_id, item_id
    # and optionally until (a date; the pair applies while until >= the run date).
    user_exclusions: str | None = None

    @field_validator("exclude_items", "allow_items", "user_exclusions")
    @classmethod
    def _non_empty_source(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty source; use null for no rule")
        return value


class RerankSettings(Strict):
    """Re-ranking between scoring and publishing (and in the gate's evaluation); off by default."""

    # When a rule or a re-ranking is on, candidates are taken `depth` times deeper than the
    # list (top_n x depth), and 4x deeper again for a user whose list still comes out short,
    # up to top_n x max_depth candidates (a list that cannot fill then stays short).
    depth: int = Field(3, ge=1, le=100)
    max_depth: int = Field(20, ge=1, le=1000)
    # Maximal marginal relevance: 1.0 ranks by relevance alone (off); lower values trade
    # relevance for dissimilarity to the items already chosen for the list.
    mmr_lambda: float = Field(1.0, ge=0.0, le=1.0)
    # Similarity for MMR: item features (where ingested), the model's item vectors, or
    # auto (features when there are item features, else vectors).
    mmr_space: Literal["auto", "features", "embedding"] = "auto"
    # At most this many items of one category per list (None: no cap); an item's categories
    # are its item features starting with category_prefix (e.g. genre=Comedy).
    category_cap: int | None = Field(None, gt=0)
    category_prefix: str = Field("genre=", min_length=1)
    # Items first seen within freshness_days before the run date get up to freshness_boost
    # added to their relevance (scaled 0..1 within each list), the newest the most; 0: off.
    freshness_boost: float = Field(0.0, ge=0.0)
    freshness_days: float = Field(14.0, gt=0.0)

    @model_validator(mode="after")
    def _depths_ordered(self) -> RerankSettings:
        if self.max_depth < self.depth:
            raise ValueError(f"max_depth {self.max_depth} is below depth {self.depth}")
        return self

    @property
    def active(self) -> bool:
        """Whether any re-ranking is on (neutral settings skip it entirely)."""
        return self.mmr_lambda < 1.0 or self.category_cap is not None or self.freshness_boost > 0.0


class RunsSettings(Strict):
    """Which run dates a stage accepts."""

    # A run date later than today (UTC) plus this many days is refused: a mistyped year
    # (2062 for 2026) would go live and make every real date look old to retention.
    # None turns the guard off (e.g. for generated data dated in the future).
    max_future_days: int | None = Field(1, ge=0)
    # `recjobs run` and `recjobs demo`: each stage in a child process (as each Airflow task
    # is its own process), so the command's peak memory is its largest stage's, not their sum.
    isolate_stages: bool = True


class AirflowSettings(Strict):
    """Where the DAG's heavy tasks run; read when the DAG file is parsed."""

    # Celery/Kubernetes queue for training tasks (candidates and the champion), e.g. a
    # bigger or GPU worker's; None: Airflow's default queue.
    train_queue: str | None = None
    # Queue for the mapped ranking shards of publish.
    score_queue: str | None = None
    # Automatic retries of each recs_nightly task, and the wait before each: a lost worker
    # or a passing error (an API timeout, a database restart) must not lose the night.
    # Airflow's [core] default_task_retries / default_task_retry_delay win where a deployment sets them.
    retries: int = Field(2, ge=0, le=20)
    retry_delay_seconds: float = Field(60, ge=0)


class Settings(Strict):
    home: Path = Path("~/.recjobs")
    database_url: str | None = None
    inbox_dir: Path | None = None
    # Libraries take seeds as unsigned 32-bit integers.
    seed: int = Field(42, ge=0, le=2**32 - 1)
    families: list[str] = list(DEFAULT_FAMILIES)
    # Train only on the last N days before the logical date; None means all history.
    train_window_days: int | None = Field(None, gt=0)
    ingest: IngestSettings = IngestSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    split: SplitSettings = SplitSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    gate: GateSettings = GateSettings()
    publish: PublishSettings = PublishSettings()
    models: ModelsSettings = ModelsSettings()
    airflow: AirflowSettings = AirflowSettings()
    runs: RunsSettings = RunsSettings()
    coldstart: ColdStartSettings = ColdStartSettings()
    rules: RulesSettings = RulesSettings()
    rerank: RerankSettings = RerankSettings()
    guard: GuardSettings = GuardSettings()
    item_segments: ItemSegmentsSettings = ItemSegmentsSettings()
    alerts: AlertsSettings = AlertsSettings()

    @field_validator("home", "inbox_dir", "database_url", mode="before")
    @classmethod
    def _not_empty(cls, value: object, info: ValidationInfo) -> object:
        # An empty path is the current directory, and an empty URL the default SQLite
        # file: either would put data somewhere nobody asked for.
        if isinstance(value, str | os.PathLike) and not str(value).strip():
            default = {"home": "~/.recjobs", "inbox_dir": "<home>/inbox",
                       "database_url": "SQLite under home"}[info.field_name]
            raise ValueError(f"empty {info.field_name}; unset it for the default ({default})")
        return value

    @field_validator("home", "inbox_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(os.path.expanduser(str(value))).absolute()

    @field_validator("database_url")
    @classmethod
    def _parseable_url(cls, value: str | None) -> str | None:
        problem = None if value is None else database_url_problem(value)
        if problem:
            raise ValueError(f"{mask_url(value)} {problem}")  # type: ignore[arg-type]
        return value

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: list[str]) -> list[str]:
        known_families(value)
        if not value:
            raise ValueError("at least one model family is needed")
        # Keep registry order so runs do not depend on how a user listed them.
        return [f for f in FAMILIES if f in value]

    # Derived locations: everything on disk hangs off ``home``.
    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        from sqlalchemy.engine import URL

        # Built, not formatted: a "?", "#" or "%" in home is part of the file's path.
        return URL.create("sqlite", database=str(self.home / "recjobs.db")).render_as_string(hide_password=False)

    @property
    def db_url_masked(self) -> str:
        """``db_url`` with any password shown as ``***``: the only form to print or log."""
        return mask_url(self.db_url)

    @property
    def inbox(self) -> Path:
        return self.inbox_dir or self.home / "inbox"

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def model_params(self, family: str) -> BaseModel:
        """``models.<family>``; the ranker's with its generators' parameters filled in from theirs.

        The ranker's ``label_split=auto`` follows ``split.protocol`` where that is set: its
        training labels are then drawn the way the holdout it is judged on is (on MovieLens
        100k global_time, labels after one cutoff scored NDCG@10 0.245 there against 0.196
        with per-user labels, and per-user labels 0.284 against 0.176 on per_user).
        """
        params = getattr(self.models, family)
        if family == "ranker":
            filled = {g: params.generator_params.get(g, getattr(self.models, g).model_dump())
                      for g in params.generators}
            update: dict[str, object] = {"generator_params": filled}
            if params.label_split == "auto" and self.split.protocol != "auto":
                update["label_split"] = self.split.protocol
            params = params.model_copy(update=update)
        return params


def mask_url(url: str) -> str:
    """A database URL with its password (in the userinfo or any ``*password`` query key) as ``***``.

    Never shows any part of a password, even of a malformed URL: one SQLAlchemy cannot
    parse is shown as ``<unparseable database URL>``.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return "<unparseable database URL>"
    if parsed.host and "@" in parsed.host:
        # An unencoded "@" in the password: SQLAlchemy ends the password at the first "@", and
        # the rest of it would be shown as the host. Everything before the last "@" is userinfo.
        parsed = parsed.set(password="***", host=parsed.host.rpartition("@")[2])
    secrets = {key: "***" for key in parsed.query if "password" in key.lower()}
    if secrets:
        parsed = parsed.update_query_dict(secrets)
    return parsed.render_as_string(hide_password=True)


def database_url_problem(url: str) -> str | None:
    """What is wrong with a database URL, in words that never show its password; None if nothing.

    Checks what can be checked without connecting: that SQLAlchemy parses it, that no
    unencoded ``@`` splits the password, the port's range, and that the dialect and
    driver name one SQLAlchemy knows (whether the driver is installed is checked when an
    engine is made).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return ("is not a database URL SQLAlchemy can parse: expected dialect[+driver]://user:password@host:port/"
                "database, with special characters in the password percent-encoded (@ as %40)")
    if parsed.host and "@" in parsed.host:
        return "has an unencoded '@' in its user name or password: write it as %40"
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return f"has port {parsed.port}, not in 1..65535"
    # "postgres" is an alias make_engine accepts (recjobs.db.engine.normalize_url).
    probe = parsed.set(drivername="postgresql") if parsed.drivername == "postgres" else parsed
    try:
        probe.get_dialect()
    except NoSuchModuleError:
        return (f"names an unknown database dialect or driver {parsed.drivername!r} "
                "(e.g. postgresql+psycopg, sqlite)")
    return None
