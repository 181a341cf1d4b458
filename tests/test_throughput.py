"""The bulk paths (a chunk begun in one transaction, recorded in one) keep exactly-once."""

from __future__ import annotations

import binascii
import random
import time
from collections import Counter
from email import policy
from email.parser import BytesParser
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from app import drip, sending
from app.db import session_scope
from app.emails import WIRE_POLICY, build_message, quoted_printable, render, wire_message
from app.models import Delivery, DeliveryStatus, Subscriber
from app.sending import SEND_BATCH_JOB, send_batch
from app.services import Services
from tests.support import FakeClock, SmtpSink, active_subscriber, claim, run_worker
from worker.schedule import tick


def subscribers(services: Services, clock: FakeClock, count: int) -> list[int]:
    return [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(count)]


def rows(services: Services) -> dict[int, tuple[str, int]]:
    """{subscriber id: (status, attempts)} of every step-1 ledger row."""
    with session_scope(services.sessions) as session:
        return {
            row.subscriber_id: (str(row.status), row.attempts)
            for row in session.scalars(select(Delivery).where(Delivery.number == 1))
        }


def received(smtp: SmtpSink) -> Counter[str]:
    return Counter(m.envelope_to[0] for m in smtp.messages)


def test_two_jobs_for_the_same_claim_send_each_email_once(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = subscribers(services, clock, 6)
    claim(services, ids, clock.now)
    for copy in ("a", "b"):
        services.queue.enqueue(SEND_BATCH_JOB, ids, job_id=f"duplicate-{copy}")
    run_worker(services)
    assert received(smtp) == Counter({f"r{n}@example.com": 1 for n in range(6)})
    assert set(rows(services).values()) == {(DeliveryStatus.SENT, 1)}


def test_a_failure_in_the_middle_of_a_chunk_stays_with_its_email(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = subscribers(services, clock, 6)
    smtp.refuse["r2@example.com"] = (550, "5.1.1 No such user")
    smtp.refuse["r4@example.com"] = (450, "4.2.1 Mailbox busy")
    claim(services, ids, clock.now)
    report = send_batch(services, ids).as_dict()
    assert report == {"sent": 4, "bounced": 1, "deferred": 1}
    assert sorted(received(smtp)) == [f"r{n}@example.com" for n in (0, 1, 3, 5)]
    status = {sid: row[0] for sid, row in rows(services).items()}
    assert status[ids[2]] == DeliveryStatus.FAILED
    assert status[ids[4]] == DeliveryStatus.DEFERRED
    assert [status[ids[n]] for n in (0, 1, 3, 5)] == [DeliveryStatus.SENT] * 4
    # The next tick finds only the deferred email, and only once its backoff is over.
    assert tick(services) == 0
    smtp.refuse.clear()
    clock.advance(drip.RETRY_DELAYS[0])
    assert tick(services) == 1
    run_worker(services)
    assert received(smtp)["r4@example.com"] == 1
    assert max(received(smtp).values()) == 1


def test_a_throttle_in_the_middle_of_a_chunk_gives_the_rest_back_unsent(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = subscribers(services, clock, 6)
    smtp.refuse["r2@example.com"] = (451, "4.7.1 Rate limit exceeded")
    claim(services, ids, clock.now)
    assert send_batch(services, ids).as_dict() == {"sent": 2, "deferred": 1, "waiting": 3}
    assert sorted(received(smtp)) == ["r0@example.com", "r1@example.com"]
    ledger = rows(services)
    # The rest were begun in the ledger with the chunk: they are handed back, not
    # left `sending` for a lease; begun for their first try, their rows go as if never
    # begun (nothing for the operator's problems page).
    assert all(ids[n] not in ledger for n in (3, 4, 5))
    with session_scope(services.sessions) as session:
        waiting = [session.get_one(Subscriber, ids[n]) for n in (2, 3, 4, 5)]
        assert all(s.claimed_until is None and s.next_send_at > clock.now for s in waiting)
    assert tick(services) == 0
    smtp.refuse.clear()
    clock.advance(drip.RETRY_DELAYS[0])
    assert tick(services) == 4
    run_worker(services)
    assert received(smtp) == Counter({f"r{n}@example.com": 1 for n in range(6)})
    assert {row[0] for row in rows(services).values()} == {DeliveryStatus.SENT}


def test_a_crash_after_the_relay_accepted_a_chunk_resends_it_once_with_the_same_ids(
    services: Services, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = subscribers(services, clock, 4)
    finish = drip.finish_deliveries

    def database_gone(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("UPDATE delivery", {}, ConnectionError("server closed"))

    monkeypatch.setattr(drip, "finish_deliveries", database_gone)
    monkeypatch.setattr(sending, "RECORD_TIME_SHARE", 0.0)
    claim(services, ids, clock.now)
    with pytest.raises(OperationalError):
        send_batch(services, ids)
    # Sending stops once recording has failed: the relay has one email, or a few.
    first = {m.envelope_to[0]: m.message["Message-ID"] for m in smtp.messages}
    assert 1 <= len(first) < 4
    assert {row[0] for row in rows(services).values()} == {DeliveryStatus.SENDING}
    monkeypatch.setattr(drip, "finish_deliveries", finish)
    # Within the lease nobody sends them again.
    assert tick(services) == 0
    clock.advance(services.settings.claim_lease)
    assert tick(services) == 4
    run_worker(services)
    again = {m.envelope_to[0]: m.message["Message-ID"] for m in smtp.messages[len(first) :]}
    assert len(again) == 4
    assert {to: again[to] for to in first} == first  # sent again under the same IDs
    assert len(smtp.messages) == len(first) + 4
    assert {row[0] for row in rows(services).values()} == {DeliveryStatus.SENT}
    clock.advance(services.settings.claim_lease)
    tick(services)
    run_worker(services)
    assert len(smtp.messages) == len(first) + 4


def test_each_accepted_email_is_recorded_before_long_not_at_the_end_of_its_chunk(
    services: Services, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = subscribers(services, clock, 5)
    send_one = sending._send_one
    recorded_before: list[int] = []

    def sent_rows() -> int:
        return sum(1 for status, _ in rows(services).values() if status == DeliveryStatus.SENT)

    def after_the_last_is_recorded(*args: Any, **kwargs: Any) -> sending.Outcome:
        # Each email waits (up to 10 s) for the one before to be marked sent: what a
        # worker killed now would send again is this email, not the chunk so far.
        wanted = len(recorded_before)
        for _ in range(1000):
            if sent_rows() >= wanted:
                break
            time.sleep(0.01)
        recorded_before.append(sent_rows())
        return send_one(*args, **kwargs)

    monkeypatch.setattr(sending, "_send_one", after_the_last_is_recorded)
    claim(services, ids, clock.now)
    assert send_batch(services, ids).as_dict() == {"sent": 5}
    assert recorded_before == [0, 1, 2, 3, 4]
    assert sent_rows() == 5


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("Ada", "ada@example.com"),
        ('Zoë, "the" <boss>', "zoe@exämple.com"),
        ("=?utf-8?q?Eve?= <eve@evil.test>", "eve@example.com"),
        ("Émilie " * 20, "emilie@bücher.example"),
    ],
)
def test_wire_bytes_read_back_as_the_stdlib_message(
    services: Services, name: str, address: str
) -> None:
    sample = services.sample_recipient()
    recipient = type(sample)(
        email=address, first_name=name, links=sample.links, message_id=sample.message_id
    )
    now = services.clock()
    parse = BytesParser(policy=policy.default).parsebytes
    for template in services.catalog.names:
        rendered = render(services.catalog.get(template), services.sender, recipient)
        expected = parse(
            build_message(rendered, services.sender, recipient, now=now).as_bytes(
                policy=WIRE_POLICY
            )
        )
        actual = parse(wire_message(rendered, services.sender, recipient, now=now))
        assert [(k, str(v)) for k, v in actual.items() if k != "Content-Type"] == [
            (k, str(v)) for k, v in expected.items() if k != "Content-Type"
        ]
        assert actual.get_content_type() == "multipart/alternative"
        assert [(p.get_content_type(), p.get_content()) for p in actual.iter_parts()] == [
            (p.get_content_type(), p.get_content()) for p in expected.iter_parts()
        ]


def test_quoted_printable_writes_what_binascii_writes(services: Services) -> None:
    # Every email's parts, then random lines of what its rules are about: `=`, bytes
    # past ASCII and controls, trailing whitespace, lines of about a soft break's
    # length, a line that is only a dot.
    samples = []
    for template in services.catalog.names:
        rendered = render(
            services.catalog.get(template), services.sender, services.sample_recipient()
        )
        samples += [rendered.html.encode(), rendered.text.encode()]
    pick = random.Random(7)
    alphabet = b"ab =.\t" + bytes([0, 1, 11, 127, 128, 200, 226]) + b"x" * 10
    for _ in range(3000):
        lines = []
        for _ in range(pick.randrange(1, 4)):
            size = pick.choice([0, 1, 5, 72, 74, 75, 76, 77, 80, 160])
            lines.append(bytes(pick.choice(alphabet) for _ in range(size)))
        lines += pick.choice([[], [b"."], [b".\x00a"]])
        pick.shuffle(lines)
        samples.append(b"\n".join(lines))
    for data in samples:
        data = data.rstrip(b"\n") + b"\n"
        assert quoted_printable(data) == binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")


def test_wire_bytes_refuse_a_line_break_in_a_header(services: Services) -> None:
    recipient = services.sample_recipient()
    rendered = render(services.catalog.get("step-01"), services.sender, recipient)
    broken = type(rendered)(
        subject="Hi\r\nBcc: x@evil.test", html=rendered.html, text=rendered.text
    )
    with pytest.raises(ValueError):
        wire_message(broken, services.sender, recipient, now=services.clock())
