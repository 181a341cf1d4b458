"""What operators run by hand: the stats command, the scheduler's command line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import inspect

from app import create_app
from app.config import ConfigError, Settings
from app.db import current_revision, head_revision, session_scope
from app.services import Services
from tests.support import FakeClock, SmtpSink, active_subscriber, run_worker, sign_up
from worker import schedule


def figures_in(output: str) -> dict[str, str]:
    """The `name value` lines of `flask stats` (the bounce tables follow them)."""
    pairs = (line.split() for line in output.splitlines() if not line.startswith(" "))
    return dict(pair for pair in pairs if len(pair) == 2)


def test_stats_prints_subscribers_emails_and_queue(
    app: Flask, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    for n in range(3):
        active_subscriber(services, f"p{n}@example.com", clock.now)
    with session_scope(services.sessions) as session:
        sign_up(session, services, "pending@example.com", clock.now)
    schedule.tick(services)
    result = app.test_cli_runner().invoke(args=["stats"])
    assert result.exit_code == 0, result.output
    figures = figures_in(result.output)
    assert figures["subscribers_active"] == "3"
    assert figures["subscribers_pending"] == "1"
    assert figures["jobs_queued"] == "1"
    run_worker(services)
    result = app.test_cli_runner().invoke(args=["stats"])
    figures = figures_in(result.output)
    assert figures["emails_sent"] == "4"
    assert figures["emails_sent_last_24h"] == "4"
    assert figures["jobs_queued"] == "0"
    assert figures["due_now"] == "0"
    assert "complaint rate 0.00% (0 of 4 sent): under Gmail's 0.3% limit" in result.output


def test_the_scheduler_forgets_stale_sign_ups_and_queues_due_work(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        sign_up(session, services, "stale@example.com", clock.now)
    clock.advance(timedelta(days=31))
    active_subscriber(services, "ada@example.com", clock.now)
    assert schedule.housekeeping(services) == 1
    assert schedule.tick(services) == 1
    run_worker(services)
    assert [r.envelope_to for r in smtp.messages] == [["ada@example.com"]]


def test_the_scheduler_command_ticks_once(
    services: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = services.settings
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("QUEUE_NAME", settings.queue_name)
    active_subscriber(services, "ada@example.com", services.clock())
    assert schedule.main(["--once"]) == 0
    assert "queued 1" in capsys.readouterr().out
    assert services.queue.count == 1


def test_the_scheduler_command_explains_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEP_INTERVAL", "fortnightly")
    assert schedule.main(["--once"]) == 2
    assert "STEP_INTERVAL: cannot read interval 'fortnightly'" in capsys.readouterr().err


def test_init_db_migrates_an_empty_database_to_the_latest_revision(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'fresh' / 'onward.db'}")
    services = Services(settings)
    runner = create_app(services=services).test_cli_runner()
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    head = head_revision()
    assert head is not None
    assert f"database ready at revision {head}" in result.output
    assert current_revision(services.engine) == head
    tables = set(inspect(services.engine).get_table_names())
    assert {"subscriber", "consent", "delivery", "alembic_version"} <= tables
    # Running it again is harmless: the database is already there.
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    assert f"database ready at revision {head}" in result.output
    services.close()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STEP_INTERVAL", "soon", "STEP_INTERVAL: cannot read interval"),
        ("TICK_INTERVAL", "0s", "TICK_INTERVAL: interval '0s' must be longer than zero"),
        ("BATCH_SIZE", "lots", "BATCH_SIZE must be a whole number above zero"),
        ("SMTP_URL", "http://mail", "SMTP_URL must look like smtp://host:port"),
    ],
)
def test_bad_settings_get_a_message_naming_them(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({name: value})


def test_the_scheduler_command_needs_a_redis_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert schedule.main(["--once"]) == 2
    assert "REDIS_URL is not set" in capsys.readouterr().err
