"""Run dates, the run-folder layout and model versions: the only module that knows them.

A run computes one logical date (a UTC day). Everything it writes lives under
``<home>/runs/<date>/``::

    snapshot.json                 what the split read (counts, fingerprint, cutoffs)
    train/ full/ holdout/         the split's matrices (recjobs.data.interactions)
    candidates/<family>/          each family's candidate model (+ per_user.npz metrics)
    final/                        the champion retrained on all data before the cutoff
    publish/<list>/part-NNNN-of-MMMM.parquet   ranked shards staged for loading

A model version names its family, date, stage and a hash of its inputs, so a rerun
with the same inputs reproduces it: ``<family>-<YYYYMMDD>-<stage>-<hash8>``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recjobs.errors import PipelineError, RunDateError

if TYPE_CHECKING:
    from recjobs.settings import Settings

SNAPSHOT = "snapshot.json"
PER_USER_FILE = "per_user.npz"
MATRIX_PARTS = ("train", "full", "holdout")


# -- dates --------------------------------------------------------------------------------
def parse_date(value: str | dt.date) -> dt.date:
    """A run date from ``YYYY-MM-DD`` text (or a date); :class:`RunDateError` otherwise."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise RunDateError(f"bad date {value!r}: expected YYYY-MM-DD") from None


def future_horizon(max_future_days: int | None, today: dt.date | None = None) -> dt.date:
    """The latest run date that counts as real: today (UTC) plus ``max_future_days`` (1 when None).

    Later dates are outliers (a mistyped year, or one forced with the guard off): they
    are kept, but never keep a real date from going live and never anchor retention.
    """
    today = today or dt.datetime.now(dt.UTC).date()
    return today + dt.timedelta(days=1 if max_future_days is None else max_future_days)


def check_run_date(day: dt.date, max_future_days: int | None, today: dt.date | None = None) -> dt.date:
    """``day`` if it is not later than ``max_future_days`` after today (UTC); else :class:`RunDateError`.

    A run date far in the future (a typo: 2062 for 2026) would go live, and retention
    would then count every real date as old. ``None`` turns the guard off.
    """
    if max_future_days is None:
        return day
    today = today or dt.datetime.now(dt.UTC).date()
    latest = future_horizon(max_future_days, today)
    if day > latest:
        raise RunDateError(
            f"run date {day} is later than {latest} (today {today} UTC + runs.max_future_days="
            f"{max_future_days}); a mistyped date would go live and make real history look old. "
            f"If it is meant, set runs.max_future_days (--set runs.max_future_days=N, or null to turn the guard off)")
    return day


def cutoff_of(run_date: dt.date) -> dt.datetime:
    """End of the logical date's data interval: interactions strictly before it are used."""
    return dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def window(settings: Settings, run_date: dt.date) -> tuple[dt.datetime, dt.datetime | None]:
    """(cutoff, start) of the date's training window; start None: all history (``train_window_days``)."""
    cutoff = cutoff_of(run_date)
    days = settings.train_window_days
    return cutoff, (cutoff - dt.timedelta(days=days) if days else None)


# -- the run folder ----------------------------------------------------------------------
@dataclass(frozen=True)
class RunFolder:
    """The folder of one run date; see the module docstring for its layout."""

    root: Path
    day: dt.date

    @classmethod
    def of(cls, settings: Settings, day: dt.date | str) -> RunFolder:
        day = parse_date(day)
        return cls(settings.runs_dir / day.isoformat(), day)

    @property
    def snapshot_path(self) -> Path:
        return self.root / SNAPSHOT

    def matrix(self, part: str) -> Path:
        """The split's ``train``, ``full`` or ``holdout`` folder."""
        if part not in MATRIX_PARTS:
            raise ValueError(f"unknown matrix part {part!r}; known: {MATRIX_PARTS}")
        return self.root / part

    def candidate(self, family: str) -> Path:
        return self.root / "candidates" / family

    @property
    def baseline_errors(self) -> Path:
        """The bias baseline's rating errors on the holdout: the same for every candidate, so
        the first evaluation computes them and the others read them."""
        return self.root / "baseline_errors.json"

    def per_user(self, family: str) -> Path:
        """The candidate's per-user metrics, inside its folder (retraining replaces both)."""
        return self.candidate(family) / PER_USER_FILE

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def staging(self) -> Path:
        """Where publishing stages the date's ranked lists before loading them."""
        return self.root / "publish"

    def shard(self, kind: str, shard: int, shards: int) -> Path:
        """The staging file of one shard of list ``kind``; the name carries the shard count."""
        return self.staging / kind / f"part-{shard:04d}-of-{shards:04d}.parquet"

    def snapshot(self) -> dict[str, Any]:
        """What the split recorded; :class:`PipelineError` naming the command when it has not run."""
        if not self.snapshot_path.exists():
            raise PipelineError(f"no split for {self.day}: run `recjobs split --date {self.day}` first")
        return json.loads(self.snapshot_path.read_text())


def shard_span(n: int, shard: int, shards: int) -> range:
    """Positions ``[lo, hi)`` of shard ``shard`` of ``shards`` over ``n`` keys: contiguous, in order."""
    if not 0 <= shard < shards:
        raise PipelineError(f"shard {shard} is not in 0..{shards - 1} (publish.shards = {shards})")
    return range(n * shard // shards, n * (shard + 1) // shards)


# -- model versions ------------------------------------------------------------------------
def model_version(family: str, day: dt.date, params: dict[str, Any], seed: int, fingerprint: str,
                  stage: str) -> str:
    """A version that is the same whenever the inputs are, so reruns reproduce it."""
    blob = json.dumps([family, params, seed, fingerprint, stage], sort_keys=True, default=str)
    return f"{family}-{day:%Y%m%d}-{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def family_of(version: str) -> str:
    """The family a model version names (its text before the first ``-``)."""
    return str(version).split("-", 1)[0]


__all__ = [
    "PER_USER_FILE", "RunFolder", "check_run_date", "cutoff_of", "family_of", "future_horizon", "model_version",
    "parse_date", "shard_span", "window",
]
