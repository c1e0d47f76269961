"""A night run as one command with every stage in a child process publishes what the
in-process run does, and a stage's failure comes back as its own error."""

from __future__ import annotations

import pandas as pd
import pytest

from recjobs.data import write_inbox
from recjobs.errors import PipelineError
from recjobs.pipeline import engine_for, run_pipeline
from recjobs.settings import load_settings
from tests.conftest import SMALL

DAY = "2026-01-31"
FAST = {"families": ["popularity", "als", "itemknn"], "publish": {"top_n": 10}}


def _published(settings) -> pd.DataFrame:  # noqa: ANN001
    engine = engine_for(settings)
    try:
        with engine.connect() as conn:
            return pd.read_sql("SELECT user_id, item_id, rank, score, model_version FROM recommendations "
                               "ORDER BY user_id, rank", conn)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_stages_in_child_processes_publish_the_in_process_rows(tmp_path):
    homes = {mode: tmp_path / mode for mode in ("inline", "isolated")}
    reports = {}
    for mode, home in homes.items():
        settings = load_settings({"home": str(home), **FAST}, environ={})
        write_inbox(settings.inbox, SMALL)
        reports[mode] = run_pipeline(settings, DAY, isolate=mode == "isolated")
    inline, isolated = reports["inline"], reports["isolated"]
    assert isolated.decision == inline.decision
    assert {f: m.ndcg for f, m in isolated.candidates.items()} == {f: m.ndcg for f, m in inline.candidates.items()}
    frames = {mode: _published(load_settings({"home": str(home), **FAST}, environ={}))
              for mode, home in homes.items()}
    assert len(frames["inline"]) == SMALL.n_users * 10
    pd.testing.assert_frame_equal(frames["isolated"], frames["inline"], check_exact=True)


def test_a_failing_stage_in_a_child_raises_its_own_error(tmp_path):
    settings = load_settings({"home": str(tmp_path / "home"), **FAST}, environ={})
    # No data ingested: the split fails in its child, and the parent raises that error, named.
    with pytest.raises(PipelineError, match="no interactions before"):
        run_pipeline(settings, DAY, isolate=True)
