"""Trainers: the wall-clock budget, progress lines, and reproducibility of the default settings."""

from __future__ import annotations

import json
import logging
import re
import time

import numpy as np
import pytest

from recjobs import columns as C
from recjobs.data import Interactions, SideFeatures, align_features
from recjobs.models import Recommender, get_family
from recjobs.progress import EpochProgress
from recjobs.settings import Settings

SMALL = {
    "als": {"factors": 8, "iterations": 6},
    "lightfm": {"no_components": 8, "epochs": 6},
    "tfrs": {"embedding_dim": 8, "max_epochs": 6, "batch_size": 256, "patience": 10},
}


@pytest.fixture(scope="module")
def data(small_data) -> tuple[Interactions, SideFeatures]:  # noqa: ANN001
    """The generated sample (500 users, 300 items) with its genre features."""
    inter = Interactions.from_frame(small_data["ratings"])
    feats = small_data["item_features"].assign(**{C.WEIGHT: 1.0})
    item, names = align_features(feats, C.ITEM, inter.item_ids)
    return inter, SideFeatures(None, item, np.asarray([], dtype=object), names)


def make(family: str, **extra: object) -> Recommender:
    params = Settings().model_params(family).model_copy(update={**SMALL[family], **extra})
    return get_family(family)(type(params).model_validate(params.model_dump()), seed=3)


@pytest.mark.parametrize("family", ["lightfm", "tfrs", "als"])
def test_a_spent_budget_stops_after_exactly_one_epoch(family, data, tmp_path):
    inter, feats = data
    model = make(family, max_seconds=1e-6).fit(inter, feats)
    assert model.info["epochs_run"] == 1
    assert model.info["stopped_by_budget"] is True
    # The record travels with the artifact.
    meta = json.loads((model.save(tmp_path / "m") / "meta.json").read_text())
    assert meta["info"]["epochs_run"] == 1 and meta["info"]["stopped_by_budget"] is True


@pytest.mark.parametrize("family", ["lightfm", "tfrs", "als"])
def test_without_a_budget_every_epoch_runs(family, data):
    inter, feats = data
    model = make(family, max_seconds=None).fit(inter, feats)
    planned = SMALL[family].get("epochs") or SMALL[family].get("max_epochs") or SMALL[family]["iterations"]
    assert model.info["epochs_run"] == planned == model.info["epochs_planned"]
    assert model.info["stopped_by_budget"] is False


@pytest.mark.parametrize("family", ["lightfm", "tfrs", "als"])
def test_every_epoch_logs_a_progress_line(family, data, caplog):
    inter, feats = data
    with caplog.at_level(logging.INFO, logger=f"recjobs.models.{family}"):
        make(family, max_seconds=None).fit(inter, feats)
    lines = [r.getMessage() for r in caplog.records if r.name == f"recjobs.models.{family}"]
    done = [line for line in lines if re.search(rf"^{family} epoch \d+/\d+ done", line)]
    assert len(done) == (SMALL[family].get("epochs") or SMALL[family].get("max_epochs")
                         or SMALL[family]["iterations"]), lines
    for line in done:
        assert re.search(r"[\d,]+ examples/s", line) and "elapsed" in line and "ETA" in line, line
    if family == "tfrs":
        assert all("validation recall at 20" in line for line in done)


def test_a_long_epoch_gets_heartbeat_lines(caplog):
    # A library loop that cannot report (LightFM's) is covered by the heartbeat thread.
    log = logging.getLogger("recjobs.test_trainers")
    with caplog.at_level(logging.INFO, logger=log.name), EpochProgress(log, "x", 3, 1000, every=0.2) as p:
        p.start_epoch(1)
        p.advance(400)
        time.sleep(1.0)
        assert not p.end_epoch()
    beats = [r.getMessage() for r in caplog.records if "running" in r.getMessage()]
    assert beats and "epoch 1/3" in beats[0] and "examples/s" in beats[0] and "ETA" in beats[0]


