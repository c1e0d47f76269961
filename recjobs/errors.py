"""Every error recjobs raises on purpose, in one place (imports nothing from recjobs).

Each is a :class:`RecjobsError`, so the CLI's one error boundary (``recjobs.cli.main``)
turns any of them into a single line naming the bad value, and a non-zero exit. Each
also keeps the builtin base it had before this module existed (``ValueError`` for bad
input, ``RuntimeError`` for a state that stops a stage), so callers that catch those
still work. Messages name the file, row, setting or command involved; they never hold
a password (database URLs are masked by :func:`recjobs.settings.mask_url`).
"""

from __future__ import annotations


class RecjobsError(Exception):
    """Base of every error recjobs raises on purpose; its message is meant for a person."""

    #: The CLI's exit code for this kind of error: 2 bad usage or settings, 1 a stage failed,
    #: 4 a guard held the night.
    exit_code = 1


class SettingsError(RecjobsError, ValueError):
    """A setting is unknown or has a bad value; the message names it (and where it came from)."""

    exit_code = 2


class UsageError(RecjobsError, ValueError):
    """A command-line argument is malformed; the message names it."""

    exit_code = 2


class IngestError(RecjobsError, ValueError):
    """A file cannot be ingested; the message names the file and why."""


class LakeLockTimeout(RecjobsError, RuntimeError):
    """Another process held the lake's lock for longer than the configured timeout."""


class RulesError(RecjobsError, ValueError):
    """A rules source is missing, unreadable or malformed; the message names the setting and source."""


class ModelError(RecjobsError, ValueError):
    """A model family cannot be built, fitted or loaded with these inputs (unknown family, empty data)."""


class ArtifactError(RecjobsError, ValueError):
    """A saved model or matrix folder is missing, damaged or from a newer recjobs."""


class DatabaseError(RecjobsError, RuntimeError):
    """The recommendations database cannot be named or reached; the message masks the password."""


class PipelineError(RecjobsError, RuntimeError):
    """A stage cannot run; the message says what is missing and which command makes it."""


class NoCandidatesError(PipelineError):
    """The date has no evaluated candidate to gate; its 'no_candidates' gate row says why."""


class GuardedError(PipelineError):
    """A guard held the night (recjobs.guard): its input or its lists are outside their thresholds.

    The message names each failed check with its value and threshold, and the command that
    lets the night through; the live lists are unchanged.
    """

    #: Not a failure of the code or the settings: scripts can tell a held night from one that broke.
    exit_code = 4


class RunDateError(PipelineError):
    """A run date is malformed, or later than the guard allows (``runs.max_future_days``)."""

    exit_code = 2


class PublishError(RecjobsError, RuntimeError):
    """Staged lists cannot be published as asked (wrong model version, pruned before the swap)."""


class SwapTimeoutError(PublishError):
    """A view swap (or table drop) never got its lock before the deadline."""


class AlertError(RecjobsError, RuntimeError):
    """An alert could not be sent (SMTP server unreachable, refused login or recipients)."""


__all__ = [
    "AlertError", "ArtifactError", "DatabaseError", "GuardedError", "IngestError", "LakeLockTimeout", "ModelError",
    "NoCandidatesError",
    "PipelineError", "PublishError", "RecjobsError", "RulesError", "RunDateError", "SettingsError",
    "SwapTimeoutError", "UsageError",
]
