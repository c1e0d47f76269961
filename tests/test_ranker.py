"""The two-stage ranker: a planted feature is learned, labels never precede features, the holdout is unread."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recjobs import columns as C
from recjobs.data import Interactions, SideFeatures
from recjobs.models import Recommender, get_family
from recjobs.models.stacking import (
    FeatureBase,
    candidate_features,
    feature_names,
    generate,
    label_cutoff,
)
from recjobs.settings import Settings

BASE = pd.Timestamp("2025-01-01", tz="UTC")


def ranker(**extra) -> Recommender:  # noqa: ANN003
    settings = Settings()
    params = settings.model_params("ranker").model_copy(update={
        "generators": {"popularity": 40}, "min_child_samples": 5, "trees": 60, "learning_rate": 0.1,
        "validation_fraction": 0.0,
        **extra})
    params = type(params).model_validate(params.model_dump())
    return get_family("ranker")(settings.model_params("ranker").model_validate(params.model_dump()), seed=3)


def planted() -> tuple[Interactions, SideFeatures, np.ndarray]:
    """Items 0-19 are "hot" (a side feature), 20-39 are not; cold items are the more popular.

    Every user first sees some random (or cold) items, then hot ones: what a user does
    *next* is decided by the planted feature alone, which popularity (the only generator)
    cannot see.
    """
    rng = np.random.default_rng(0)
    rows = []
    for u in range(80):
        early = rng.choice(40, 8, replace=False)
        late = rng.choice(np.setdiff1d(np.arange(20), early), 3, replace=False)
        for k, i in enumerate([*early, *late]):
            rows.append((f"u{u:02d}", f"i{i:02d}", 4.0, BASE + pd.Timedelta(hours=k)))
    for u in range(80, 160):  # popularity favours the cold items
        seq = [*rng.choice(np.arange(20, 40), 6, replace=False), rng.integers(20)]
        for k, i in enumerate(seq):
            rows.append((f"u{u:03d}", f"i{i:02d}", 4.0, BASE + pd.Timedelta(hours=k)))
    data = Interactions.from_frame(pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS)))
    hot = np.asarray([int(i[1:]) < 20 for i in data.item_ids])
    item = sp.csr_matrix(np.column_stack([hot, ~hot]).astype(np.float32))
    return data, SideFeatures(None, item, np.asarray([], dtype=object), np.asarray(["hot=1", "hot=0"], object)), hot


def test_the_ranker_learns_a_planted_feature_that_decides_the_label():
    data, feats, hot = planted()
    model = ranker().fit(data, feats)
    users = np.arange(80)
    top, _ = model.recommend(users, 3, exclude=data.matrix)
    assert hot[top[top >= 0]].mean() > 0.9
    # Its only generator, alone, ranks by popularity: mostly the cold items.
    pop = get_family("popularity")(Settings().model_params("popularity")).fit(data, feats)
    ptop, _ = pop.recommend(users, 3, exclude=data.matrix)
    assert hot[ptop[ptop >= 0]].mean() < 0.5
    assert model.info["label_protocol"] == "per_user" and model.info["candidate_recall"] == 1.0
    # The planted column is among the features it splits on (others correlate with it: a
    # user's latest items are hot, so "similar to the latest items" carries it too).
    gains = dict(zip(model.booster.feature_name(), model.booster.feature_importance("gain"), strict=True))
    assert gains["item_hot_1"] + gains["item_hot_0"] > 0


@pytest.mark.parametrize("protocol", ["per_user", "global_time"])
def test_no_label_precedes_its_features_cutoff(protocol):
    data, feats, _ = planted()
    split = label_cutoff(data, protocol, 0.25, 1)
    assert split.protocol == protocol
    inner, labels = split.inner, split.labels.tocoo()
    assert inner.nnz + labels.nnz == data.nnz and labels.nnz > 0
    # Every pair before the user's cutoff is in the features' part, every label at or after it.
    seconds = {(u, i): t for u, i, t in zip(np.repeat(np.arange(data.n_users), np.diff(data.matrix.indptr)),
                                            data.matrix.indices, data.pair_seconds, strict=True)}
    label_times = np.asarray([seconds[(u, i)] for u, i in zip(labels.row, labels.col, strict=True)])
    assert (label_times >= split.cutoff[labels.row]).all()
    inner_rows = np.repeat(np.arange(data.n_users), np.diff(inner.matrix.indptr))
    assert (inner.pair_seconds <= split.cutoff[inner_rows]).all()
    if protocol == "global_time":
        assert (inner.pair_seconds < split.cutoff[0]).all() and len(np.unique(split.cutoff)) == 1
    # No label is a pair the features' part holds.
    assert inner.matrix.multiply(split.labels).nnz == 0
    # Features computed from the inner part know nothing after the cutoff.
    base = FeatureBase(inner, feats, 0)
    assert base.end <= split.cutoff.max()
    pop = get_family("popularity")(Settings().model_params("popularity")).fit(inner, feats)
    users = np.unique(labels.row)
    cands = generate([pop], [40], users, inner.matrix)
    x = candidate_features(base, cands, users)
    assert x.shape == (len(cands.item), len(feature_names(["popularity"], base, feats.item_names,
                                                          feats.user_names)))
    # Candidates never include what the user had seen before the cutoff.
    assert not np.asarray(inner.matrix[users[cands.user], cands.item]).ravel().any()


def test_the_ranker_never_reads_the_holdout(tmp_path, small_inbox):
    """Training a ranker candidate with the date's holdout deleted gives the same model as with it."""
    import shutil

    from recjobs.ingest import ingest_inbox
    from recjobs.pipeline import engine_for, prepare, train_candidate
    from recjobs.runs import RunFolder
    from recjobs.settings import load_settings

    overrides = {"home": str(tmp_path / "home"), "families": ["ranker"], "split": {"protocol": "per_user"},
                 "models": {"ranker": {"generators": {"popularity": 30, "itemknn": 30}, "trees": 20,
                                       "min_child_samples": 5}}}
    settings = load_settings(overrides, environ={})
    engine = engine_for(settings)
    ingest_inbox(settings, engine)
    day = "2026-01-31"
    prepare(settings, day)
    folder = RunFolder.of(settings, day)
    with_holdout = Recommender.load(train_candidate(settings, engine, day, "ranker"))
    shutil.rmtree(folder.matrix("holdout"))
    without = Recommender.load(train_candidate(settings, engine, day, "ranker"))
    rows = np.arange(len(without.user_ids))
    np.testing.assert_array_equal(with_holdout.score(rows), without.score(rows))


