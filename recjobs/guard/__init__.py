"""Guards: a bad night never goes live (README 'Guards').

``checks`` holds the checks as pure functions of a night's figures, ``stage`` the stage
functions the pipeline calls (the input guard before the split, the output guard before
the champion's lists go live) and ``record`` the ``guard_checks`` table they write.
"""

from recjobs.guard.checks import (
    INPUT,
    OUTPUT,
    STAGES,
    Check,
    ListStats,
    NightStats,
    input_checks,
    output_checks,
)
from recjobs.guard.record import checks_of
from recjobs.guard.stage import GuardOutcome, allow, check_input, check_output

__all__ = [
    "INPUT", "OUTPUT", "STAGES", "Check", "GuardOutcome", "ListStats", "NightStats", "allow", "check_input",
    "check_output", "checks_of", "input_checks", "output_checks",
]
