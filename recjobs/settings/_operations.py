"""Settings for operating the nightly run: the guards that hold a bad night, and alerts."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator

from recjobs.settings._strict import Strict


class GuardSettings(Strict):
    """A bad night never goes live: checks of the night's input before the split and of the
    champion's lists before they go live (README 'Guards'); an operator lets a night through
    with ``recjobs guard allow --date D`` or the DAG's ``guard_allow`` param."""

    # Off: every check is still computed and recorded, but nothing is held.
    enabled: bool = True
    # Trailing nights compared with: the median of the latest `trailing_nights` nights before
    # the run date that have data. With fewer than `min_trailing_nights` of them (the first
    # nights) the comparisons pass with a note: a first run is never held.
    trailing_nights: int = Field(7, ge=1, le=365)
    min_trailing_nights: int = Field(3, ge=1, le=365)
    # Input: rows, active users and active items of the night within these multiples of the
    # trailing median (a partial export, a doubled delivery).
    min_volume_ratio: float = Field(0.3, ge=0.0)
    max_volume_ratio: float = Field(3.0, gt=0.0)
    # Volume checks are judged only when the trailing median has at least this many rows a
    # night: the count of a small night varies too much by chance (and tiny generated data
    # tapers off at its end). Below it they pass with a note.
    min_judged_rows: int = Field(200, ge=0)
    # Input schema: the night needs at least this many rows (judged as the volume checks).
    min_rows: int = Field(1, ge=0)
    # Share of the night's active users (items) first seen that night: at most the larger of
    # this and max_volume_ratio x the trailing median share (an id scheme change makes all new).
    max_new_share: float = Field(0.8, ge=0.0, le=1.0)
    # Rating distribution against the trailing nights' pooled ratings: total variation
    # distance of the histograms (0 same, 1 disjoint) and the mean's shift, judged on nights
    # with at least `min_rating_rows` rows (fewer: passes with a note, too noisy to judge).
    max_rating_distance: float = Field(0.3, ge=0.0, le=1.0)
    max_mean_rating_shift: float = Field(0.5, ge=0.0)
    min_rating_rows: int = Field(50, ge=1)
    rating_bins: int = Field(10, ge=2, le=1000)
    # Share of the rows read from the files that delivered the night which were quarantined.
    max_quarantine_share: float = Field(0.01, ge=0.0, le=1.0)
    # Output: distinct items in the champion's lists over those in the live lists (a
    # collapse onto a few items), users of the date without a personal list (served the
    # fallback lists), and the mean share of a user's live list kept in the new one.
    min_coverage_ratio: float = Field(0.5, ge=0.0)
    min_coverage: float = Field(0.0, ge=0.0, le=1.0)  # distinct listed items / catalogue; 0: off
    max_fallback_share: float = Field(0.5, ge=0.0, le=1.0)
    min_overlap: float = Field(0.05, ge=0.0, le=1.0)
    overlap_users: int = Field(10_000, ge=1, le=1_000_000)  # users sampled for the overlap
    # The champion's holdout metric (gate.metric) may not fall more than this share below
    # the median of the trailing gates' champions.
    max_metric_drop: float = Field(0.3, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> GuardSettings:
        if self.min_volume_ratio > self.max_volume_ratio:
            raise ValueError(f"min_volume_ratio {self.min_volume_ratio:g} is above max_volume_ratio "
                             f"{self.max_volume_ratio:g}")
        if self.min_trailing_nights > self.trailing_nights:
            raise ValueError(f"min_trailing_nights {self.min_trailing_nights} is above trailing_nights "
                             f"{self.trailing_nights}")
        return self


class AlertsSettings(Strict):
    """E-mail alerts from the nightly DAG (failed tasks, promotions); off by default.

    Sent by the DAG's notifier (``dags/recjobs_airflow.py``) through ``recjobs.alerts``.
    """

    enabled: bool = False
    smtp_host: str = Field("localhost", min_length=1)
    smtp_port: int = Field(25, ge=1, le=65535)
    # STARTTLS after connecting (port 587 servers); the login, if any, comes after it.
    smtp_starttls: bool = False
    smtp_user: str | None = None
    # A secret: shown as ********** by `recjobs settings` and never put in a message or log.
    smtp_password: SecretStr | None = None
    smtp_timeout_seconds: float = Field(30.0, gt=0.0)
    sender: str = "recjobs@localhost"
    to: list[str] = []
    # The dashboard's address as operators open it, e.g. https://airflow.example.com/recjobs/
    # (messages link to it); None: messages say it is not set.
    dashboard_url: str | None = None
    # Also send a message when a gate promotes a new champion (failures are always sent).
    on_promotion: bool = True

    @field_validator("sender", "to")
    @classmethod
    def _addresses(cls, value: str | list[str]) -> str | list[str]:
        for address in [value] if isinstance(value, str) else value:
            if "@" not in address or any(c.isspace() or c in ",;<>" for c in address):
                raise ValueError(f"{address!r} is not one plain e-mail address (name@host)")
        return value

    @field_validator("dashboard_url")
    @classmethod
    def _web_address(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith(("http://", "https://"))
                                  or any(c.isspace() for c in value)):
            raise ValueError(f"{value[:200]!r} is not an http(s) address")
        return value

    @model_validator(mode="after")
    def _someone_to_tell(self) -> AlertsSettings:
        if self.enabled and not self.to:
            raise ValueError("alerts are enabled but alerts.to names nobody")
        return self
