"""Sending through a real SMTP server and a real queue: no loss, no duplicates."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import select

from app import drip
from app.db import session_scope
from app.emails import Recipient, build_message, render
from app.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from app.sending import dispatch, send_batch
from app.services import Services
from tests.support import (
    FakeClock,
    SmtpSink,
    active_subscriber,
    begin,
    claim,
    free_port,
    run_worker,
    status_of,
)
from worker.schedule import tick


def ledger(services: Services) -> Counter[tuple[int, str, int, str]]:
    with session_scope(services.sessions) as session:
        rows = session.scalars(select(Delivery)).all()
        return Counter((d.subscriber_id, str(d.kind), d.number, str(d.status)) for d in rows)


def test_a_batch_goes_out_over_its_send_connections_reused(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(20)]
    assert tick(services) == 20
    run_worker(services)
    assert len(smtp.messages) == 20
    assert smtp.connections == services.settings.send_connections == 4
    assert sorted(r.envelope_to[0] for r in smtp.messages) == sorted(
        f"p{n}@example.com" for n in range(20)
    )
    assert all(count == 1 for count in ledger(services).values())
    assert {key[0] for key in ledger(services)} == set(ids)


def test_a_refused_recipient_bounces_and_the_rest_of_the_batch_is_sent(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    good = [active_subscriber(services, f"ok{n}@example.com", clock.now) for n in range(3)]
    bad = active_subscriber(services, "gone@example.com", clock.now)
    smtp.refuse["gone@example.com"] = (550, "5.1.1 No such user")
    tick(services)
    run_worker(services)
    assert len(smtp.messages) == 3
    assert status_of(services, bad) == SubscriberStatus.BOUNCED
    assert all(status_of(services, n) == SubscriberStatus.ACTIVE for n in good)
    # A bounced address gets nothing more.
    clock.advance(services.settings.step_interval * 3)
    tick(services)
    run_worker(services)
    assert smtp.to("gone@example.com") == []


def test_a_temporary_refusal_is_retried_later_and_then_delivered(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "busy@example.com", clock.now)
    smtp.refuse["busy@example.com"] = (451, "4.2.1 Mailbox busy, try later")
    tick(services)
    run_worker(services)
    assert smtp.messages == []
    assert tick(services) == 0, "the retry waits for its backoff"
    del smtp.refuse["busy@example.com"]
    clock.advance(drip.RETRY_DELAYS[0])
    assert tick(services) == 1
    run_worker(services)
    [received] = smtp.to("busy@example.com")
    assert received.subject.startswith("Step 1 of 10")
    assert ledger(services) == Counter({(subscriber_id, "step", 1, "sent"): 1})


def test_a_relay_outage_loses_nothing(services: Services, smtp: SmtpSink, clock: FakeClock) -> None:
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(5)]
    down = services.settings.with_changes(smtp_url=f"smtp://127.0.0.1:{free_port()}")
    outage = Services(down, clock=clock)
    claim(services, ids, clock.now)
    report = send_batch(outage, ids)
    outage.close()
    # The first failure stops the batch: the other four are not even tried.
    assert report.as_dict() == {"deferred": 1, "waiting": 4}
    assert all(status_of(services, n) == SubscriberStatus.ACTIVE for n in ids)
    assert tick(services) == 0
    clock.advance(drip.RETRY_DELAYS[0])
    assert tick(services) == 5
    run_worker(services)
    assert len(smtp.messages) == 5
    assert all(count == 1 for count in ledger(services).values())


def test_flushing_redis_loses_nothing(services: Services, smtp: SmtpSink, clock: FakeClock) -> None:
    for n in range(4):
        active_subscriber(services, f"p{n}@example.com", clock.now)
    assert tick(services) == 4
    services.queue.empty()  # the queued jobs are gone
    run_worker(services)
    assert smtp.messages == []
    clock.advance(services.settings.claim_lease)
    assert tick(services) == 4, "the next tick rebuilds the work from the database"
    run_worker(services)
    assert len(smtp.messages) == 4


def test_a_crash_after_the_relay_accepted_resends_with_the_same_message_id(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    # A worker records the send, the relay accepts it, then the worker dies.
    planned = begin(services, subscriber_id, clock.now)
    assert planned is not None
    recipient = Recipient(
        email=planned.email,
        first_name="",
        links=services.links(planned.subscriber_key),
        message_id=planned.message_id,
    )
    rendered = render(services.catalog.get(planned.template), services.sender, recipient)
    with services.mailer() as mailer:
        message = build_message(rendered, services.sender, recipient, now=clock.now)
        mailer.send(message, to=planned.email)
    clock.advance(services.settings.claim_lease)
    tick(services)
    run_worker(services)
    first, again = smtp.to("ada@example.com")
    assert first.message["Message-ID"] == again.message["Message-ID"] == planned.message_id
    assert ledger(services) == Counter({(subscriber_id, "step", 1, "sent"): 1})


def test_concurrent_workers_never_send_a_step_twice(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(30)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            claim(services, ids, clock.now)
            send_batch(services, ids)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(r.envelope_to[0] for r in smtp.messages) == sorted(
        f"p{n}@example.com" for n in range(30)
    )
    assert ledger(services) == Counter({(n, "step", 1, str(DeliveryStatus.SENT)): 1 for n in ids})


def test_two_ticks_at_once_queue_each_subscriber_once(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    for n in range(120):
        active_subscriber(services, f"p{n}@example.com", clock.now)
    barrier = threading.Barrier(2)
    queued: list[int] = []

    def scheduler() -> None:
        barrier.wait()
        queued.append(dispatch(services, now=clock.now))

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(queued) == 120
    run_worker(services)
    assert len(smtp.messages) == 120
    assert len({r.envelope_to[0] for r in smtp.messages}) == 120


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_login_from_the_url_reaches_the_relay(services: Services, clock: FakeClock) -> None:
    def authenticator(
        _server: object, _session: object, _envelope: object, _mechanism: str, auth: object
    ) -> AuthResult:
        ok = isinstance(auth, LoginPassword) and (auth.login, auth.password) == (
            b"onward",
            b"s3cret/pass",
        )
        return AuthResult(success=ok)

    sink = SmtpSink()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
        relay = f"127.0.0.1:{controller.port}"
        wrong = Services(
            services.settings.with_changes(smtp_url=f"smtp://onward:nope@{relay}?timeout=1"),
            clock=clock,
        )
        # A refused login is the relay's problem: deferred, never a bounce.
        claim(services, [subscriber_id], clock.now)
        assert send_batch(wrong, [subscriber_id]).as_dict() == {"deferred": 1}
        wrong.close()
        assert status_of(services, subscriber_id) == SubscriberStatus.ACTIVE
        right = Services(
            services.settings.with_changes(smtp_url=f"smtp://onward:s3cret%2Fpass@{relay}"),
            clock=clock,
        )
        clock.advance(drip.RETRY_DELAYS[0])
        claim(services, [subscriber_id], clock.now)
        assert send_batch(right, [subscriber_id]).as_dict() == {"sent": 1}
        right.close()
        assert len(sink.to("ada@example.com")) == 1
    finally:
        controller.stop()


def test_step_emails_wait_for_their_time(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    active_subscriber(services, "ada@example.com", clock.now)
    tick(services)
    run_worker(services)
    clock.advance(services.settings.step_interval - timedelta(seconds=1))
    assert tick(services) == 0
    clock.advance(timedelta(seconds=1))
    assert tick(services) == 1


def test_an_email_that_cannot_be_built_does_not_hold_up_its_batch(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(3)]
    with session_scope(services.sessions) as session:
        # A row written before addresses were checked: no To header can carry it.
        session.get_one(Subscriber, ids[1]).email = "eve@example.com>, all@example.com"
    claim(services, ids, clock.now)
    assert send_batch(services, ids).as_dict() == {"sent": 2, "deferred": 1}
    assert sorted(r.envelope_to[0] for r in smtp.messages) == ["p0@example.com", "p2@example.com"]
    assert status_of(services, ids[1]) == SubscriberStatus.ACTIVE
    with session_scope(services.sessions) as session:
        assert "ValueError" in (session.get_one(Subscriber, ids[1]).last_error or "")


@pytest.mark.parametrize("first", [b"Subject: dots\r\n\r\n", b"Subject: dots\r\n\r\n.starts\r\n"])
def test_lines_that_start_with_a_dot_arrive_unchanged(
    services: Services, smtp: SmtpSink, first: bytes
) -> None:
    body = first + b"one\r\n.hidden\r\n..two\r\n.\r\nend"
    with services.mailer() as mailer:
        mailer.send(body, to="ada@example.com", envelope_from="course@onward.test")
    [received] = smtp.messages
    assert received.raw == body + b"\r\n"