def test_the_rating_model_beats_the_bias_baseline_where_taste_is_an_interaction():
    """A rating is 4-4.5 when a user's group matches the item's kind, else 1-1.5: no bias explains that.

    Users of group A love hot items and dislike the others, group B the other way round;
    both groups rate as many of each, so every user and item bias is about 0 and the
    baseline predicts the mean (~3), while the ranker's rating model, with the side
    features, learns the interaction. Measured on later pairs, as the pipeline does.
    """
    from recjobs.data.interactions import Holdout
    from recjobs.evaluation.ratings import rating_errors

    rng = np.random.default_rng(5)
    rows, later = [], []
    for u in range(300):
        group_a = u % 2 == 0
        items = rng.choice(40, 20, replace=False)
        for k, i in enumerate(items):
            rating = (4.5 if (i < 20) == group_a else 1.5) - 0.5 * (k % 2)  # four values: explicit
            (later if k >= 17 else rows).append((f"u{u:03d}", f"i{i:02d}", rating, BASE + pd.Timedelta(hours=k)))
    columns = list(C.INTERACTION_COLUMNS)
    data = Interactions.from_frame(pd.DataFrame(rows, columns=columns))
    hot = np.asarray([int(i[1:]) < 20 for i in data.item_ids])
    item = sp.csr_matrix(np.column_stack([hot, ~hot]).astype(np.float32))
    a = np.asarray([int(u[1:]) % 2 == 0 for u in data.user_ids])
    user = sp.csr_matrix(np.column_stack([a, ~a]).astype(np.float32))
    feats = SideFeatures(user, item, np.asarray(["group=a", "group=b"], object), np.asarray(["hot=1", "hot=0"], object))
    model = ranker(generators={"popularity": 10, "itemknn": 10}, rating_trees=100).fit(data, feats)
    assert model.predicts_ratings()
    holdout = Holdout.from_frame(pd.DataFrame(later, columns=columns), data)
    assert holdout.ratings is not None and len(holdout.ratings) == len(holdout.user_rows) == 900
    errors = rating_errors(model, data, holdout)
    assert errors is not None and errors.pairs == 900
    assert errors.baseline_rmse > 1.2  # the mean is 1.25-1.75 away from every rating
    assert errors.rmse < 0.75 * errors.baseline_rmse, errors
    # Saved and loaded, it predicts the same ratings.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        loaded = Recommender.load(model.save(f"{tmp}/artifact"))
    np.testing.assert_array_equal(loaded.predict_ratings(holdout.user_rows, holdout.item_cols),
                                  model.predict_ratings(holdout.user_rows, holdout.item_cols))
    # Implicit data (one rating value) has no rating model and no rating errors.
    flat = Interactions.from_frame(pd.DataFrame([(u, i, 1.0, t) for u, i, _, t in rows], columns=columns))
    assert not ranker(generators={"popularity": 10}).fit(flat, feats).predicts_ratings()


