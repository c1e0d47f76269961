"""Fault injection at named points, a testing aid for crash-safety tests.

Set ``RECJOBS_FAULT_AT`` to a comma-separated list of point names; when the code
reaches a listed point the process kills itself with SIGKILL (no cleanup, no
``finally`` blocks, exactly like an OOM kill or a lost worker). ``NAME=pause:S``
sleeps S seconds there instead, to widen a race window deterministically.
Unset (the normal case) it costs one dictionary lookup. Points in the code:

* ``ingest.mid_validation``: after the first batch of a rating file is validated;
* ``ingest.mid_merge``: after the first day partition of a file is merged;
* ``ingest.before_log``: after every partition is merged, before ``ingest_log`` is written;
* ``lake.merge.before_write``: inside a partition merge, between reading and writing it;
* ``publish.mid_shard``: after each chunk of a shard is ranked, before it is written;
* ``publish.mid_load``: after each frame of a list is sent to its new table, before commit;
* ``publish.before_swap``: every list loaded and indexed, the history copied, no view repointed;
* ``publish.mid_swap``: inside a swap attempt that got its locks: the views repointed and the
  ``publications`` rows written, the fallback lists and the ledger row not yet, nothing committed.
"""

from __future__ import annotations

import logging
import os
import signal
import time

ENV_VAR = "RECJOBS_FAULT_AT"
log = logging.getLogger(__name__)


def fault_point(name: str) -> None:
    """Kill (or pause) this process if ``RECJOBS_FAULT_AT`` names ``name``; else do nothing."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    for entry in spec.split(","):
        point, _, action = entry.strip().partition("=")
        if point != name:
            continue
        if action.startswith("pause:"):
            seconds = float(action[len("pause:"):])
            # Said on the log, so a test can act while this process is held here.
            log.warning("fault point %s: pausing %gs", name, seconds)
            time.sleep(seconds)
        else:
            os.kill(os.getpid(), signal.SIGKILL)
