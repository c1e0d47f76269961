"""Long steps without a loop of their own (the split, evaluation, EASE) still report progress."""

from __future__ import annotations

import logging
import time

from recjobs.pipeline import prepare
from recjobs.progress import Heartbeat


def test_a_long_phase_is_repeated_while_it_runs(caplog):
    log = logging.getLogger("recjobs.test_heartbeat")
    with caplog.at_level(logging.INFO, logger=log.name), Heartbeat(log, "split 2026-01-31", every=0.2) as beat:
        beat.phase("ordering 10 rows")
        time.sleep(1.0)  # one long array operation
        beat.phase("writing")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("split 2026-01-31: ordering 10 rows")
    assert any(line.startswith("split 2026-01-31: still ordering 10 rows") for line in lines[1:-1])
    assert lines[-1].startswith("split 2026-01-31: writing")


def test_split_names_each_phase(settings, small_inbox, caplog):
    from recjobs.ingest import ingest_inbox
    from recjobs.pipeline import engine_for

    ingest_inbox(settings, engine_for(settings))
    with caplog.at_level(logging.INFO, logger="recjobs.pipeline"):
        prepare(settings, "2026-01-31")
    phases = [r.getMessage() for r in caplog.records if r.getMessage().startswith("split 2026-01-31: ")]
    assert [p.split(": ", 1)[1].split(" ")[0] for p in phases if "still" not in p] == [
        "reading", "ordering", "writing", "writing", "writing"]


def test_a_rate_without_a_total_invents_no_share_or_eta(caplog):
    from recjobs.progress import RateProgress

    with caplog.at_level(logging.INFO):
        RateProgress(logging.getLogger("t"), "loading t", clock=iter([0.0, 20.0]).__next__).update(500)
        RateProgress(logging.getLogger("t"), "loading u", total=1000, clock=iter([0.0, 20.0]).__next__).update(500)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "loading t: 500 rows, 25 rows/s, 20s elapsed"
    assert lines[1].startswith("loading u: 500/1,000 rows") and "50% done, ETA" in lines[1]

