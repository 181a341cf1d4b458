"""A worker killed at any moment neither loses an email nor sends one twice.

Each email's ledger row is marked `handed_at` when the relay has all of it but
its final "."; a row left `sending` by a dead worker is sent again only if it
was never marked. These tests kill real worker processes (SIGKILL) at the two
moments that matter, against a real SMTP server that holds its answer there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from app import sending, store
from app.db import session_scope, utcnow
from app.models import Delivery, DeliveryStatus, Subscriber
from app.sending import send_batch
from app.services import Services
from tests.support import FakeClock, SmtpSink, active_subscriber, claim, run_worker, serving
from worker.schedule import tick

ROOT = Path(__file__).resolve().parent.parent
#: The worker process renewed its claim on the real clock, a moment after the test's.
AFTER_THE_WORKER = timedelta(seconds=30)


class HoldingSink(SmtpSink):
    """Holds its answer at one stage ("rcpt" or "data") until released; counts messages."""

    def __init__(self, hold: str) -> None:
        super().__init__()
        self.hold = hold
        self.reached = threading.Event()
        self.released = threading.Event()

    async def _wait(self) -> None:
        self.reached.set()
        while not self.released.is_set():
            await asyncio.sleep(0.01)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.hold == "rcpt" and not self.released.is_set():
            await self._wait()
            return "421 4.3.0 gone"
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        if self.hold == "data" and not self.released.is_set():
            # The whole message and its final "." arrived: it is delivered here.
            await self._wait()
        return answer


def ledger(services: Services, subscriber_id: int) -> Delivery:
    with session_scope(services.sessions) as session:
        return session.scalars(
            select(Delivery).where(Delivery.subscriber_id == subscriber_id)
        ).one()


def next_step(services: Services, subscriber_id: int) -> int:
    with session_scope(services.sessions) as session:
        return session.get_one(Subscriber, subscriber_id).next_step


SEND_IN_A_PROCESS = """
import sys
from app.config import Settings
from app.sending import send_batch
from app.services import Services
send_batch(Services(Settings.from_env()), [int(sys.argv[1])])
"""


def kill_while_held(services: Services, sink: HoldingSink, subscriber_id: int) -> None:
    """Send the email from a worker process of its own, and kill -9 it while the relay holds."""
    settings = services.settings
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "QUEUE_NAME": settings.queue_name,
        "SMTP_URL": f"smtp://127.0.0.1:{sink.port}",  # type: ignore[attr-defined]
        "SECRET_KEY": settings.secret_key,
        "BASE_URL": settings.base_url,
        "MAIL_FROM": settings.mail_from,
        "POSTAL_ADDRESS": settings.postal_address,
        "INSTANCE_DIR": str(settings.instance_dir),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SEND_IN_A_PROCESS, str(subscriber_id)], cwd=ROOT, env=env
    )
    try:
        assert sink.reached.wait(60), "the worker process never reached the relay"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        sink.released.set()


@pytest.fixture
def holding(request: pytest.FixtureRequest) -> Any:
    with serving(HoldingSink(request.param)) as sink:
        yield sink
        sink.released.set()


@pytest.mark.parametrize("holding", ["data"], indirect=True)
def test_a_worker_killed_after_the_relay_had_the_whole_email_never_sends_it_again(
    services: Services, holding: HoldingSink, smtp: SmtpSink, clock: FakeClock
) -> None:
    clock.now = utcnow()  # the worker process runs on the real clock
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    claim(services, [subscriber_id], clock.now)
    kill_while_held(services, holding, subscriber_id)
    assert len(holding.messages) == 1
    row = ledger(services, subscriber_id)
    assert row.status == DeliveryStatus.SENDING and row.handed_at is not None
    # Once the dead worker's lease lapses, the next batch counts the email as sent.
    clock.advance(services.settings.claim_lease + AFTER_THE_WORKER)
    assert tick(services) == 1
    run_worker(services)
    row = ledger(services, subscriber_id)
    assert row.status == DeliveryStatus.SENT
    assert row.sent_at == row.handed_at
    assert next_step(services, subscriber_id) == 2
    assert len(holding.messages) == 1
    assert smtp.messages == []  # nothing went out again, to either relay


@pytest.mark.parametrize("holding", ["rcpt"], indirect=True)
def test_a_worker_killed_before_the_relay_had_the_whole_email_sends_it_once_later(
    services: Services, holding: HoldingSink, smtp: SmtpSink, clock: FakeClock
) -> None:
    clock.now = utcnow()
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    claim(services, [subscriber_id], clock.now)
    kill_while_held(services, holding, subscriber_id)
    assert holding.messages == []
    first = ledger(services, subscriber_id)
    assert first.status == DeliveryStatus.SENDING and first.handed_at is None
    assert tick(services) == 0  # within the lease nobody touches it
    clock.advance(services.settings.claim_lease + AFTER_THE_WORKER)
    assert tick(services) == 1
    run_worker(services)  # through the tests' usual SMTP server
    assert [m.message["Message-ID"] for m in smtp.messages] == [first.message_id]
    assert ledger(services, subscriber_id).status == DeliveryStatus.SENT


def test_each_email_is_marked_handed_over_before_its_final_dot(
    services: Services, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(5)]
    marked_on_arrival: list[bool] = []
    handle = smtp.handle_DATA

    async def check_the_ledger(server: Any, session: Any, envelope: Any) -> str:
        # Runs once the relay has the message and its final ".".
        message_id = next(
            line.split(b":", 1)[1].strip().decode()
            for line in envelope.content.splitlines()
            if line.lower().startswith(b"message-id:")
        )
        with session_scope(services.sessions) as db:
            row = db.scalars(select(Delivery).where(Delivery.message_id == message_id)).one()
            marked_on_arrival.append(row.handed_at is not None)
        return await handle(server, session, envelope)

    monkeypatch.setattr(smtp, "handle_DATA", check_the_ledger)
    claim(services, ids, clock.now)
    assert send_batch(services, ids).as_dict() == {"sent": 5}
    assert marked_on_arrival == [True] * 5


def test_an_email_that_cannot_be_marked_is_abandoned_and_sent_once_later(
    services: Services, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(3)]
    mark = store.Handover.mark

    def database_gone(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("UPDATE delivery", {}, ConnectionError("server closed"))

    monkeypatch.setattr(store.Handover, "mark", database_gone)
    monkeypatch.setattr(sending, "RECORD_TIME_SHARE", 0.0)
    claim(services, ids, clock.now)
    with pytest.raises(OperationalError):
        send_batch(services, ids)
    # The relay got the first message without its final "." and dropped it.
    assert smtp.messages == []
    monkeypatch.setattr(store.Handover, "mark", mark)
    clock.advance(services.settings.claim_lease)
    assert tick(services) == 3
    run_worker(services)
    assert sorted(m.envelope_to[0] for m in smtp.messages) == [
        f"r{n}@example.com" for n in range(3)
    ]


def test_an_erased_subscription_is_not_completed_mid_batch(
    services: Services, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(2)]
    mark = store.Handover.mark

    def erased_meanwhile(self: store.Handover, delivery_ids: list[int], now: Any) -> set[int]:
        with session_scope(services.sessions) as session:
            store.erase_address(session, "r0@example.com")
        return mark(self, delivery_ids, now)

    monkeypatch.setattr(store.Handover, "mark", erased_meanwhile)
    claim(services, ids, clock.now)
    assert send_batch(services, ids).as_dict() == {"skipped": 1, "sent": 1}
    assert [m.envelope_to[0] for m in smtp.messages] == ["r1@example.com"]


def test_a_wave_goes_out_one_email_per_connection_with_one_mark(
    services: Services, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(6)]
    mark = store.Handover.mark
    marks: list[int] = []

    def counted(self: store.Handover, delivery_ids: list[int], now: Any) -> set[int]:
        marks.append(len(delivery_ids))
        return mark(self, delivery_ids, now)

    monkeypatch.setattr(store.Handover, "mark", counted)
    claim(services, ids, clock.now)
    assert send_batch(services, ids).as_dict() == {"sent": 6}
    assert marks == [4, 2]  # SEND_CONNECTIONS is 4: two waves, a commit each
    assert smtp.connections == 4
    assert len({m.message["Message-ID"] for m in smtp.messages}) == 6


def test_a_batch_that_fails_mid_wave_leaves_the_relay_nothing_and_hangs_on_nothing(
    services: Services, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(3)]

    class RedisGone:
        def reserve(self) -> float:
            raise RedisConnectionError("Redis went away")

    # Redis fails after the wave's emails were started, before any was marked.
    services.__dict__["send_rate"] = RedisGone()
    claim(services, ids, clock.now)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        send_batch(services, ids)
    # The started messages were abandoned (a QUIT would have waited on the relay as data).
    assert time.monotonic() - started < services.settings.smtp.timeout
    assert smtp.messages == []
    del services.__dict__["send_rate"]
    clock.advance(services.settings.claim_lease)
    assert tick(services) == 3
    run_worker(services)
    assert sorted(m.envelope_to[0] for m in smtp.messages) == [
        f"r{n}@example.com" for n in range(3)
    ]
