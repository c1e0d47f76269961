"""Alerts: the text a person gets, sent over real SMTP to a sink server in this process, and
the settings that turn them on (off by default; the password never shown).

The DAG's notifier on a real Airflow task failure is tested in tests/test_dag.py."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from recjobs import alerts
from recjobs.cli import main
from recjobs.db import ledger
from recjobs.errors import AlertError, SettingsError
from recjobs.settings import load_settings
from tests.conftest import _free_port
from tests.smtp_sink import start_sink

DASHBOARD = "https://airflow.example.com/recjobs/"
SECRET = "pw-s3cret-1234"


@pytest.fixture
def sink():  # noqa: ANN201
    found, server = start_sink()
    yield found
    server.shutdown()
    server.server_close()


def _alerts(port: int, **extra: str) -> dict[str, str]:
    return {"RECJOBS_ALERTS__ENABLED": "true", "RECJOBS_ALERTS__SMTP_HOST": "127.0.0.1",
            "RECJOBS_ALERTS__SMTP_PORT": str(port), "RECJOBS_ALERTS__SENDER": "recjobs@example.com",
            "RECJOBS_ALERTS__TO": '["ops@example.com", "data@example.com"]',
            "RECJOBS_ALERTS__DASHBOARD_URL": DASHBOARD, **extra}


def test_alerts_are_off_by_default():
    assert load_settings(environ={}).alerts.enabled is False


def test_a_failure_alert_reaches_the_mailbox_with_date_task_error_and_dashboard(sink):
    settings = load_settings(environ=_alerts(sink.port, RECJOBS_ALERTS__SMTP_USER="recjobs",
                                             RECJOBS_ALERTS__SMTP_PASSWORD=SECRET))
    error = ValueError("file inbox/ratings.csv rejected: 41% of rows invalid\nreasons: rating out of range")
    alert = alerts.failure_alert("2026-02-01", "ingest", error, run_id="scheduled__2026-02-01T00:00:00+00:00",
                                 try_number=3, max_tries=3, log_url="http://airflow/log", dashboard_url=DASHBOARD)
    alerts.send(settings.alerts, alert)
    (got,) = sink.messages()
    assert got.subject == "[recjobs] 2026-02-01: ingest failed: ValueError: file inbox/ratings.csv rejected: " \
                          "41% of rows invalid"
    assert got.message["From"] == "recjobs@example.com"
    assert got.message["To"] == "ops@example.com, data@example.com"
    assert got.rcpt_to == ["ops@example.com", "data@example.com"]
    assert got.login == ("recjobs", SECRET)  # the password reaches the server, and only the server
    assert got.body == (
        "The recjobs run for 2026-02-01 failed in task ingest (try 3 of 3).\n"
        "\n"
        "Error: ValueError: file inbox/ratings.csv rejected: 41% of rows invalid\n"
        "\n"
        "This night publishes nothing: the lists live now stay live. Clear the task in Airflow to run it "
        "again once the cause is fixed.\n"
        "\n"
        "Run: recs_nightly scheduled__2026-02-01T00:00:00+00:00\n"
        "Task log: http://airflow/log\n"
        f"Dashboard: {DASHBOARD}\n")
    assert SECRET not in got.message.as_string()


def test_a_failed_family_says_the_night_goes_on_without_it(sink):
    alert = alerts.failure_alert("2026-02-01", "train_tfrs", ImportError("No module named tensorflow"))
    alerts.send(load_settings(environ=_alerts(sink.port)).alerts, alert)
    body = sink.messages()[0].body
    assert "Error: ImportError: No module named tensorflow" in body
    assert "The family tfrs is left out of this night's gate" in body
    assert "Dashboard: (alerts.dashboard_url is not set)" in body
    # A task killed from outside reports no exception: the message says so instead of "None".
    assert alerts.first_line(None).startswith("no error was reported")


def test_a_hostile_error_text_stays_one_readable_line(sink):
    # Any text an exception carries: a huge line, line breaks of every kind, non-ASCII ids.
    error = RuntimeError("unknown item 'café\u202e' " + "x" * 20_000 + "\r\nsecond line\u2028third")
    alerts.send(load_settings(environ=_alerts(sink.port)).alerts,
                alerts.failure_alert("2026-02-01", "split", error))
    got = sink.messages()[0]
    # The direction mark is shown as its escape: it cannot reverse the rest of the line.
    assert "RuntimeError: unknown item 'café\\u202e' xx" in got.body and "\u202e" not in got.message.as_string()
    assert "café" in got.subject and len(got.subject) <= 200 and "second line" not in got.message.as_string()
    (error_line,) = [ln for ln in got.body.splitlines() if ln.startswith("Error: ")]
    assert error_line.endswith("… (20,026 characters)") and len(error_line) < 600
    # Taken again (the DAG's notifier passes the line it made), a cut line stays as it is.
    once = alerts.first_line(error)
    assert alerts.first_line(once) == once


def test_a_promotion_names_the_champion_before_from_the_ledger(sink, settings, engine):
    def gate(day: str, family: str, status: str, ndcg: float, reason: str) -> None:
        ledger.record_gate(engine, dt.date.fromisoformat(day), {}, {
            "family": family, "model_version": f"{family}-{day.replace('-', '')}-c", "status": status,
            "reason": reason, "k": 10, "ndcg_at_k": ndcg})

    gate("2026-02-01", "als", ledger.PROMOTED, 0.1, "first run: als has the highest lower bound")
    gate("2026-02-02", "ease", ledger.PROMOTED, 0.1234, "ease beats champion als by +0.0234 (p=0.001)")
    gate("2026-02-03", "ease", ledger.CHAMPION_KEPT, 0.12, "no challenger beats champion ease")
    first = alerts.promotion_of(settings, engine, "2026-02-01")
    assert first is not None and "There was no champion before: this is the first." in first.body
    alert = alerts.promotion_of(settings, engine, "2026-02-02", dashboard_url=DASHBOARD)
    assert alerts.promotion_of(settings, engine, "2026-02-03") is None  # kept: nothing to announce
    assert alerts.promotion_of(settings, engine, "2026-02-04") is None  # no gate yet
    alerts.send(load_settings(environ=_alerts(sink.port)).alerts, alert)
    (got,) = sink.messages()
    assert got.subject == "[recjobs] 2026-02-02: ease promoted to champion"
    assert got.body.splitlines() == [
        "The gate of 2026-02-02 promoted ease (ease-20260202-c) to champion: ndcg@10 = 0.1234.",
        "Previous champion: als.",
        "",
        "Gate's reason: ease beats champion als by +0.0234 (p=0.001)",
        "",
        "Its lists go live when this run's publish succeeds (a backfilled date is kept as history only).",
        f"Dashboard: {DASHBOARD}",
    ]


def test_an_unreachable_server_is_one_line_naming_the_setting_and_never_the_password():
    port = _free_port()  # nothing listens there
    settings = load_settings(environ=_alerts(port, RECJOBS_ALERTS__SMTP_USER="u",
                                             RECJOBS_ALERTS__SMTP_PASSWORD=SECRET,
                                             RECJOBS_ALERTS__SMTP_TIMEOUT_SECONDS="5"))
    with pytest.raises(AlertError) as caught:
        alerts.send(settings.alerts, alerts.failure_alert("2026-02-01", "split", "boom"))
    text = str(caught.value)
    assert f"127.0.0.1:{port} (alerts.smtp_host/smtp_port)" in text and "\n" not in text
    assert SECRET not in text


@pytest.mark.parametrize(("env", "needle"), [
    ({"RECJOBS_ALERTS__ENABLED": "true"}, "alerts.to names nobody"),
    ({"RECJOBS_ALERTS__TO": '["ops@example.com, boss@example.com"]'}, "alerts.to"),
    ({"RECJOBS_ALERTS__TO": '["nobody"]'}, "'nobody' is not one plain e-mail address"),
    ({"RECJOBS_ALERTS__SENDER": "recjobs"}, "alerts.sender"),
    ({"RECJOBS_ALERTS__SMTP_PORT": "0"}, "alerts.smtp_port"),
    ({"RECJOBS_ALERTS__SMTP_PORT": "70000"}, "alerts.smtp_port"),
    ({"RECJOBS_ALERTS__SMTP_HOST": ""}, "alerts.smtp_host"),
    ({"RECJOBS_ALERTS__SMTP_TIMEOUT_SECONDS": "0"}, "alerts.smtp_timeout_seconds"),
    ({"RECJOBS_ALERTS__SMTPHOST": "x"}, "alerts.smtphost"),
    ({"RECJOBS_ALERTS__DASHBOARD_URL": "javascript:alert(1)"}, "alerts.dashboard_url"),
    ({"RECJOBS_ALERTS__DASHBOARD_URL": "https://a b/"}, "is not an http(s) address"),
])
def test_bad_alert_settings_are_refused_by_name(env, needle):
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=env)
    assert needle in str(caught.value)


def test_the_password_is_never_printed_by_recjobs_settings(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RECJOBS_HOME", str(tmp_path))
    # JSON would read these as a number and a boolean: secrets are taken as the variable's text.
    monkeypatch.setenv("RECJOBS_ALERTS__SMTP_PASSWORD", "1234")
    assert load_settings().alerts.smtp_password.get_secret_value() == "1234"
    monkeypatch.setenv("RECJOBS_ALERTS__SMTP_PASSWORD", SECRET)
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and json.loads(out)["alerts"]["smtp_password"] == "**********"


def test_a_held_night_says_which_checks_failed_and_how_to_let_it_through(sink, tmp_path):
    from recjobs.errors import GuardedError
    from recjobs.guard import check_input
    from recjobs.pipeline import engine_for, run_pipeline
    from tests.test_guard import DAYS, _settings, night, write_nights

    settings = _settings(tmp_path)
    write_nights(settings.inbox, last_night_rows=4)
    engine = engine_for(settings)
    run_pipeline(settings, night(DAYS - 2))  # yesterday is live
    tonight = night(DAYS - 1)
    assert alerts.guarded_of(engine, tonight, "input") is None  # not held (not even checked) yet
    with pytest.raises(GuardedError):
        check_input(settings, engine, tonight)  # the collapsed night: held, its checks recorded
    assert alerts.guarded_of(engine, tonight, "output") is None  # only the guard that held it speaks
    alert = alerts.guarded_of(engine, tonight, "input", run_id="scheduled__x", log_url="http://airflow/log",
                              dashboard_url=DASHBOARD)
    alerts.send(load_settings(environ=_alerts(sink.port)).alerts, alert)
    (got,) = sink.messages()
    assert got.subject == f"[recjobs] {tonight}: held by the input guard (2 checks failed)"
    body = got.body
    assert body.startswith(f"The recjobs run for {tonight} was held by the input guard: nothing of the night was "
                           "trained or published. The lists live now stay live.\n")
    assert "Checks that failed (value, and the threshold it was held to):\n  - rows_ratio = 0.06" in body
    assert "\n  - users_ratio = 0.13" in body
    assert "(threshold 0.3..3 x trailing median" in body  # value vs threshold, per check
    assert f"  recjobs guard allow --date {tonight}, then clear the run's split task in Airflow; or\n" in body
    assert "'Let the guards through' (guard_allow) ticked" in body
    assert body.endswith(f"Run: recs_nightly scheduled__x\nTask log: http://airflow/log\nDashboard: {DASHBOARD}\n")
    engine.dispose()


def test_a_failed_rollback_run_says_nothing_was_rolled_back():
    alert = alerts.failure_alert("2026-02-04", "rollback", "AirflowFailException: version 'x' is not the rollback "
                                 "target", dag_id="recs_rollback", run_id="manual__2026-02-04T10:00:00+00:00")
    assert "Nothing was rolled back: the lists live now stay live" in alert.body
    assert "This night publishes nothing" not in alert.body
    assert "Run: recs_rollback manual__2026-02-04T10:00:00+00:00" in alert.body
