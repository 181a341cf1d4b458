"""Poison-proof batches, addresses and names, leases and jobs, one global send rate."""

from __future__ import annotations

import email
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesParser, Parser
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask.testing import FlaskClient
from rq.job import JobStatus
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from app import drip, sendrate
from app.config import ConfigError, Rate, Settings, parse_rate
from app.db import session_scope
from app.models import Delivery, DeliveryStatus, Subscriber
from app.sending import dispatch, send_batch
from app.sendrate import SendRate
from app.services import Services
from tests.support import (
    FakeClock,
    SmtpSink,
    active_subscriber,
    begin,
    claim,
    free_port,
    run_worker,
)
from worker.schedule import tick

# --- addresses and names -----------------------------------------------------------------


def test_an_ascii_mailbox_at_an_internationalised_domain_is_delivered(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    answer = client.post("/api/subscribe", json={"email": "user@bücher.example"})
    assert answer.status_code == 202
    run_worker(services)
    [received] = smtp.messages
    assert received.envelope_to == ["user@xn--bcher-kva.example"]
    assert [a.addr_spec for a in received.message["To"].addresses] == ["user@xn--bcher-kva.example"]
    assert received.raw.isascii()


def test_a_non_ascii_mailbox_is_refused_at_sign_up_without_smtputf8(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    answer = client.post("/api/subscribe", json={"email": "zoë@example.com"})
    assert answer.status_code == 400
    assert "before the @" in answer.get_json()["error"]["message"]
    with session_scope(services.sessions) as session:
        assert session.scalars(select(Subscriber)).all() == []
    with pytest.raises(drip.InvalidEmail, match="before the @"):
        drip.normalize_email("用户@例子.广告")
    assert drip.normalize_email("zoë@example.com", smtputf8=True) == "zoë@example.com"


@pytest.fixture
def utf8_relay(services: Services) -> Iterator[tuple[Services, SmtpSink]]:
    """A relay that offers SMTPUTF8, and services with SMTP_UTF8 on that use it."""
    sink = SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=True)
    controller.start()
    svc = Services(
        services.settings.with_changes(
            smtp_url=f"smtp://127.0.0.1:{controller.port}", smtp_utf8=True
        ),
        clock=services.clock,
    )
    try:
        yield svc, sink
    finally:
        svc.close()
        controller.stop()


def test_a_non_ascii_mailbox_is_delivered_with_smtputf8_when_the_relay_offers_it(
    utf8_relay: tuple[Services, SmtpSink], clock: FakeClock
) -> None:
    services, sink = utf8_relay
    subscriber_id = active_subscriber(services, "zoë@bücher.example", clock.now)
    claim(services, [subscriber_id], clock.now)
    assert send_batch(services, [subscriber_id]).as_dict() == {"sent": 1}
    [received] = sink.messages
    assert received.envelope_to == ["zoë@xn--bcher-kva.example"]
    # The stdlib's bytes parser reads headers as ASCII: UTF-8 headers parse from text.
    parsed = Parser(policy=policy.SMTPUTF8).parsestr(received.raw.decode("utf-8"))
    assert [a.addr_spec for a in parsed["To"].addresses] == ["zoë@xn--bcher-kva.example"]


NAMES = [
    "=?utf-8?b?RXZlIDxldmVAZXZpbC5leGFtcGxlPiw=?=",  # decodes to: Eve <eve@evil.example>,
    '"Ada" <boss@evil.example>, Eve',
    "O'Brien, Jr.; Ada",
    "Zoë Ünïcode-Ñame",
    "=?utf-8?q?x?= " + "long " * 17,  # 99 characters: first_name holds at most 100
    "Ada\r\nBcc: all@example.com",
    "Ada",
]


@pytest.mark.parametrize("name", NAMES)
def test_a_first_name_can_never_break_or_drop_a_header(
    services: Services, smtp: SmtpSink, clock: FakeClock, name: str
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    with session_scope(services.sessions) as session:
        # Written as it is, as if it came from before names were cleaned.
        session.get_one(Subscriber, subscriber_id).first_name = name
    claim(services, [subscriber_id], clock.now)
    assert send_batch(services, [subscriber_id]).as_dict() == {"sent": 1}
    [received] = smtp.messages
    assert received.envelope_to == ["ada@example.com"]
    parsed = BytesParser(policy=policy.default).parsebytes(received.raw)
    [address] = parsed["To"].addresses
    assert address.addr_spec == "ada@example.com"
    # RFC 2047 joins adjacent encoded words without the space between them; the
    # stdlib's address parser adds one, its header decoder does not.
    raw_to = email.message_from_bytes(received.raw)["To"]
    decoded = str(make_header(decode_header(raw_to)))
    flat = " ".join(name.split())
    assert decoded in (f"{flat} <ada@example.com>", "ada@example.com" if not flat else "")
    assert parsed["Bcc"] is None
    assert "Bcc" not in parsed


# --- leases and jobs ---------------------------------------------------------------------


def test_a_job_whose_claim_lapsed_sends_nothing(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(3)]
    assert tick(services) == 3
    # The workers are busy for longer than the lease; the job starts too late.
    clock.advance(services.settings.claim_lease)
    assert send_batch(services, ids).as_dict() == {"lapsed": 3}
    assert smtp.messages == []
    # The next tick claims the work again (as the same job) and it goes out once.
    assert tick(services) == 3
    run_worker(services)
    assert sorted(r.envelope_to[0] for r in smtp.messages) == [
        f"p{n}@example.com" for n in range(3)
    ]


def test_the_lease_runs_from_when_the_worker_starts(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    tick(services)
    started = clock.advance(services.settings.claim_lease - timedelta(seconds=1))
    with session_scope(services.sessions) as session:
        assert session.get_one(Subscriber, subscriber_id).claimed_until == started + timedelta(
            seconds=1
        )
    run_worker(services)
    assert len(smtp.messages) == 1


def test_a_duplicate_job_never_skips_the_backoff(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "busy@example.com", clock.now)
    smtp.refuse["busy@example.com"] = (451, "4.2.1 Mailbox busy, try later")
    claim(services, [subscriber_id], clock.now)
    assert send_batch(services, [subscriber_id]).as_dict() == {"deferred": 1}
    del smtp.refuse["busy@example.com"]
    # The same job again (a duplicate in the queue): it holds no claim, sends nothing.
    assert send_batch(services, [subscriber_id]).as_dict() == {"lapsed": 1}
    # Even a job holding a fresh claim waits for the backoff.
    with session_scope(services.sessions) as session:
        session.get_one(Subscriber, subscriber_id).claimed_until = clock.now + timedelta(minutes=5)
    assert send_batch(services, [subscriber_id]).as_dict() == {"skipped": 1}
    assert begin(services, subscriber_id, clock.now) is None
    assert smtp.messages == []
    clock.advance(drip.RETRY_DELAYS[0])
    claim(services, [subscriber_id], clock.now)
    assert send_batch(services, [subscriber_id]).as_dict() == {"sent": 1}


def test_queuing_the_same_claim_again_gives_the_same_job_once(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    for n in range(3):
        active_subscriber(services, f"p{n}@example.com", clock.now)
    assert dispatch(services, now=clock.now) == 3
    [first] = services.queue.job_ids
    assert re.fullmatch(r"[A-Za-z0-9_-]+", first), "rq 3 job ids"
    # Backlog: the claim lapses before a worker starts the job; the tick claims again.
    clock.advance(services.settings.claim_lease)
    assert dispatch(services, now=clock.now) == 3
    assert services.queue.job_ids == [first]
    run_worker(services)
    assert len(smtp.messages) == 3
    # The job's record is kept for a while; the next step's claim is other work.
    clock.advance(services.settings.step_interval)
    assert dispatch(services, now=clock.now) == 3
    [second] = services.queue.job_ids
    assert second != first


def test_a_finished_job_does_not_block_the_same_claim_later(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    active_subscriber(services, "ada@example.com", clock.now)
    tick(services)
    [job_id] = services.queue.job_ids
    # The job starts after its lease: it finishes having sent nothing, and its
    # record stays in Redis for a while.
    clock.advance(services.settings.claim_lease)
    run_worker(services)
    assert smtp.messages == []
    assert tick(services) == 1
    assert services.queue.job_ids == [job_id]
    run_worker(services)
    assert len(smtp.to("ada@example.com")) == 1


def test_the_batch_of_a_worker_killed_mid_job_is_queued_again_after_its_lease(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    for n in range(3):
        active_subscriber(services, f"p{n}@example.com", clock.now)
    tick(services)
    # A worker took the job off the queue, started it, and was killed: rq's record
    # still says started, and no worker will ever finish it.
    [job] = services.queue.jobs
    services.queue.remove(job)
    job.set_status(JobStatus.STARTED)
    clock.advance(services.settings.claim_lease)
    assert tick(services) == 3
    run_worker(services)
    assert sorted(r.envelope_to[0] for r in smtp.messages) == [
        f"p{n}@example.com" for n in range(3)
    ]


def test_a_killed_workers_job_whose_execution_record_expired_is_queued_again(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    active_subscriber(services, "ada@example.com", clock.now)
    tick(services)
    [job] = services.queue.jobs
    services.queue.remove(job)
    job.set_status(JobStatus.STARTED)
    # The killed worker's execution is still listed for the job, but its record has
    # expired: rq's own Job.delete() raises ValueError on it (it crashed the scheduler).
    services.redis.zadd(job.execution_registry.key, {"gone-execution": time.time() + 3600})
    with pytest.raises(ValueError, match="not found in Redis"):
        services.queue.fetch_job(job.id).delete()  # type: ignore[union-attr]
    clock.advance(services.settings.claim_lease)
    assert tick(services) == 1
    assert services.queue.job_ids == [job.id]
    run_worker(services)
    assert len(smtp.to("ada@example.com")) == 1


def test_after_a_crash_nothing_stays_claimed_longer_than_one_lease(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(3)]
    tick(services)
    services.queue.empty()
    # A worker started the batch, wrote one ledger row, and was killed.
    planned = begin(services, ids[0], clock.now)
    assert planned is not None
    clock.advance(services.settings.claim_lease)
    assert tick(services) == 3
    run_worker(services)
    assert sorted(r.envelope_to[0] for r in smtp.messages) == [
        f"p{n}@example.com" for n in range(3)
    ]
    [resent] = smtp.to("p0@example.com")
    assert resent.message["Message-ID"] == planned.message_id


def test_a_database_outage_after_the_relay_accepted_sends_nothing_twice(
    services: Services, smtp: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    finish = drip.finish_deliveries
    outage = {"tries": 3}

    def database_away(*args: Any, **kwargs: Any) -> None:
        # The database restarts just as the relay answers 250: the first tries to
        # record the email fail, as a dropped connection does.
        if outage["tries"]:
            outage["tries"] -= 1
            raise OperationalError("UPDATE delivery", {}, ConnectionError("server closed"))
        finish(*args, **kwargs)

    monkeypatch.setattr(drip, "finish_deliveries", database_away)
    claim(services, [subscriber_id], clock.now)
    assert send_batch(services, [subscriber_id]).as_dict() == {"sent": 1}
    assert outage["tries"] == 0
    with session_scope(services.sessions) as session:
        [row] = session.scalars(select(Delivery)).all()
        assert row.status == DeliveryStatus.SENT
        assert session.get_one(Subscriber, subscriber_id).next_step == 2
    # Long after a lease the email is still recorded as sent: it is not sent again.
    clock.advance(services.settings.claim_lease)
    tick(services)
    run_worker(services)
    assert len(smtp.to("ada@example.com")) == 1


# --- the send rate -----------------------------------------------------------------------


def test_send_rate_is_read_and_checked() -> None:
    assert Settings.from_env({}).send_rate is None
    assert Settings.from_env({"SEND_RATE": "14/s"}).send_rate == Rate(14, 1)
    assert Settings.from_env({"SEND_RATE": "50000/h"}).send_rate == Rate(50000, 3600)
    assert parse_rate("600 / m").interval == pytest.approx(0.1)
    for bad in ("14", "fast", "0/s", "14/w", "-1/s"):
        with pytest.raises(ConfigError, match="SEND_RATE"):
            Settings.from_env({"SEND_RATE": bad})
    assert Settings.from_env({"SMTP_UTF8": "true"}).smtp_utf8
    with pytest.raises(ConfigError, match="SMTP_UTF8"):
        Settings.from_env({"SMTP_UTF8": "maybe"})


def test_slots_are_spaced_by_the_rate_across_processes(services: Services) -> None:
    limited = services.settings.with_changes(send_rate=Rate(10, 1))
    first, second = Services(limited), Services(limited)
    assert first.send_rate is not None and second.send_rate is not None

    def slot(rate: SendRate) -> float:
        """When the reserved slot comes, on this process's clock: the wait counts from now,
        so the slots' spacing does not depend on how long the calls themselves took."""
        wait = rate.reserve()
        return time.monotonic() + wait

    slots = [slot(first.send_rate), slot(second.send_rate), slot(first.send_rate)]
    assert slots[1] - slots[0] == pytest.approx(0.1, abs=0.03)
    assert slots[2] - slots[0] == pytest.approx(0.2, abs=0.03)
    first.send_rate.slow_down("451 4.7.1 test")
    assert second.send_rate.factor() == pytest.approx(0.5, abs=0.01)
    # Slower: the slot after the next one comes two intervals later, not one.
    slots += [slot(second.send_rate), slot(first.send_rate)]
    assert slots[3] - slots[2] == pytest.approx(0.1, abs=0.03)
    assert slots[4] - slots[3] == pytest.approx(0.2, abs=0.03)
    first.close()
    second.close()


def test_one_throttling_burst_halves_the_rate_once(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    limited = Services(services.settings.with_changes(send_rate=Rate(10, 1)))
    assert limited.send_rate is not None
    assert limited.send_rate.slow_down("421 4.7.0 first worker") == pytest.approx(0.5, abs=0.01)
    # Every email in flight hears the same burst; the rate halves once for all of them.
    for _ in range(5):
        assert limited.send_rate.slow_down("421 4.7.0 another") == pytest.approx(0.5, abs=0.01)
    # A throttle after the burst's hold halves it again.
    monkeypatch.setattr(sendrate, "HOLD_SECONDS", 0.0)
    assert limited.send_rate.slow_down("421 4.7.0 still") == pytest.approx(0.25, abs=0.01)
    limited.close()


@pytest.mark.slow
def test_eight_workers_never_exceed_the_send_rate(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    rate, workers, seconds = 20, 8, 30
    per_worker = rate * seconds // workers + 5
    settings = services.settings.with_changes(send_rate=Rate(rate, 1))
    batches = [
        [active_subscriber(services, f"w{w}-{n}@example.com", clock.now) for n in range(per_worker)]
        for w in range(workers)
    ]
    for batch in batches:
        claim(services, batch, clock.now)
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def worker(ids: list[int]) -> None:
        own = Services(settings, clock=clock)  # its own Redis, database pool and mailer
        try:
            barrier.wait()
            send_batch(own, ids)
        except BaseException as error:
            errors.append(error)
        finally:
            own.close()

    threads = [threading.Thread(target=worker, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    arrivals = sorted(smtp.arrivals)
    assert len(arrivals) == workers * per_worker
    jitter = max(2, rate // 2)
    window = [t for t in arrivals if t - arrivals[0] <= seconds]
    assert len(window) <= rate * seconds + jitter
    # In any one or five seconds, at most the rate, plus what half a second
    # of jitter between the reserved slot and the arrival can bunch together: the
    # slots themselves are exact, but a busy machine delays some sends and not others.
    for span in (1.0, 5.0):
        limit = int(rate * span) + jitter
        for i, start in enumerate(arrivals):
            within = sum(1 for t in arrivals[i : i + limit + 1] if t - start < span)
            assert within <= limit, f"{within} emails within {span} s at {start - arrivals[0]:.2f}s"
