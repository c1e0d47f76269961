"""A family built on others (the ranker) reuses what the night already fitted, with the same result."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recjobs.models import Recommender, get_family
from recjobs.models.base import Peers
from recjobs.models.registry import BUILT_ON_PEERS, FAMILIES
from recjobs.models.stacking import given_split, label_cutoff
from recjobs.settings import Settings
from tests.test_ranker import planted, ranker

GENERATORS = {"popularity": 20, "itemknn": 20}


def fitted_peers(model: Recommender, data, feats) -> dict[str, Recommender]:  # noqa: ANN001
    return {g: get_family(g)(params, seed=model.seed).fit(data, feats) for g, params in model.peer_params().items()}


def test_only_the_families_built_on_peers_ask_for_them():
    settings = Settings()
    asking = {f for f in FAMILIES if get_family(f)(settings.model_params(f)).peer_params()}
    assert asking == set(BUILT_ON_PEERS) == {"ranker"}


def test_a_ranker_given_its_generators_serves_with_them_and_ranks_as_if_it_had_fitted_them():
    data, feats, _ = planted()
    alone = ranker(generators=GENERATORS).fit(data, feats)
    with_peers = ranker(generators=GENERATORS)
    peers = fitted_peers(with_peers, data, feats)
    with_peers.fit(data, feats, Peers(fitted=peers))
    assert [g is peers[name] for name, g in zip(GENERATORS, with_peers.generators, strict=True)] == [True, True]
    rows = np.arange(data.n_users)
    np.testing.assert_array_equal(alone.score(rows), with_peers.score(rows))


def test_given_labels_are_the_later_pairs_the_user_had_not_seen_and_postdate_every_feature():
    data, _, _ = planted()
    split = label_cutoff(data, "per_user", 0.25, 1)
    before = split.inner
    # One label repeats a pair seen before the cutoff: it is not a label (it cannot be a candidate).
    u = 0
    seen_item = int(before.matrix[u].indices[0])
    after = (split.labels + sp.csr_matrix(([1.0], ([u], [seen_item])), shape=split.labels.shape)).tocsr()
    given = given_split(before, after)
    assert given.protocol == "given" and given.inner is before
    np.testing.assert_array_equal(given.labels.toarray(), split.labels.toarray())
    rows = np.repeat(np.arange(before.n_users), np.diff(before.matrix.indptr))
    assert (before.pair_seconds < given.cutoff[rows]).all()


def test_a_ranker_given_labels_at_its_own_cutoff_learns_the_same_model_without_fitting_generators():
    """Given the pairs after a per-user cutoff and generators fitted before it, the ranker
    learns exactly what it learns when it cuts there itself, and the planted feature."""
    data, feats, hot = planted()
    own = ranker(label_split="per_user", label_fraction=0.25).fit(data, feats)
    split = label_cutoff(data, "per_user", 0.25, 1)
    given = ranker(label_split="per_user", label_fraction=0.25)
    before_fitted = fitted_peers(given, split.inner, feats)
    given.fit(data, feats, Peers(before=split.inner, after=split.labels, before_fitted=before_fitted,
                                 before_features=feats))
    assert given.info["label_protocol"] == "given" and own.info["label_protocol"] == "per_user"
    rows = np.arange(data.n_users)
    np.testing.assert_array_equal(own.score(rows), given.score(rows))
    top, _ = given.recommend(np.arange(80), 3, exclude=data.matrix)
    assert hot[top[top >= 0]].mean() > 0.9


def test_peers_refuse_labels_without_their_data_or_shaped_otherwise():
    data, _, _ = planted()
    with pytest.raises(ValueError, match="before and after come together"):
        Peers(after=data.matrix)
    with pytest.raises(ValueError, match="not shaped like before"):
        Peers(before=data, after=sp.csr_matrix((2, 2)))


def test_the_night_reuses_its_candidates_for_the_ranker_and_its_final_model_learns_from_the_holdout(
        tmp_path, small_inbox, caplog):
    import logging

    from recjobs.ingest import ingest_inbox
    from recjobs.pipeline import (
        engine_for,
        evaluate_candidate,
        prepare,
        promote,
        train_candidate,
        train_final,
    )
    from recjobs.pipeline.candidates import night_candidates
    from recjobs.settings import load_settings

    overrides = {"home": str(tmp_path / "home"), "families": ["popularity", "itemknn", "ranker"],
                 "split": {"protocol": "per_user"},
                 "models": {"ranker": {"generators": {"popularity": 10, "itemknn": 10}, "trees": 20,
                                       "min_child_samples": 5, "ratings": "off"}}}
    settings = load_settings(overrides, environ={})
    engine = engine_for(settings)
    ingest_inbox(settings, engine)
    day = pd.Timestamp("2026-01-31").date()
    prepare(settings, day)
    knn = Recommender.load(train_candidate(settings, engine, day, "itemknn"))
    with caplog.at_level(logging.INFO, logger="recjobs"):
        model = Recommender.load(train_candidate(settings, engine, day, "ranker"))
    # popularity was not trained tonight: the ranker fitted it; itemknn it reused.
    assert "reusing the night's itemknn candidate" in caplog.text
    assert "reusing the night's popularity candidate" not in caplog.text
    rows = np.arange(len(model.user_ids))
    np.testing.assert_array_equal(model.generators[1].score(rows), knn.score(rows))
    # A generator with other parameters than the night's candidate is not that candidate.
    other = load_settings({**overrides, "models": {"ranker": {
        **overrides["models"]["ranker"], "generator_params": {"itemknn": {"neighbours": 7}}}}}, environ={})
    assert set(night_candidates(settings, day, model)) == {"itemknn"}
    assert len(night_candidates(other, day, get_family("ranker")(other.model_params("ranker")))) == 0
    # Made champion, its final model learns from the holdout as labels after the training part.
    evaluate_candidate(settings, engine, day, "ranker")
    promote(load_settings({**overrides, "families": ["ranker"]}, environ={}), engine, day)
    final = Recommender.load(train_final(settings, engine, day))
    engine.dispose()
    assert final.family == "ranker" and final.info["label_protocol"] == "given"
    assert final.info["train_users"] > 0


def test_auto_ratings_leave_the_rating_model_off_above_its_size_and_on_forces_it(caplog):
    import logging

    data, feats, _ = planted()
    ratings = data.matrix.copy()
    ratings.data = 1.0 + (np.arange(ratings.nnz) % 5).astype(np.float32)  # explicit: 1-5 stars
    rated = type(data)(data.user_ids, data.item_ids, ratings, data.item_last_seen, data.pair_seconds)
    small = {"rating_trees": 5, "rating_folds": [0.2]}
    assert ranker(**small).fit(rated, feats).predicts_ratings()
    with caplog.at_level(logging.INFO, logger="recjobs"):
        capped = ranker(**small, rating_auto_max_pairs=rated.nnz - 1).fit(rated, feats)
    assert not capped.predicts_ratings() and "rating_auto_max_pairs" in caplog.text
    assert ranker(**small, rating_auto_max_pairs=rated.nnz - 1, ratings="on").fit(rated, feats).predicts_ratings()


def test_the_rankers_lists_are_the_top_of_its_scores_with_the_exclusions_given():
    """Ranking among the candidates only gives the lists of ranking its whole score block."""
    from recjobs.models.topk import top_k_of_scores

    data, feats, _ = planted()
    model = ranker(generators=GENERATORS, chunk_users=50).fit(data, feats)
    rows = np.arange(data.n_users)
    extra = sp.random(data.n_users, data.n_items, density=0.2, random_state=1, format="csr")
    for exclude in (data.matrix, (data.matrix + extra).tocsr()):
        for n in (1, 5, 200):
            top, best = model.recommend(rows, n, exclude=exclude)
            want_top, want_best = top_k_of_scores(model.score(rows), n, exclude)
            np.testing.assert_array_equal(top, want_top)
            np.testing.assert_array_equal(best, want_best)
