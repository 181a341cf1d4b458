"""Outbound webhooks: events in the outbox with their change, signed delivery to a real
HTTP receiver, at least once with one id across retries, backoff, and disabling."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

import worker.schedule
from app import drip, outbound
from app.db import session_scope
from app.models import Subscriber, WebhookAttempt, WebhookEndpoint, WebhookEvent
from app.services import Services
from tests.support import FakeClock, SmtpSink, active_subscriber, run_worker, sign_up


class Receiver:
    """A real HTTP server that checks Standard Webhooks signatures and counts deliveries."""

    def __init__(self) -> None:
        self.secret = ""
        #: Answer this status to the next `fail_next` requests.
        self.fail_next = 0
        self.fail_status = 500
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.take(self.headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def verify(self, headers: Any, body: bytes) -> bool:
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        offered = [part.removeprefix("v1,") for part in headers["webhook-signature"].split()]
        return any(hmac.compare_digest(expected, sig) for sig in offered)

    def take(self, headers: Any, body: bytes) -> int:
        with self.lock:
            if not self.verify(headers, body):
                self.bad_signatures += 1
                return 401
            if self.fail_next:
                self.fail_next -= 1
                return self.fail_status
            self.received.append({"id": headers["webhook-id"], **json.loads(body)})
            return 204

    @property
    def duplicates(self) -> int:
        """Deliveries of an id already received (a receiver ignores them by id)."""
        return sum(n - 1 for n in Counter(r["id"] for r in self.received).values())

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.stop()


def endpoint(services: Services, receiver: Receiver, events: list[str] | None = None) -> int:
    with session_scope(services.sessions) as session:
        made = outbound.create_endpoint(
            session, receiver.url, events or list(outbound.EVENT_TYPES), now=services.clock()
        )
        receiver.secret = made.secret
        return made.id


def deliver(services: Services, **kwargs: Any) -> dict[str, int]:
    return outbound.deliver_due(services.sessions, clock=services.clock, **kwargs)


def test_the_signature_follows_standard_webhooks() -> None:
    # The example of the Standard Webhooks specification (and its reference libraries).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        outbound.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_every_change_reaches_the_receiver_signed_and_once(
    services: Services, receiver: Receiver, clock: FakeClock, smtp: SmtpSink
) -> None:
    endpoint(services, receiver)
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    worker.schedule.tick(services)
    run_worker(services)  # sends step 1 (and delivers the first events)
    with session_scope(services.sessions) as session:
        found = session.get_one(Subscriber, subscriber_id)
        assert drip.pause(session, found, now=clock.now)
    with session_scope(services.sessions) as session:
        found = session.get_one(Subscriber, subscriber_id)
        assert drip.resume(session, found, policy=services.policy, now=clock.now)
    with session_scope(services.sessions) as session:
        found = session.get_one(Subscriber, subscriber_id)
        assert drip.unsubscribe(session, found, keys=services.mailbox_keys, now=clock.now)
    assert worker.schedule.queue_webhooks(services)
    run_worker(services)
    assert receiver.bad_signatures == 0
    assert [r["type"] for r in receiver.received] == [
        "subscribed",
        "confirmed",
        "step_sent",
        "paused",
        "resumed",
        "unsubscribed",
    ]
    step = receiver.received[2]["data"]
    assert step == {
        "subscriber_id": subscriber_id,
        "email": "ada@example.com",
        "status": "active",
        "step": 1,
    }
    assert receiver.duplicates == 0
    assert not worker.schedule.queue_webhooks(services)


def test_only_the_events_asked_for_and_none_from_a_rolled_back_change(
    services: Services, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint(services, receiver, ["paused"])
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    with pytest.raises(RuntimeError), session_scope(services.sessions) as session:
        found = session.get_one(Subscriber, subscriber_id)
        assert drip.pause(session, found, now=clock.now)
        session.flush()
        raise RuntimeError("the request failed after the change")
    assert deliver(services) == {}
    with session_scope(services.sessions) as session:
        found = session.get_one(Subscriber, subscriber_id)
        assert drip.pause(session, found, now=clock.now)
    assert deliver(services) == {"delivered": 1}
    assert [r["type"] for r in receiver.received] == ["paused"]


def test_a_complaint_is_reported_as_one(
    services: Services, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint(services, receiver, ["unsubscribed", "complained"])
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    with session_scope(services.sessions) as session:
        found = session.get_one(Subscriber, subscriber_id)
        assert drip.complain(session, found, keys=services.mailbox_keys, now=clock.now)
    deliver(services)
    assert [r["type"] for r in receiver.received] == ["complained"]


def test_failures_are_retried_with_backoff_under_the_same_id(
    services: Services, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint(services, receiver, ["subscribed"])
    with session_scope(services.sessions) as session:
        sign_up(session, services, "ada@example.com", clock.now)
    receiver.fail_next = 2
    assert deliver(services) == {"pending": 1}
    assert deliver(services) == {}, "retried before its backoff"
    clock.advance(outbound.BACKOFF[0])
    assert deliver(services) == {"pending": 1}
    clock.advance(outbound.BACKOFF[1])
    assert deliver(services) == {"delivered": 1}
    with session_scope(services.sessions) as session:
        event = session.scalars(select(WebhookEvent)).one()
        attempts = session.scalars(select(WebhookAttempt)).all()
        assert (event.status, event.attempts) == ("delivered", 3)
        assert [a.status_code for a in attempts] == [500, 500, 204]
    assert len(receiver.received) == 1


def test_a_lost_answer_means_a_duplicate_with_the_same_id(
    services: Services, receiver: Receiver, clock: FakeClock
) -> None:
    """At least once: a delivery whose answer is lost is sent again, with the same id."""
    endpoint(services, receiver, ["subscribed"])
    with session_scope(services.sessions) as session:
        sign_up(session, services, "ada@example.com", clock.now)
    lost = []

    def answer_lost(url: str, body: bytes, headers: dict[str, str]) -> int:
        outbound.http_post(url, body, headers)
        if not lost:
            lost.append(headers["webhook-id"])
            raise TimeoutError("timed out reading the answer")
        return 204

    deliver(services, post=answer_lost)
    clock.advance(outbound.BACKOFF[0])
    deliver(services, post=answer_lost)
    assert len(receiver.received) == 2
    assert receiver.duplicates == 1
    assert {r["id"] for r in receiver.received} == set(lost)


def test_an_endpoint_that_keeps_failing_is_disabled_after_about_a_day(
    services: Services, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint_id = endpoint(services, receiver, ["subscribed"])
    with session_scope(services.sessions) as session:
        sign_up(session, services, "ada@example.com", clock.now)
    receiver.fail_next = 1000
    started = clock.now
    outcomes = []
    for wait in (timedelta(0), *outbound.BACKOFF):
        clock.advance(wait)
        outcomes.append(deliver(services))
    assert outcomes[-1] == {"failed": 1}
    assert all(o == {"pending": 1} for o in outcomes[:-1])
    assert timedelta(hours=20) < clock.now - started < timedelta(hours=30)
    with session_scope(services.sessions) as session:
        found = session.get_one(WebhookEndpoint, endpoint_id)
        assert not found.enabled
        assert found.disabled_reason and "failed 10 times" in found.disabled_reason
        # New events still wait in the outbox while it is off; enabling sends them.
        sign_up(session, services, "bea@example.com", clock.now)
    assert deliver(services) == {}
    receiver.fail_next = 0
    with session_scope(services.sessions) as session:
        assert outbound.enable(session, endpoint_id)
    assert deliver(services) == {"delivered": 1}


def test_erasing_a_subscription_deletes_its_events(
    services: Services, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint(services, receiver)
    with session_scope(services.sessions) as session:
        erased = sign_up(session, services, "ada@example.com", clock.now).subscriber_id
        kept = sign_up(session, services, "bea@example.com", clock.now).subscriber_id
    deliver(services)
    with session_scope(services.sessions) as session:
        found = session.get_one(Subscriber, erased)
        assert drip.unsubscribe(session, found, keys=services.mailbox_keys, now=clock.now)
        session.flush()
        drip.forget(session, found, keys=services.mailbox_keys, now=clock.now)
    with session_scope(services.sessions) as session:
        left = session.scalars(select(WebhookEvent.subscriber_id)).all()
        assert left == [kept]
        assert "ada@example.com" not in " ".join(session.scalars(select(WebhookEvent.payload)))
    assert deliver(services) == {}