@pytest.mark.parametrize("generators, message", [
    ({"ranker": 10}, "unknown generator families ['ranker']"),
    ({"nope'; DROP TABLE model_runs;--": 10}, "unknown generator families"),
    ({"ease": 0}, "need a positive number of candidates"),
    ({}, "at least one generator"),
])
def test_bad_generators_are_refused_with_one_line(generators, message):
    from recjobs.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="generator") as info:
        load_settings({"models": {"ranker": {"generators": generators}}}, environ={})
    assert message.split("[")[0] in str(info.value)


def test_the_rankers_generators_carry_their_own_settings():
    from recjobs.settings import load_settings

    s = load_settings({"models": {"ease": {"l2": 123.0}, "ranker": {"generators": {"ease": 5}}}}, environ={})
    params = s.model_params("ranker")
    assert params.generator_params["ease"]["l2"] == 123.0 and set(params.generator_params) == {"ease"}


def test_negative_sampling_keeps_every_positive_and_at_most_n_negatives_per_user():
    from recjobs.models.ranker import sample_negatives

    sizes = np.array([5, 1, 8, 3])
    y = np.array([1, 0, 0, 0, 0] + [1] + [0, 1, 0, 0, 0, 0, 1, 0] + [0, 0, 0], np.float32)
    keep = sample_negatives(y, sizes, 2, np.random.default_rng(0))
    group = np.repeat(np.arange(4), sizes)
    assert keep[y > 0].all()
    negatives_kept = np.bincount(group[keep & (y == 0)], minlength=4)
    assert list(negatives_kept) == [2, 0, 2, 2]
    again = sample_negatives(y, sizes, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(keep, again)  # seeded: reruns train on the same rows


def test_label_split_auto_follows_the_split_protocol_where_it_is_set():
    """Labels are drawn the way the holdout the ranker is judged on is; an explicit choice stays."""
    from recjobs.settings import load_settings

    assert Settings().model_params("ranker").label_split == "auto"
    assert load_settings({"split": {"protocol": "global_time"}}).model_params("ranker").label_split == "global_time"
    assert load_settings({"split": {"protocol": "per_user"}}).model_params("ranker").label_split == "per_user"
    chosen = load_settings({"split": {"protocol": "global_time"}, "models": {"ranker": {"label_split": "per_user"}}})
    assert chosen.model_params("ranker").label_split == "per_user"


def test_an_artifact_from_another_feature_set_is_refused_with_one_line(tmp_path):
    """A ranker saved before a feature change cannot be scored with today's features: load says so."""
    import lightgbm

    from recjobs.errors import ArtifactError

    data, feats, _ = planted()
    model = ranker(trees=5).fit(data, feats)
    rng = np.random.default_rng(0)
    model.booster = lightgbm.train({"objective": "regression", "verbosity": -1, "min_data_in_leaf": 1},
                                   lightgbm.Dataset(rng.random((50, 3)), rng.random(50)), 2)
    path = model.save(tmp_path / "old")
    with pytest.raises(ArtifactError, match=r"ranker artifact has 3 features.*retrain it"):
        Recommender.load(path)


def test_a_ranker_champion_publishes_its_predicted_ratings(tmp_path, small_inbox):
    import sqlalchemy as sa

    from recjobs.pipeline import engine_for, run_pipeline
    from recjobs.pipeline.publish import final_model
    from recjobs.settings import load_settings

    settings = load_settings({"home": str(tmp_path / "home"), "families": ["ranker"],
                              "models": {"ranker": {"generators": {"popularity": 10, "itemknn": 10},
                                                    "rating_trees": 50}},
                              "publish": {"top_n": 5}}, environ={})
    day = pd.Timestamp("2026-01-31").date()
    run_pipeline(settings, day)
    engine = engine_for(settings)
    with engine.connect() as conn:
        rows = pd.read_sql(sa.text("SELECT user_id, item_id, rank, predicted_rating FROM recommendations"), conn)
        history = pd.read_sql(sa.text("SELECT predicted_rating FROM recommendations_history"), conn)
    engine.dispose()
    assert len(rows) == 120 * 5 and rows["predicted_rating"].notna().all()
    model, _ = final_model(settings, day)
    assert model.predicts_ratings()
    users = np.searchsorted(model.user_ids, rows["user_id"].to_numpy(object))
    items = np.searchsorted(model.item_ids, rows["item_id"].to_numpy(object))
    np.testing.assert_allclose(rows["predicted_rating"], model.predict_ratings(users, items), rtol=1e-6)
    np.testing.assert_allclose(np.sort(history["predicted_rating"]), np.sort(rows["predicted_rating"]), rtol=1e-6)
