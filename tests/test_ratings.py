"""Explicit ratings: the bias baseline on known inputs, holdout ratings, the ledger and the dashboard."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import sqlalchemy as sa

from recjobs import columns as C
from recjobs.data.interactions import Holdout, Interactions
from recjobs.models.ratings import BiasBaseline, BiasedMF, explicit, rmse_mae


def test_bias_baseline_recovers_user_and_item_offsets():
    # rating = 3 + user offset + item offset, every pair rated: biases are exactly those offsets
    # (up to the regularisation's shrinkage, tiny with many ratings per user and item).
    users, items = np.meshgrid(np.arange(200), np.arange(50), indexing="ij")
    bu, bi = np.linspace(-1, 1, 200), np.linspace(-0.5, 0.5, 50)
    r = 3.0 + bu[users] + bi[items]
    m = sp.csr_matrix((r.ravel(), (users.ravel(), items.ravel())), shape=(200, 50))
    base = BiasBaseline.fit(m, reg_user=0.1, reg_item=0.1, passes=30)
    pred = base.predict(users.ravel(), items.ravel())
    assert rmse_mae(pred, r.ravel())[0] < 0.01
    # An unknown user or item adds no bias; predictions stay within the observed range.
    assert base.predict(np.array([-1]), np.array([999]))[0] == pytest.approx(np.clip(base.mu, base.low, base.high))
    assert rmse_mae(np.array([1.0, 3.0]), np.array([2.0, 1.0])) == pytest.approx((np.sqrt(2.5), 1.5))


def test_biased_mf_learns_the_taste_no_bias_explains_and_predicts_unseen_pairs():
    # rating = 3 + (user's taste) x (item's kind): every bias is ~0, a rank-one residual is
    # everything. Half the pairs train it; the other half, never seen, are predicted.
    rng = np.random.default_rng(1)
    taste, kind = rng.choice([-1.0, 1.0], 300), rng.choice([-1.0, 1.0], 60)
    users, items = np.meshgrid(np.arange(300), np.arange(60), indexing="ij")
    users, items = users.ravel(), items.ravel()
    r = 3.0 + taste[users] * kind[items]
    seen = rng.random(len(r)) < 0.5
    m = sp.csr_matrix((r[seen], (users[seen], items[seen])), shape=(300, 60))
    base = BiasBaseline.fit(m)
    mf = BiasedMF.fit(m, base, factors=4, seed=0)
    unseen = ~seen
    with_mf = np.clip(base.predict(users[unseen], items[unseen]) + mf.predict(users[unseen], items[unseen]), 2, 4)
    assert rmse_mae(base.predict(users[unseen], items[unseen]), r[unseen])[0] > 0.9
    assert rmse_mae(with_mf, r[unseen])[0] < 0.2
    # Unknown rows or columns add nothing; the state round-trips.
    assert mf.predict(np.array([-1, 0]), np.array([0, 999])).tolist() == [0.0, 0.0]
    again = BiasedMF.restore(mf.state("mf__"), "mf__")
    np.testing.assert_array_equal(again.predict(users, items), mf.predict(users, items))


def test_explicit_means_more_than_two_rating_values():
    assert explicit(np.array([1.0, 2.0, 5.0]))
    assert not explicit(np.array([1.0, 1.0, 1.0]))
    assert not explicit(np.array([0.0, 1.0]))


def test_holdout_keeps_each_pairs_latest_rating_and_saves_it(tmp_path):
    base = pd.Timestamp("2025-01-01", tz="UTC")
    train = Interactions.from_frame(pd.DataFrame(
        [("u1", "a", 4.0, base), ("u2", "b", 2.0, base)], columns=list(C.INTERACTION_COLUMNS)))
    held = pd.DataFrame([("u1", "b", 1.0, base + pd.Timedelta(days=1)), ("u1", "b", 5.0, base + pd.Timedelta(days=2)),
                         ("u2", "a", 3.0, base + pd.Timedelta(days=1)), ("zz", "a", 3.0, base)],
                        columns=list(C.INTERACTION_COLUMNS))
    h = Holdout.from_frame(held, train)
    got = sorted(zip(train.user_ids[h.user_rows], train.item_ids[h.item_cols], h.ratings, strict=True))
    assert got == [("u1", "b", 5.0), ("u2", "a", 3.0)]  # the latest of u1's two, the unknown user dropped
    loaded = Holdout.load(h.save(tmp_path / "holdout"))
    np.testing.assert_array_equal(loaded.ratings, h.ratings)


def test_rating_errors_reach_model_runs_and_the_dashboard(settings):
    from recjobs.dashboard import metrics_by_date
    from recjobs.db import ledger
    from recjobs.pipeline import engine_for

    engine = engine_for(settings)
    day = dt.date(2026, 1, 31)
    ledger.record_evaluated(engine, day, "ranker", {"model_version": "v", "k": 10, "ndcg_at_k": 0.3,
                                                    "rmse": 0.91, "mae": 0.71, "baseline_rmse": 0.97,
                                                    "baseline_mae": 0.77})
    frame = metrics_by_date(engine)
    row = frame[frame["family"] == "ranker"].iloc[0]
    assert (row["rmse"], row["mae"], row["baseline_rmse"]) == (0.91, 0.71, 0.97)
    engine.dispose()


def test_the_baseline_errors_are_measured_once_per_split_and_never_reused_across_splits(settings, small_inbox):
    import json

    from recjobs.pipeline import engine_for, run_pipeline
    from recjobs.pipeline.candidates import evaluate_candidate
    from recjobs.runs import RunFolder

    fast = settings.model_copy(update={"families": ["popularity", "itemknn"]})
    run_pipeline(fast, "2026-01-31")
    folder = RunFolder.of(fast, "2026-01-31")
    cached = json.loads(folder.baseline_errors.read_text())
    assert cached["fingerprint"] == folder.snapshot()["fingerprint"] and cached["pairs"] > 0
    engine = engine_for(fast)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT family, baseline_rmse, baseline_mae FROM model_runs "
                                    "WHERE stage = 'candidate'")).all()
    assert {r.family for r in rows} == {"popularity", "itemknn"}
    assert {(r.baseline_rmse, r.baseline_mae) for r in rows} == {(cached["rmse"], cached["mae"])}
    # A file from another split of the date (another fingerprint) is measured again, not reused.
    folder.baseline_errors.write_text(json.dumps({**cached, "fingerprint": "other", "rmse": 9.0}))
    evaluate_candidate(fast, engine, "2026-01-31", "itemknn")
    assert json.loads(folder.baseline_errors.read_text()) == cached
    engine.dispose()
