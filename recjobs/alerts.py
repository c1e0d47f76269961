"""E-mail alerts: the text a person reads, and sending it over SMTP.

No Airflow here: the nightly DAG's notifier (``dags/recjobs_airflow.py``) gathers what
happened from its callback's context and calls :func:`failure_alert` or
:func:`promotion_alert` (:func:`guarded_of` for a night a guard held), then :func:`send`. Settings: ``alerts`` (off by default).
"""

from __future__ import annotations

import datetime as dt
import logging
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage

from sqlalchemy.engine import Engine

from recjobs.data.ids import visible
from recjobs.db import ledger
from recjobs.errors import AlertError
from recjobs.guard.checks import Check
from recjobs.settings import AlertsSettings, Settings

log = logging.getLogger(__name__)

# Tasks whose failure leaves one family out of the night; any other failure stops the night.
_FAMILY_TASKS = ("train_", "evaluate_")
_LINE_LIMIT = 500


@dataclass(frozen=True)
class Alert:
    """One message: its subject line and plain-text body."""

    subject: str
    body: str


def first_line(error: BaseException | str | None) -> str:
    """``error``'s first non-empty line, after its class name for an exception (``ValueError: bad``)."""
    if error is None:
        return "no error was reported (the task's process may have been killed; see its log)"
    text = str(error).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = visible(line)  # a direction mark or control character in an id must not garble the message
    # A message quoting a whole file or list: the start says what it is. The margin above the
    # limit keeps a line already cut (limit + its length note) as it is when taken again.
    if len(line) > _LINE_LIMIT + 40:
        line = line[:_LINE_LIMIT] + f"… ({len(line):,} characters)"
    if isinstance(error, BaseException):
        name = type(error).__name__
        return f"{name}: {line}" if line else name
    return line or "(no message)"


def _dashboard(url: str | None) -> str:
    return f"Dashboard: {url}" if url else "Dashboard: (alerts.dashboard_url is not set)"


def failure_alert(run_date: str, task_id: str, error: BaseException | str | None, *,
                  dag_id: str = "recs_nightly", run_id: str = "", try_number: int | None = None,
                  max_tries: int | None = None, log_url: str | None = None,
                  dashboard_url: str | None = None) -> Alert:
    """The message for a task that failed for good (its retries, if any, spent).

    It names the run date, the task, the exception's first line, what the failure means
    for tonight's lists, and where to look (the task's log, the dashboard).
    """
    what = first_line(error)
    family = next((task_id[len(p):] for p in _FAMILY_TASKS if task_id.startswith(p)), None)
    if family is not None:
        effect = (f"The family {family} is left out of this night's gate; the other families are still "
                  "gated, and the night publishes if one of them is evaluated.")
    elif dag_id == "recs_rollback":
        effect = "Nothing was rolled back: the lists live now stay live (the task's log says why)."
    else:
        effect = ("This night publishes nothing: the lists live now stay live. "
                  "Clear the task in Airflow to run it again once the cause is fixed.")
    tries = f" (try {try_number} of {max_tries})" if try_number and max_tries else ""
    lines = [
        f"The recjobs run for {run_date} failed in task {task_id}{tries}.",
        "",
        f"Error: {what}",
        "",
        effect,
        "",
        f"Run: {dag_id} {run_id}".rstrip(),
    ]
    if log_url:
        lines.append(f"Task log: {log_url}")
    lines.append(_dashboard(dashboard_url))
    return Alert(f"[recjobs] {run_date}: {task_id} failed: {what}"[:200], "\n".join(lines) + "\n")


# What a held night means for its lists, by guard stage (recjobs.guard), and the task to clear.
_HELD = {"input": ("nothing of the night was trained or published", "split"),
         "output": ("its lists were kept as history only", "publish")}


