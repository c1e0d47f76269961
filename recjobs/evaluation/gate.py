"""The gate's rule: which candidate becomes (or stays) champion, and why. Pure: no I/O.

The best challenger replaces the champion only when its mean gain on the gate metric
is above ``gate.margin`` and significant by a paired test over the holdout's users
(``gate.test`` at ``gate.significance``). With no champion to defend, the best
candidate takes it when its lead over the runner-up is significant; otherwise the
stated rule ``gate.first_run`` decides: by default the candidate with the highest lower
confidence bound of its mean (the surest score), not whichever mean is highest on noise. Every candidate is compared with the champion's candidate (same
holdout users), or, with no champion, with the best candidate; the comparisons are
returned for the ledger (``recjobs.db.ledger``), which the caller writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from recjobs.evaluation.significance import PairedTest, lower_bound, paired_test
from recjobs.settings import GateSettings


@dataclass(frozen=True)
class GateCandidate:
    """One evaluated candidate as the gate sees it.

    ``score`` is its mean of the gate metric. ``users``/``values`` are its per-user
    metric values (training user rows, sorted) and ``split`` what they were measured on
    (fingerprint, protocol); None when they were not saved (then it can only be
    compared by its mean).
    """

    family: str
    score: float
    k: int
    users: np.ndarray | None = None
    values: np.ndarray | None = None
    split: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GateOutcome:
    """The decision: the winner, whether it was promoted, the reason, and the comparisons."""

    winner: str
    promoted: bool
    reason: str
    reference: str
    tests: dict[str, PairedTest]
    decisive: PairedTest | None


def paired(challenger: GateCandidate, reference: GateCandidate, gate: GateSettings, seed: int) -> PairedTest:
    """``challenger`` minus ``reference`` on the gate metric, paired over the holdout's users.

    Candidates without per-user metrics (or measured on another split) cannot be paired:
    then only the difference of the means is known, and the test says so.
    """
    plain = PairedTest(challenger.score - reference.score, None, None, None, 0, "unpaired")
    if (challenger.users is None or reference.users is None or challenger.values is None
            or reference.values is None
            or any(challenger.split.get(key) != reference.split.get(key) for key in ("fingerprint", "protocol"))):
        return plain
    common, ia, ib = np.intersect1d(challenger.users, reference.users, assume_unique=True, return_indices=True)
    if len(common) == 0:
        return plain
    return paired_test(challenger.values[ia], reference.values[ib], gate.test, gate.significance,
                       gate.bootstrap_samples, seed)


def surest(cands: Sequence[GateCandidate], gate: GateSettings, seed: int) -> tuple[GateCandidate, str] | None:
    """The candidate with the highest lower confidence bound of its mean, and the bounds as said.

    Bounds are taken over the users every candidate was measured on (same split), so each
    is the same question; None when some candidate has no per-user metrics to bound.
    """
    if any(c.users is None or c.values is None for c in cands):
        return None
    keys = ("fingerprint", "protocol")
    if any(c.split.get(k) != cands[0].split.get(k) for c in cands for k in keys):
        return None
    common = cands[0].users
    for c in cands[1:]:
        common = np.intersect1d(common, c.users, assume_unique=True)
    if len(common) == 0:
        return None
    bounds = []
    for c in cands:
        _, idx, _ = np.intersect1d(c.users, common, assume_unique=True, return_indices=True)
        bounds.append(lower_bound(c.values[idx], gate.test, gate.significance, gate.bootstrap_samples, seed))
    best = int(np.argmax(bounds))  # first of equals: cands are in (score, settings) order
    said = ", ".join(f"{c.family} {b:.4f}" for c, b in sorted(zip(cands, bounds, strict=True),
                                                                 key=lambda cb: -cb[1])[:4])
    return cands[best], f"lower {1 - gate.significance:.0%} bounds over {len(common)} users: {said}"


def describe(test: PairedTest) -> str:
    """A comparison as the reason and the logs state it."""
    if test.test == "unpaired":
        return f"{test.diff:+.4f} (no per-user metrics to pair: significance not tested)"
    if test.p_value is None:
        return f"{test.diff:+.4f} (gate.test=none: significance not tested)"
    return f"{test.describe()} (paired {test.test} over {test.users} users)"


def decide(candidates: Sequence[GateCandidate], previous: str | None, gate: GateSettings, seed: int,
           day: str, order: Sequence[str]) -> GateOutcome:
    """The gate's decision for ``day`` among ``candidates`` (at least one).

    ``previous`` is the family of the champion decided by the latest earlier gate (None
    on a first run); ``order`` the families in settings order, which breaks ties.
    """
    if not candidates:
        raise ValueError("the gate needs at least one candidate")
    rank = {f: i for i, f in enumerate(order)}
    cands = sorted(candidates, key=lambda c: (-c.score, rank.get(c.family, len(rank))))
    best = cands[0]
    by_family = {c.family: c for c in cands}
    name = gate.metric
    champ = by_family.get(previous) if previous is not None else None
    reference = champ if champ is not None else best
    tests = {c.family: paired(c, reference, gate, seed) for c in cands if c.family != reference.family}
    decisive: PairedTest | None = None
    if champ is None:
        winner, promoted = best, True
        rule = ""
        if len(cands) > 1:
            # Nothing to defend: the best takes it if its lead over the runner-up is real;
            # otherwise gate.first_run says who (the lead is said for the record either way).
            decisive = paired(best, cands[1], gate, seed)
            lead = f"; over runner-up {cands[1].family}: {describe(decisive)}"
            clear = decisive.diff > gate.margin and (decisive.p_value is not None
                                                    and decisive.p_value < gate.significance)
            if not clear and gate.first_run == "lower_bound":
                pick = surest(cands, gate, seed)
                if pick is not None:
                    winner = pick[0]
                    rule = (f"; no significant lead, so by gate.first_run=lower_bound {winner.family} "
                            f"({name}={winner.score:.4f}) has the highest lower bound ({pick[1]})")
                else:
                    rule = "; no significant lead and no per-user metrics to bound: the best mean is kept"
        else:
            lead = ""
        if previous is None:
            reason = f"first run: best candidate {best.family} by {name}@{best.k} ({best.score:.4f}){lead}{rule}"
        else:
            reason = (f"champion family {previous} has no candidate on {day}; "
                      f"best candidate {best.family} ({name}={best.score:.4f}) takes over{lead}{rule}")
        if winner is not best:
            reason = reason.replace(f"best candidate {best.family} ({name}={best.score:.4f}) takes over",
                                    f"best mean {best.family} ({name}={best.score:.4f})")
            decisive = paired(winner, best, gate, seed)
    else:
        challengers = [c for c in cands if c.family != champ.family]
        if not challengers:
            winner, promoted = champ, False
            reason = f"champion {champ.family} kept: it is the only candidate ({name}={champ.score:.4f})"
        else:
            challenger = challengers[0]
            decisive = tests[challenger.family]
            above = decisive.diff > gate.margin
            significant = decisive.p_value is None or decisive.p_value < gate.significance
            versus = (f"{challenger.family} {name}={challenger.score:.4f} vs champion {champ.family} "
                      f"{champ.score:.4f}: {describe(decisive)}")
            if above and significant:
                winner, promoted = challenger, True
                reason = f"{versus}; promoted: gain above the margin {gate.margin}" + (
                    f" and significant at {gate.significance}" if decisive.p_value is not None else "")
            else:
                winner, promoted = champ, False
                why = [f"gain not above the margin {gate.margin}"] if not above else []
                if not significant:
                    why.append(f"not significant at {gate.significance}")
                lead = "it is the best candidate; " if best.family == champ.family else ""
                reason = f"champion {champ.family} kept: {lead}best challenger {versus}; " + " and ".join(why)
    return GateOutcome(winner.family, promoted, reason, reference.family, tests, decisive)


__all__ = ["GateCandidate", "GateOutcome", "decide", "describe", "paired", "surest"]
