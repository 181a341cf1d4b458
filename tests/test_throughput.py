"""The bulk paths (a chunk begun in one transaction, recorded in one) keep exactly-once."""

from __future__ import annotations

import binascii
import random
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


def test_accepted_emails_that_cannot_be_recorded_count_as_sent_and_go_out_once(
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
    assert len(smtp.messages) == 4
    assert {row[0] for row in rows(services).values()} == {DeliveryStatus.SENDING}
    monkeypatch.setattr(drip, "finish_deliveries", finish)
    # Within the lease nobody touches them; after it, they count as sent (each was
    # marked handed over before its final "."), and nothing goes out again.
    assert tick(services) == 0
    clock.advance(services.settings.claim_lease)
    assert tick(services) == 4
    run_worker(services)
    assert len(smtp.messages) == 4
    assert {row[0] for row in rows(services).values()} == {DeliveryStatus.SENT}
    with session_scope(services.sessions) as session:
        assert {s.next_step for s in session.scalars(select(Subscriber))} == {2}


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
