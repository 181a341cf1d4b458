"""A wave's SMTP round trips overlap across its connections.

Each step (envelope, message, final ".") goes out on every connection of a wave
before any answer is read. These relays hold each answer until every connection
of the wave has reached that step: a sender that waited for one connection's
answer before writing to the next would never get it (the hold gives up after
HOLD_SECONDS and refuses, and the test fails).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from rq.timeouts import JobTimeoutException

from app import sending, store
from app.db import session_scope
from app.dkim import DkimSigner
from app.emails import EmailTemplateError, Recipient, render
from app.failures import FailureClass
from app.models import EmailKind, Subscriber
from app.sending import send_batch
from app.services import Services
from tests.support import FakeClock, SmtpSink, active_subscriber, claim, serving

#: How long a held answer waits for the rest of the wave before refusing.
HOLD_SECONDS = 10.0


class WaveSink(SmtpSink):
    """Holds its answer at `stage` ("mail" or "data") until `width` connections reached it."""

    def __init__(self, stage: str, width: int) -> None:
        super().__init__()
        self.stage = stage
        self.width = width
        self.arrived = 0
        self.gave_up = 0
        self.count_lock = threading.Lock()

    async def _hold(self) -> bool:
        """Wait for the wave's other connections; False if they never came."""
        with self.count_lock:
            self.arrived += 1
            target = -(-self.arrived // self.width) * self.width  # this wave's last arrival
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HOLD_SECONDS
        while self.arrived < target:
            if loop.time() > deadline:
                with self.count_lock:
                    self.gave_up += 1
                return False
            await asyncio.sleep(0.005)
        return True

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.stage == "mail" and not await self._hold():
            return "451 4.3.0 the other envelopes never came"
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.stage == "data" and not await self._hold():
            return "451 4.3.0 the other final dots never came"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def wave_sink(request: pytest.FixtureRequest, services: Services) -> Iterator[WaveSink]:
    with serving(WaveSink(request.param, services.settings.send_connections)) as sink:
        yield sink


@pytest.mark.parametrize("wave_sink", ["mail", "data"], indirect=True)
def test_each_step_goes_out_on_every_connection_before_an_answer_is_read(
    services: Services, wave_sink: WaveSink, clock: FakeClock
) -> None:
    assert services.settings.send_connections == 4
    port = wave_sink.port  # type: ignore[attr-defined]
    relay = Services(
        services.settings.with_changes(smtp_url=f"smtp://127.0.0.1:{port}"), clock=clock
    )
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(8)]
    claim(services, ids, clock.now)
    try:
        assert send_batch(relay, ids).as_dict() == {"sent": 8}
    finally:
        relay.close()
    assert wave_sink.gave_up == 0
    assert wave_sink.connections == 4
    assert sorted(m.envelope_to[0] for m in wave_sink.messages) == [
        f"r{n}@example.com" for n in range(8)
    ]


def test_a_relay_without_pipelining_gets_one_command_at_a_time(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    smtp.pipelining = False
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(6)]
    claim(services, ids, clock.now)
    assert send_batch(services, ids).as_dict() == {"sent": 6}
    assert len(smtp.messages) == 6


def test_a_refused_sender_mid_wave_leaves_the_envelopes_after_it_unsent(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(4)]
    smtp.answers["mail"] = "550 5.7.1 Sender not allowed"
    claim(services, ids, clock.now)
    report = send_batch(services, ids).as_dict()
    # Our sender is refused: the first email waits without counting against anyone,
    # and the batch stops; the three envelopes already sent are dropped unsent.
    assert report == {"deferred": 1, "waiting": 3}
    assert smtp.messages == []