def guarded_alert(run_date: str, stage: str, failed: Sequence[Check], *, run_id: str = "",
                  log_url: str | None = None, dashboard_url: str | None = None) -> Alert:
    """The message for a night a guard held: which checks failed (value vs threshold), what it
    means for the lists, and how to let the night through once someone has looked."""
    effect, task = _HELD.get(stage, ("nothing of it went live", "split"))
    # Short enough to stay on one header line (Python folds a longer one before its first word).
    count = f"{len(failed)} check{'s' if len(failed) != 1 else ''} failed"
    lines = [
        f"The recjobs run for {run_date} was held by the {stage} guard: {effect}. "
        "The lists live now stay live.",
        "",
        "Checks that failed (value, and the threshold it was held to):",
        *(f"  - {visible(c.describe())}" for c in failed),
        "",
        "If the night is right (you looked at its data and these figures), let it through:",
        f"  recjobs guard allow --date {run_date}, then clear the run's {task} task in Airflow; or",
        f"  trigger recs_nightly with run_date {run_date} and 'Let the guards through' (guard_allow) ticked.",
        "Otherwise fix the data (deliver the missing file to the inbox) and clear the run's ingest task.",
        "",
        f"Run: recs_nightly {run_id}".rstrip(),
    ]
    if log_url:
        lines.append(f"Task log: {log_url}")
    lines.append(_dashboard(dashboard_url))
    return Alert(f"[recjobs] {run_date}: held by the {stage} guard ({count})", "\n".join(lines) + "\n")


def guarded_of(engine: Engine, run_date: str | dt.date, stage: str, **where: str | None) -> Alert | None:
    """The held night's message from the date's recorded checks (``guard_checks``), or None when
    that guard did not hold the date. ``where``: ``run_id``, ``log_url``, ``dashboard_url``."""
    from recjobs.guard import checks_of
    from recjobs.guard.record import HELD

    day = dt.date.fromisoformat(str(run_date))
    rows = [r for r in checks_of(engine, day) if r.stage == stage]
    if not any(r.decision == HELD for r in rows):
        return None
    failed = [Check(r.check_name, r.value, r.threshold or "", bool(r.passed), r.note or "")
              for r in rows if not r.passed]
    return guarded_alert(day.isoformat(), stage, failed, **where)


def promotion_alert(run_date: str, family: str, model_version: str, metric: str, k: int | None,
                    value: float | None, previous: str | None, reason: str, *,
                    dashboard_url: str | None = None) -> Alert:
    """The message for a gate that promoted a new champion: who, by how much, and why."""
    score = f"{metric}@{k} = {value:.4f}" if value is not None and k else f"{metric} not recorded"
    lines = [
        f"The gate of {run_date} promoted {family} ({model_version}) to champion: {score}.",
        f"Previous champion: {previous}." if previous else "There was no champion before: this is the first.",
        "",
        f"Gate's reason: {reason}",
        "",
        "Its lists go live when this run's publish succeeds (a backfilled date is kept as history only).",
        _dashboard(dashboard_url),
    ]
    return Alert(f"[recjobs] {run_date}: {family} promoted to champion", "\n".join(lines) + "\n")


def promotion_of(settings: Settings, engine: Engine, run_date: str | dt.date,
                 dashboard_url: str | None = None) -> Alert | None:
    """The promotion message for ``run_date``'s gate, or None when it kept the champion (or never ran)."""
    day = dt.date.fromisoformat(str(run_date))
    row = ledger.gate_row(engine, day)
    if row is None or row.status != ledger.PROMOTED:
        return None
    before = ledger.champion_before(engine, day)
    metric = settings.gate.metric
    value = getattr(row, ledger.METRIC_COLUMN[metric])
    return promotion_alert(day.isoformat(), row.family, row.model_version, metric, row.k,
                           None if value is None else float(value), before.family if before else None,
                           row.reason or "", dashboard_url=dashboard_url)


def send(settings: AlertsSettings, alert: Alert) -> None:
    """Send ``alert`` to ``alerts.to`` through ``alerts.smtp_host``; :class:`AlertError` if it cannot.

    The error names the server and the cause, never the password.
    """
    message = EmailMessage()
    message["Subject"] = alert.subject
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.to)
    message.set_content(alert.body)
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_seconds) as smtp:
            if settings.smtp_starttls:
                smtp.starttls()
            if settings.smtp_user:
                password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
                smtp.login(settings.smtp_user, password)
            refused = smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:
        raise AlertError(f"cannot send the alert {alert.subject!r} through {where} "
                         f"(alerts.smtp_host/smtp_port): {type(exc).__name__}: {exc}") from None
    if refused:
        raise AlertError(f"the SMTP server {where} refused recipients {sorted(refused)} of alerts.to")
    log.info("alert sent to %s through %s: %s", ", ".join(settings.to), where, alert.subject)


__all__ = ["Alert", "failure_alert", "first_line", "guarded_alert", "guarded_of", "promotion_alert", "promotion_of",
           "send"]