class _Clock:
    """A clock the test moves by hand, so the budget's decisions do not depend on machine speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("epoch_seconds, epochs_run", [([34.0, 34.0, 34.0], 1), ([25.0, 25.0, 25.0], 2),
                                                       ([70.0], 1), ([10.0, 10.0, 10.0], 3)])
def test_budget_starts_no_epoch_that_would_end_past_it(epoch_seconds, epochs_run, caplog):
    # max_seconds 60: after 34 s another 34 s epoch would end at 68 s, so training stops at
    # one; 25 s epochs fit two (a third would end at 75 s); a first epoch always runs.
    log = logging.getLogger("recjobs.test_trainers")
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger=log.name), EpochProgress(log, "x", 3, 100, max_seconds=60.0,
                                                                         every=3600, clock=clock) as p:
        for epoch, seconds in enumerate(epoch_seconds, start=1):
            p.start_epoch(epoch)
            clock.now += seconds
            if p.end_epoch():
                break
    assert p.epochs_done == epochs_run
    assert p.stopped_by_budget is (epochs_run < 3)
    assert clock.now <= 60.0 or epochs_run == 1, "no epoch after the first ended past the budget"


def test_lightfm_epoch_by_epoch_equals_one_fit_call(data):
    # fit_partial one epoch at a time draws the same random stream as fit(epochs=n).
    from lightfm import LightFM

    inter, _ = data
    model = make("lightfm", num_threads=1, max_seconds=None, use_item_features=False).fit(inter)
    ref = LightFM(no_components=8, loss="warp", learning_rate=0.05, item_alpha=1e-6, user_alpha=1e-6,
                  max_sampled=10, random_state=np.random.RandomState(3))
    ref.fit(inter.binary().tocoo(), epochs=6, num_threads=1)
    np.testing.assert_array_equal(model.vectors.item_vectors, ref.get_item_representations()[1])


@pytest.mark.parametrize("family", ["tfrs", "als"])
def test_default_threads_are_reproducible(family, data):
    # TFRS (op determinism) and ALS (independent per-row solves) are bit-reproducible with
    # their default, multi-threaded settings; LightFM only with num_threads=1 (test_models).
    inter, feats = data
    a = make(family, max_seconds=None).fit(inter, feats)
    b = make(family, max_seconds=None).fit(inter, feats)
    np.testing.assert_array_equal(a.vectors.item_vectors, b.vectors.item_vectors)
    np.testing.assert_array_equal(a.vectors.user_vectors, b.vectors.user_vectors)


def test_lightfm_one_thread_is_reproducible(data):
    inter, feats = data
    a = make("lightfm", num_threads=1, max_seconds=None).fit(inter, feats)
    b = make("lightfm", num_threads=1, max_seconds=None).fit(inter, feats)
    np.testing.assert_array_equal(a.vectors.item_vectors, b.vectors.item_vectors)


def test_tfrs_epochs_can_be_samples_of_the_training_pairs(data):
    inter, feats = data
    model = make("tfrs", max_seconds=None, max_epochs=2, examples_per_epoch=700).fit(inter, feats)
    assert model.info["examples_per_epoch"] == 700 and model.info["epochs_run"] == 2
    full = make("tfrs", max_seconds=None, max_epochs=1).fit(inter, feats)
    assert full.info["examples_per_epoch"] > 700


def test_lightfm_epochs_can_be_fresh_samples_of_the_training_pairs(data, caplog):
    # At 10x ML-20M a full LightFM pass takes ~11 minutes, so the budget could stop nothing:
    # an epoch is then a fresh seeded sample, and the run stays reproducible.
    inter, feats = data
    n = inter.nnz // 4
    with caplog.at_level(logging.INFO, logger="recjobs.models.lightfm"):
        a = make("lightfm", num_threads=1, max_seconds=None, epochs=3, examples_per_epoch=n).fit(inter, feats)
    assert a.info["examples_per_epoch"] == n and a.info["epochs_run"] == 3
    assert any(f"{n:,} of {inter.nnz:,} training pairs per epoch" in r.getMessage() for r in caplog.records)
    b = make("lightfm", num_threads=1, max_seconds=None, epochs=3, examples_per_epoch=n).fit(inter, feats)
    np.testing.assert_array_equal(a.vectors.item_vectors, b.vectors.item_vectors)
    full = make("lightfm", num_threads=1, max_seconds=None, epochs=3, examples_per_epoch=None).fit(inter, feats)
    assert full.info["examples_per_epoch"] == inter.nnz
    assert not np.array_equal(full.vectors.item_vectors, a.vectors.item_vectors)
    # Small data use every pair: the default leaves them as they were.
    default = make("lightfm", num_threads=1, max_seconds=None, epochs=3).fit(inter, feats)
    np.testing.assert_array_equal(default.vectors.item_vectors, full.vectors.item_vectors)


def test_budget_settings_validate():
    s = Settings.model_validate({"models": {"lightfm": {"max_seconds": None}, "tfrs": {"max_seconds": 30}}})
    assert s.models.lightfm.max_seconds is None and s.models.tfrs.max_seconds == 30
    with pytest.raises(ValueError):
        Settings.model_validate({"models": {"als": {"max_seconds": 0}}})
