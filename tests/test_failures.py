"""Failure classes against a real SMTP server: every row of the table, breaker, our errors."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from app import create_app
from app.breaker import BASE_COOLDOWN, MAX_COOLDOWN, Gate
from app.checks import check_base_url, check_emails
from app.config import ConfigError, Rate
from app.db import session_scope
from app.failures import RULES, FailureClass, Stage, classify
from app.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from app.sending import send_batch
from app.services import Services
from tests.support import FakeClock, SmtpSink, active_subscriber, claim, free_port

F = FailureClass

#: (stage, answer, class): at least one real exchange for every row of the table.
CASES: list[tuple[Stage, str, FailureClass]] = [
    (Stage.RCPT, "421 4.7.0 Too many connections, slow down", F.THROTTLED),
    (Stage.MAIL, "454 4.7.0 Temporary failure, try again later", F.THROTTLED),
    (Stage.RCPT, "451 4.7.1 Rate limit exceeded", F.THROTTLED),
    (Stage.DATA, "450 4.7.1 Too many messages, try later", F.THROTTLED),
    (Stage.MAIL, "553 5.1.7 The sender address is invalid", F.SENDER),
    (Stage.RCPT, "553 5.1.8 Sender domain does not resolve", F.SENDER),
    (Stage.MAIL, "550 Sender rejected", F.SENDER),
    (Stage.MAIL, "451 Sender temporarily refused", F.SENDER),
    (Stage.RCPT, "452 4.2.2 Mailbox full", F.RECIPIENT_TEMPORARY),
    (Stage.DATA, "552 5.2.2 Mailbox full", F.RECIPIENT_TEMPORARY),
    (Stage.RCPT, "550 5.1.1 No such user", F.RECIPIENT_PERMANENT),
    (Stage.DATA, "550 5.1.1 Recipient unknown", F.RECIPIENT_PERMANENT),
    (Stage.RCPT, "550 5.2.1 Mailbox disabled", F.RECIPIENT_PERMANENT),
    (Stage.DATA, "554 5.7.1 Message rejected: Email address is not verified", F.SENDER),
    (Stage.RCPT, "550 5.7.1 Relaying denied", F.SENDER),
    (Stage.DATA, "552 5.3.4 Message too big", F.SENDER),
    (Stage.DATA, "554 5.5.0 Syntax error", F.SENDER),
    (Stage.DATA, "554 5.6.0 Malformed message", F.SENDER),
    (Stage.DATA, "451 4.3.0 Local error in processing", F.RELAY),
    (Stage.DATA, "451 4.4.1 No answer from host", F.RELAY),
    (Stage.RCPT, "450 Mailbox busy", F.RECIPIENT_TEMPORARY),
    (Stage.RCPT, "451 4.4.1 Recipient's host does not answer", F.RECIPIENT_TEMPORARY),
    (Stage.RCPT, "550 No such user here", F.RECIPIENT_PERMANENT),
    (Stage.RCPT, "550 5.4.4 Unable to route", F.RECIPIENT_PERMANENT),
    (Stage.DATA, "450 4.2.1 Mailbox busy", F.RECIPIENT_TEMPORARY),
    (Stage.DATA, "554 Transaction failed", F.SENDER),
    (Stage.DATA, "451 Try again later", F.RELAY),
]


def code_and_text(answer: str) -> tuple[int, str]:
    code, _, text = answer.partition(" ")
    return int(code), text


def test_every_row_of_the_table_has_a_real_server_case() -> None:
    matched = set()
    for stage, answer, expected in CASES:
        rule = classify(stage, *code_and_text(answer))
        assert rule.cls == expected, (stage, answer, rule)
        matched.add(RULES.index(rule))
    connect_rows = {i for i, rule in enumerate(RULES) if rule.stages == {Stage.CONNECT}}
    # The connect-stage row is proven by the login and unreachable-relay tests below.
    assert matched | connect_rows == set(range(len(RULES)))


@pytest.fixture
def limited(services: Services) -> Iterator[Services]:
    """The same services with a SEND_RATE, so throttling has a rate to slow."""
    svc = Services(services.settings.with_changes(send_rate=Rate(1000, 1)), clock=services.clock)
    yield svc
    svc.close()


def delivery_of(services: Services, subscriber_id: int) -> Delivery:
    with session_scope(services.sessions) as session:
        row = session.scalars(select(Delivery).where(Delivery.subscriber_id == subscriber_id)).one()
        session.expunge(row)
        return row


def subscriber(services: Services, subscriber_id: int) -> Subscriber:
    with session_scope(services.sessions) as session:
        row = session.get_one(Subscriber, subscriber_id)
        session.expunge(row)
        return row


@pytest.mark.parametrize(("stage", "answer", "cls"), CASES, ids=[c[1][:28] for c in CASES])
def test_each_answer_at_its_stage_does_what_its_class_says(
    limited: Services,
    smtp: SmtpSink,
    clock: FakeClock,
    stage: Stage,
    answer: str,
    cls: FailureClass,
) -> None:
    services = limited
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(2)]
    smtp.answers[stage.value] = answer
    claim(services, ids, clock.now)
    report = send_batch(services, ids).as_dict()
    first = subscriber(services, ids[0])
    assert smtp.messages == []
    assert services.breaker.state().open == cls.stops_sender
    assert services.send_rate is not None
    assert (services.send_rate.factor() < 1) == (cls == F.THROTTLED)
    if cls == F.RECIPIENT_PERMANENT:
        assert report == {"bounced": 2}
        assert first.status == SubscriberStatus.BOUNCED
        assert delivery_of(services, ids[0]).status == DeliveryStatus.FAILED
    elif cls == F.RECIPIENT_TEMPORARY:
        assert report == {"deferred": 2}
        assert first.status == SubscriberStatus.ACTIVE
        assert first.send_failures == 1
        assert first.next_send_at is not None and first.next_send_at > clock.now
    else:
        # The sender, the relay or a throttle: the batch stops, nobody is blamed. An
        # answer after DATA comes once the whole wave (one email per connection) is
        # in flight: each email in it gets its own answer and waits.
        if stage == Stage.DATA:
            assert report == {"deferred": 2}
        else:
            assert report == {"deferred": 1, "waiting": 1}
        for subscriber_id in ids:
            row = subscriber(services, subscriber_id)
            assert row.status == SubscriberStatus.ACTIVE
            assert row.send_failures == 0
            assert row.claimed_until is None
            assert row.next_send_at is not None and row.next_send_at > clock.now


def test_a_refusal_of_our_sender_bounces_nobody_and_is_logged_once(
    services: Services, smtp: SmtpSink, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(5)]
    smtp.answers["data"] = "554 5.7.1 Message rejected: Email address is not verified"
    caplog.set_level(logging.INFO)
    claim(services, ids, clock.now)
    # The refusal comes after DATA, once a whole wave (one email per connection) is in
    # flight: each of those is refused and waits; the rest of the batch is not tried.
    assert services.settings.send_connections == 4
    assert send_batch(services, ids).as_dict() == {"deferred": 4, "waiting": 1}
    # A second worker with another batch does not even try while the breaker is open.
    more = [active_subscriber(services, f"q{n}@example.com", clock.now) for n in range(3)]
    claim(services, more, clock.now)
    connections = smtp.connections
    assert send_batch(services, more).as_dict() == {"waiting": 3}
    assert smtp.connections == connections
    stopped = [r for r in caplog.records if "sending stopped" in r.getMessage()]
    assert len(stopped) == 1
    assert "5.7.1" in stopped[0].getMessage()
    with session_scope(services.sessions) as session:
        statuses = set(session.scalars(select(Subscriber.status)))
    assert statuses == {SubscriberStatus.ACTIVE}
    state = services.breaker.state()
    assert state.open and "not verified" in state.reason
    assert state.until == clock.now + BASE_COOLDOWN


def test_the_breaker_probes_with_one_email_and_grows_its_cool_down(
    services: Services, smtp: SmtpSink, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(4)]
    smtp.answers["mail"] = "550 5.7.1 Sender not allowed"
    claim(services, ids, clock.now)
    send_batch(services, ids)
    cooldowns = [BASE_COOLDOWN]
    for _ in range(8):
        clock.advance(cooldowns[-1])
        assert claim(services, ids, clock.now) == ids
        # One probe email goes out; it fails, so the rest wait for a longer cool-down.
        assert send_batch(services, ids).as_dict() == {"deferred": 1, "waiting": 3}
        until = services.breaker.state().until
        assert until is not None
        cooldowns.append(until - clock.now)
    assert cooldowns == sorted(cooldowns)
    assert cooldowns[1] == 2 * BASE_COOLDOWN
    assert cooldowns[-1] == MAX_COOLDOWN
    del smtp.answers["mail"]
    clock.advance(cooldowns[-1])
    caplog.set_level(logging.INFO)
    assert claim(services, ids, clock.now) == ids
    assert send_batch(services, ids).as_dict() == {"sent": 4}
    assert not services.breaker.state().open
    assert any("sending resumed" in r.getMessage() for r in caplog.records)
    assert all(subscriber(services, n).send_failures == 0 for n in ids)


def test_a_probe_that_reaches_no_verdict_lets_the_next_email_probe(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(3)]
    smtp.answers["data"] = "554 5.7.1 Message rejected: Email address is not verified"
    claim(services, ids, clock.now)
    send_batch(services, ids)
    assert services.breaker.state().open
    # The cool-down is over; the probe email meets a throttle, which says nothing
    # about our sender.
    smtp.answers = {"mail": "421 4.7.0 Too many messages, slow down"}
    clock.advance(BASE_COOLDOWN)
    claim(services, ids, clock.now)
    assert send_batch(services, ids).as_dict() == {"deferred": 1, "waiting": 2}
    # The next email may probe at once, instead of every worker waiting for the
    # lost probe to time out.
    assert services.breaker.gate(clock.now) == Gate.PROBE
    services.breaker.end_probe()
    smtp.answers = {}
    more = [active_subscriber(services, f"q{n}@example.com", clock.now) for n in range(2)]
    claim(services, more, clock.now)
    assert send_batch(services, more).as_dict() == {"sent": 2}
    assert not services.breaker.state().open


def test_a_probe_with_nothing_to_send_lets_the_next_email_probe_at_once(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(2)]
    smtp.answers["data"] = "554 5.7.1 Message rejected: Email address is not verified"
    claim(services, ids[:1], clock.now)
    send_batch(services, ids[:1])
    assert services.breaker.state().open
    clock.advance(BASE_COOLDOWN)
    smtp.answers = {}
    # The batch that takes the probe finds its email no longer due (moved on meanwhile).
    claim(services, ids[1:], clock.now)
    with session_scope(services.sessions) as session:
        session.get_one(Subscriber, ids[1]).next_send_at = clock.now + timedelta(days=1)
    assert send_batch(services, ids[1:]).as_dict() == {"skipped": 1}
    # No worker waits out PROBE_TIMEOUT for a probe that never went.
    assert services.breaker.gate(clock.now) == Gate.PROBE


def test_an_unreachable_relay_opens_the_breaker_and_bounces_nobody(
    services: Services, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    down = Services(
        services.settings.with_changes(smtp_url=f"smtp://127.0.0.1:{free_port()}"), clock=clock
    )
    claim(services, [subscriber_id], clock.now)
    assert send_batch(down, [subscriber_id]).as_dict() == {"deferred": 1}
    down.close()
    assert services.breaker.state().open
    assert subscriber(services, subscriber_id).status == SubscriberStatus.ACTIVE


def test_readyz_and_stats_name_the_relay_state(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    app = create_app(services=services)
    assert app.test_client().get("/readyz").get_json()["relay"] == "ok"
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    smtp.answers["data"] = "554 5.7.1 Message rejected: Email address is not verified"
    claim(services, [subscriber_id], clock.now)
    send_batch(services, [subscriber_id])
    answer = app.test_client().get("/readyz")
    assert answer.status_code == 200, "the web app still serves sign-ups"
    assert answer.get_json()["relay"].startswith("stopped until")
    assert "not verified" in answer.get_json()["relay"]
    result = app.test_cli_runner().invoke(args=["stats"])
    assert result.exit_code == 0, result.output
    relay_line = next(line for line in result.output.splitlines() if line.startswith("relay "))
    assert "stopped until" in relay_line and "5.7.1" in relay_line


def test_throttling_slows_every_worker_and_says_so(
    limited: Services, smtp: SmtpSink, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    services = limited
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(3)]
    smtp.answers["rcpt"] = "421 4.7.0 Too many messages, slow down"
    caplog.set_level(logging.WARNING)
    claim(services, ids, clock.now)
    send_batch(services, ids)
    assert services.send_rate is not None
    assert services.send_rate.factor() == pytest.approx(0.5, abs=0.01)
    # Another process shares the slowed rate through Redis.
    other = Services(services.settings, clock=clock)
    assert other.send_rate is not None
    assert other.send_rate.factor() == pytest.approx(0.5, abs=0.01)
    other.close()
    assert any("throttling" in r.getMessage() for r in caplog.records)
    assert all(subscriber(services, n).status == SubscriberStatus.ACTIVE for n in ids)


# --- our own errors ----------------------------------------------------------------------


@pytest.fixture
def broken_emails(services: Services, tmp_path: Path) -> Iterator[Services]:
    """Services whose step 1 template uses a variable no email has."""
    folder = tmp_path / "emails"
    shutil.copytree(services.settings.emails_dir, folder)
    step = folder / "step-01.mjml"
    step.write_text(step.read_text().replace("{% if first_name %}", "{% if no_such_value %}", 1))
    broken = Services(services.settings.with_changes(emails_dir=folder), clock=services.clock)
    yield broken
    broken.close()


def test_a_template_that_does_not_render_blames_nobody_and_is_reported_once(
    broken_emails: Services, smtp: SmtpSink, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    services = broken_emails
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(3)]
    caplog.set_level(logging.INFO)
    for _ in range(12):
        claim(services, ids, clock.now)
        assert send_batch(services, ids).as_dict() == {"deferred": 3}
        clock.advance(timedelta(hours=2))
    reports = [r for r in caplog.records if "cannot be rendered" in r.getMessage()]
    assert len(reports) == 1 and "step-01" in reports[0].getMessage()
    for subscriber_id in ids:
        row = subscriber(services, subscriber_id)
        assert row.status == SubscriberStatus.ACTIVE
        assert row.send_failures == 0
        assert row.next_send_at is not None, "the step waits for the fix"
    with pytest.raises(ConfigError, match="email step-01 cannot be built"):
        check_emails(services)


def test_a_bad_base_url_is_refused_at_start_and_blames_nobody_at_send(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    for bad in ("https://onward.test/a b", "onward.test", "ftp://onward.test", "https://"):
        with pytest.raises(ConfigError, match="BASE_URL must be a full URL"):
            check_base_url(bad)
    check_base_url("https://onward.test/course")
    spaced = Services(
        services.settings.with_changes(base_url="https://onward.test/a b"), clock=clock
    )
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    claim(services, [subscriber_id], clock.now)
    assert send_batch(spaced, [subscriber_id]).as_dict() == {"deferred": 1}
    spaced.close()
    assert subscriber(services, subscriber_id).send_failures == 0
    assert smtp.messages == []


def test_a_sending_process_refuses_to_start_with_a_broken_template(
    broken_emails: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.schedule import main

    settings = broken_emails.settings
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("EMAILS_DIR", str(settings.emails_dir))
    monkeypatch.setenv("BASE_URL", "https://onward.test")
    monkeypatch.setenv("SECRET_KEY", settings.secret_key)
    assert main(["--once"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "email step-01 cannot be built" in err[0]
    monkeypatch.setenv("BASE_URL", "https://onward.test/a b")
    assert main(["--once"]) == 2
    assert "BASE_URL must be a full URL" in capsys.readouterr().err


def test_an_email_that_cannot_be_encoded_is_capped_then_failed_never_bounced(
    services: Services, clock: FakeClock
) -> None:
    # A relay without SMTPUTF8, and an address only SMTPUTF8 can carry (signed up
    # while SMTP_UTF8 was on): our problem, never the subscriber's.
    plain = SmtpSink()
    controller = Controller(plain, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=False)
    controller.start()
    relay = Services(
        services.settings.with_changes(smtp_url=f"smtp://127.0.0.1:{controller.port}"),
        clock=clock,
    )
    try:
        ids = [
            active_subscriber(services, "zoë@example.com", clock.now),
            active_subscriber(services, "ada@example.com", clock.now),
        ]
        outcomes = []
        for _ in range(20):
            if claim(services, ids, clock.now):
                outcomes.append(send_batch(relay, ids).as_dict())
            clock.advance(timedelta(hours=2))
        assert outcomes[0] == {"deferred": 1, "sent": 1}
        assert sum(outcome.get("failed", 0) for outcome in outcomes) == 1
        row = subscriber(services, ids[0])
        assert row.status == SubscriberStatus.ACTIVE
        assert row.next_send_at is None, "held for the operator"
        assert delivery_of(services, ids[0]).status == DeliveryStatus.FAILED
        assert "SMTPUTF8" in (delivery_of(services, ids[0]).error or "")
        app = create_app(services=services)
        result = app.test_cli_runner().invoke(args=["stats"])
        assert "emails_failed" in result.output
        assert "failed email" in result.output and "SMTPUTF8" in result.output
        assert len(plain.to("ada@example.com")) >= 1
    finally:
        relay.close()
        controller.stop()
