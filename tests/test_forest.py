"""The ranker's trees compiled to native code (lleaves) score as LightGBM does."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from recjobs.models.forest import ForestPredictor
from recjobs.models.stacking import candidate_features, generate
from tests.test_ranker import planted, ranker

GENERATORS = {"popularity": 20, "itemknn": 20}


@pytest.fixture(scope="module")
def trained():
    data, feats, _ = planted()
    model = ranker(generators=GENERATORS, chunk_users=50).fit(data, feats)
    gens, base, _ = model._parts()
    rows = np.arange(data.n_users)
    x = candidate_features(base, generate(gens, model._ks(), rows, base.history), rows)
    return data, model, x


def test_a_compiled_forest_scores_the_candidates_as_lightgbm_does(trained, caplog):
    _, model, x = trained
    lightgbm = ForestPredictor(model.booster, threads=2, compile_after=None)
    compiled = ForestPredictor(model.booster, threads=2, compile_after=0)
    with caplog.at_level(logging.INFO, logger="recjobs.models.forest"):
        got = compiled.predict(x)
    assert compiled.compiled is not None and "compiled to native code" in caplog.text
    want = lightgbm.predict(x)
    assert lightgbm.compiled is None and got.dtype == want.dtype == np.float32
    # The same trees summed in another order: float64 sums within 1e-12, then the same float32.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert (np.argsort(-got, kind="stable") == np.argsort(-want, kind="stable")).mean() > 0.999


def test_it_compiles_only_after_enough_rows_and_then_keeps_the_compiled_code(trained):
    _, model, x = trained
    forest = ForestPredictor(model.booster, threads=1, compile_after=len(x) + 1)
    forest.predict(x)
    assert forest.compiled is None  # len(x) rows so far: fewer than the bound
    forest.predict(x[:10])
    assert forest.compiled is None and forest.rows == len(x) + 10
    forest.predict(x[:10])
    first = forest.compiled
    assert first is not None
    forest.predict(x)
    assert forest.compiled is first


def test_a_ranker_serving_many_rows_lists_the_same_items_compiled(trained, monkeypatch):
    data, model, _ = trained
    rows = np.arange(data.n_users)
    want = model.recommend(rows, 10, exclude=data.matrix)
    monkeypatch.setattr("recjobs.models.forest.COMPILE_AFTER_ROWS", 0)
    model._forest = None
    try:
        got = model.recommend(rows, 10, exclude=data.matrix)
        assert model._forest is not None and model._forest.compiled is not None
    finally:
        model._forest = None
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-6)