def test_an_email_made_ahead_for_a_wave_that_never_comes_leaves_no_trace(
    services: Services, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # r4 and r5 are made (rendered, signed) while the first wave is in flight; making
    # r5 fails. The relay then defers the first wave and the batch stops: r5's failure
    # must not be recorded (its wave never came), and both go back unsent.
    def render_or_fail(template: Any, sender: Any, recipient: Recipient) -> Any:
        if recipient.email == "r5@example.com":
            raise EmailTemplateError("made ahead, never sent")
        return render(template, sender, recipient)

    monkeypatch.setattr(sending, "render", render_or_fail)
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(6)]
    smtp.answers["data"] = "421 4.7.0 Try again later"
    claim(services, ids, clock.now)
    report = send_batch(services, ids).as_dict()
    assert report["waiting"] == 2 and sum(report.values()) == 6
    with session_scope(services.sessions) as session:
        r5 = session.get_one(Subscriber, ids[5])
        assert r5.last_error is None and r5.send_failures == 0
        assert store.ledger_row(session, ids[5], EmailKind.STEP, 1) is None
    # Once the relay is back, r5's own turn reports its template error.
    del smtp.answers["data"]
    clock.advance(services.settings.claim_lease * 4)
    claim(services, ids, clock.now)
    report = send_batch(services, ids).as_dict()
    assert report == {"sent": 5, "deferred": 1}


def test_a_signature_that_cannot_be_made_defers_its_email_as_ours(
    services: Services, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Signatures are made in threads: what goes wrong there reaches its own email.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = DkimSigner("onward.test", "s1", b"", key)
    signature = signer.signature

    def fail_for_r1(signed: bytes) -> bytes:
        if b"r1@example.com" in signed:
            raise ValueError("no signature today")
        return signature(signed)

    object.__setattr__(signer, "signature", fail_for_r1)
    services.__dict__["dkim"] = signer
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(3)]
    claim(services, ids, clock.now)
    assert send_batch(services, ids).as_dict() == {"sent": 2, "deferred": 1}
    assert sorted(m.envelope_to[0] for m in smtp.messages) == ["r0@example.com", "r2@example.com"]
    assert all(m.raw.startswith(b"DKIM-Signature:") for m in smtp.messages)
    with session_scope(services.sessions) as session:
        row = store.ledger_row(session, ids[1], EmailKind.STEP, 1)
        assert row is not None and row.failure_class == FailureClass.OURS
        assert "cannot encode the message" in (row.error or "")


@pytest.mark.parametrize(
    ("where", "whose"), [("making", "r5@example.com"), ("envelope", "r1@example.com")]
)
def test_a_job_whose_time_runs_out_mid_wave_poisons_no_email(
    where: str,
    whose: str,
    services: Services,
    smtp: SmtpSink,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # rq raises JobTimeoutException wherever the job is when its time is up: while
    # r5 is made ahead, or while r1's envelope is being sent. It is the job's end,
    # not a poison email: it propagates, the wave in flight is dropped unsent, and
    # every email waits for its lease without an error or a failure counted.
    def running_out(stage: str, address: str) -> None:
        if (stage, address) == (where, whose):
            raise JobTimeoutException("Task exceeded maximum timeout value (1800 seconds)")

    def render_or_run_out(template: Any, sender: Any, recipient: Recipient) -> Any:
        running_out("making", recipient.email)
        return render(template, sender, recipient)

    envelope_address = sending.envelope_address

    def envelope_or_run_out(email: str) -> str:
        address = envelope_address(email)
        running_out("envelope", address)
        return address

    monkeypatch.setattr(sending, "render", render_or_run_out)
    monkeypatch.setattr(sending, "envelope_address", envelope_or_run_out)
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(6)]
    claim(services, ids, clock.now)
    with pytest.raises(JobTimeoutException):
        send_batch(services, ids)
    assert smtp.messages == []
    with session_scope(services.sessions) as session:
        for subscriber_id in ids:
            subscriber = session.get_one(Subscriber, subscriber_id)
            assert subscriber.last_error is None and subscriber.send_failures == 0
    # Once their leases lapse, each is sent, once.
    monkeypatch.undo()
    clock.advance(services.settings.claim_lease * 4)
    claim(services, ids, clock.now)
    assert send_batch(services, ids).as_dict() == {"sent": 6}
    assert sorted(m.envelope_to[0] for m in smtp.messages) == [
        f"r{n}@example.com" for n in range(6)
    ]
