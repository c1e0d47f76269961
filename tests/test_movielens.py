"""MovieLens 100k, read from ../shared/data/ml-100k (never copied); skipped when absent."""

from __future__ import annotations

import pytest

from recjobs.data import Interactions, Lake, load_side_features, temporal_split
from recjobs.evaluation import evaluate_model
from recjobs.ingest import import_movielens
from recjobs.models import get_family
from recjobs.runs import cutoff_of, parse_date
from tests.conftest import ML100K

pytestmark = pytest.mark.skipif(not (ML100K / "u.data").exists(), reason=f"MovieLens 100k not found at {ML100K}")


def test_movielens_import_and_als_beats_popularity_on_temporal_holdout(settings, engine):
    reports = import_movielens(ML100K, settings, engine)
    assert reports[0].rows_valid == 100_000 and reports[0].rows_quarantined == 0
    frame = Lake.of(settings).read_ratings(cutoff_of(parse_date("1998-04-22")))
    assert len(frame) == 100_000 and frame["user_id"].nunique() == 943 and frame["item_id"].nunique() == 1682
    train, holdout = temporal_split(frame, settings.split)
    data = Interactions.from_frame(train)
    features = load_side_features(Lake.of(settings), data)
    assert features.item.shape == (data.n_items, 19) and features.user.shape[0] == data.n_users
    scores = {}
    for family in ("popularity", "als"):
        model = get_family(family)(settings.model_params(family), seed=settings.seed).fit(data, features)
        scores[family] = evaluate_model(model, data, holdout).ndcg
    assert scores["als"] >= 0.17 > scores["popularity"], scores


def test_ease_with_recency_reaches_the_quality_target_on_the_per_user_protocol(settings, engine):
    """Issue 9's target, NDCG@10 >= 0.25 on benchmark_ml100k's per-user protocol, with the shipped defaults."""
    import_movielens(ML100K, settings, engine)
    frame = Lake.of(settings).read_ratings(cutoff_of(parse_date("1998-04-22")))
    per_user = settings.split.model_copy(update={"protocol": "per_user"})
    train, holdout = temporal_split(frame, per_user)
    data = Interactions.from_frame(train)
    model = get_family("ease")(settings.model_params("ease"), seed=settings.seed).fit(data)
    assert evaluate_model(model, data, holdout).ndcg >= 0.25
