"""The course logic over a real database, with time passed in explicitly."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import drip, store
from app.db import session_scope
from app.models import (
    Consent,
    Delivery,
    DeliveryStatus,
    EmailKind,
    Subscriber,
    SubscriberStatus,
)
from app.services import Services
from tests.support import FakeClock, active_subscriber, begin, sign_up

S = SubscriberStatus


def defer(
    services: Services, delivery_id: int, error: str, now: datetime, *, count: bool
) -> datetime | None:
    """Record a temporary failure, as a worker does."""
    with session_scope(services.sessions) as session:
        return drip.defer_delivery(
            session,
            delivery_id,
            error=error,
            now=now,
            counts=count,
            bounces=count,
            keys=services.mailbox_keys,
        )


def claim(session: Session, *, now: datetime, lease: timedelta, limit: int) -> list[int]:
    """Claim due subscriptions as the tick does; their ids."""
    taken = store.claim_due(session, now=now, lease=lease, limit=limit, statuses=drip.SENDABLE)
    return [] if taken is None else taken.ids


def send_due_step(services: Services, subscriber_id: int, now: datetime) -> drip.PlannedEmail:
    """Go through the ledger as a worker would, without SMTP."""
    planned = begin(services, subscriber_id, now)
    assert planned is not None
    with session_scope(services.sessions) as session:
        drip.finish_delivery(session, planned.delivery_id, policy=services.policy, now=now)
    return planned


def test_normalize_email_accepts_real_addresses_and_explains_bad_ones() -> None:
    assert drip.normalize_email("  Ada@Example.COM ") == "ada@example.com"
    for bad, reason in [
        ("", "enter your email"),
        ("nope", "needs an @"),
        ("a@b", "full domain, like b.com"),
    ]:
        with pytest.raises(drip.InvalidEmail, match=reason):
            drip.normalize_email(bad)
    with pytest.raises(drip.InvalidEmail, match="too long"):
        drip.normalize_email("a" * 250 + "@example.com")


def test_first_names_are_kept_to_one_printable_line() -> None:
    assert drip.clean_name("  Ada\r\nBcc: x@y\t ") == "Ada Bcc: x@y"
    assert drip.clean_name("Zoë\u0000") == "Zoë"
    assert len(drip.clean_name("x" * 500)) == 100


def test_sign_up_creates_a_pending_subscription_with_consent_and_a_due_confirmation(
    services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        result = sign_up(session, services, "ada@example.com", clock.now)
        assert result.outcome == drip.SubscribeOutcome.CREATED
        subscriber = session.get_one(Subscriber, result.subscriber_id)
        assert subscriber.status == S.PENDING
        assert subscriber.next_send_at == clock.now
        assert drip.due_email(subscriber, services.policy.total_steps) == (
            EmailKind.CONFIRMATION,
            1,
        )
        assert subscriber.consent.source == "api"
        assert subscriber.consent.ip == "192.0.2.1"
        assert subscriber.consent.confirmed_at is None


def test_a_second_sign_up_re_sends_the_confirmation_only_after_a_while(
    services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        first = sign_up(session, services, "ada@example.com", clock.now)
        subscriber = session.get_one(Subscriber, first.subscriber_id)
        subscriber.next_send_at = None  # the first confirmation went out
        again = sign_up(session, services, "ada@example.com", clock.advance(timedelta(minutes=1)))
        assert again.outcome == drip.SubscribeOutcome.UNCHANGED
        later = sign_up(session, services, "ada@example.com", clock.advance(timedelta(minutes=15)))
        assert later.outcome == drip.SubscribeOutcome.CONFIRMATION_RESENT
        assert later.subscriber_id == first.subscriber_id
        assert drip.due_email(subscriber, services.policy.total_steps) == (
            EmailKind.CONFIRMATION,
            2,
        )
        # Capped: an address cannot be flooded with confirmations.
        outcomes = []
        for _ in range(10):
            subscriber.next_send_at = None
            clock.advance(timedelta(hours=1))
            outcomes.append(sign_up(session, services, "ada@example.com", clock.now).outcome)
        assert (
            outcomes.count(drip.SubscribeOutcome.CONFIRMATION_RESENT) == drip.MAX_CONFIRMATIONS - 2
        )


def test_signing_up_again_after_unsubscribing_starts_a_new_subscription(
    services: Services, clock: FakeClock
) -> None:
    first_id = active_subscriber(services, "ada@example.com", clock.now)
    with session_scope(services.sessions) as session:
        assert drip.unsubscribe(
            session,
            session.get_one(Subscriber, first_id),
            keys=services.mailbox_keys,
            now=clock.now,
        )
    with session_scope(services.sessions) as session:
        again = sign_up(session, services, "ada@example.com", clock.advance(timedelta(days=1)))
        assert again.outcome == drip.SubscribeOutcome.CREATED
        assert again.subscriber_id != first_id
        assert session.get_one(Subscriber, first_id).status == S.UNSUBSCRIBED
        assert session.get_one(Subscriber, again.subscriber_id).status == S.PENDING


def test_confirming_makes_step_one_due_and_records_consent(
    services: Services, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    with session_scope(services.sessions) as session:
        subscriber = session.get_one(Subscriber, subscriber_id)
        assert subscriber.status == S.ACTIVE
        assert drip.due_email(subscriber, services.policy.total_steps) == (EmailKind.STEP, 1)
        assert subscriber.consent.confirmed_at == clock.now
        assert not drip.confirm(
            session,
            subscriber,
            ip=None,
            user_agent=None,
            now=clock.now,
            total_steps=services.policy.total_steps,
        )


def test_claims_are_exclusive_and_lapse_after_the_lease(
    services: Services, clock: FakeClock
) -> None:
    ids = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(5)]
    lease = services.settings.claim_lease
    with session_scope(services.sessions) as session:
        first = claim(session, now=clock.now, lease=lease, limit=3)
    with session_scope(services.sessions) as session:
        second = claim(session, now=clock.now, lease=lease, limit=10)
    with session_scope(services.sessions) as session:
        third = claim(session, now=clock.now, lease=lease, limit=10)
    assert len(first) == 3
    assert sorted(first + second) == ids
    assert third == []
    with session_scope(services.sessions) as session:
        lapsed = claim(session, now=clock.advance(lease), lease=lease, limit=10)
    assert lapsed == ids


def test_only_due_subscriptions_are_claimed(services: Services, clock: FakeClock) -> None:
    due = active_subscriber(services, "due@example.com", clock.now)
    paused = active_subscriber(services, "paused@example.com", clock.now)
    later = active_subscriber(services, "later@example.com", clock.now)
    with session_scope(services.sessions) as session:
        drip.pause(session, session.get_one(Subscriber, paused), now=clock.now)
        session.get_one(Subscriber, later).next_send_at = clock.now + timedelta(hours=1)
    with session_scope(services.sessions) as session:
        claimed = claim(session, now=clock.now, lease=timedelta(minutes=5), limit=10)
    assert claimed == [due]


def test_the_ledger_lets_one_sender_through_and_takes_over_a_stale_one(
    services: Services, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)

    first = begin(services, subscriber_id, clock.now)
    assert first is not None and first.number == 1
    assert begin(services, subscriber_id, clock.now) is None, "a second worker must wait"
    clock.advance(services.policy.claim_lease + timedelta(seconds=1))
    retry = begin(services, subscriber_id, clock.now)
    assert retry is not None
    assert retry.delivery_id == first.delivery_id
    assert retry.message_id == first.message_id
    with session_scope(services.sessions) as session:
        assert session.get_one(Delivery, first.delivery_id).attempts == 2


def test_steps_follow_the_interval_and_the_course_completes_after_the_last(
    services: Services, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    interval = services.policy.step_interval
    steps = services.course.step_count
    for step in range(1, steps + 1):
        planned = send_due_step(services, subscriber_id, clock.now)
        assert planned.number == step
        with session_scope(services.sessions) as session:
            subscriber = session.get_one(Subscriber, subscriber_id)
            if step < steps:
                assert subscriber.next_send_at == clock.now + interval
        clock.advance(interval)
    with session_scope(services.sessions) as session:
        subscriber = session.get_one(Subscriber, subscriber_id)
        assert subscriber.status == S.COMPLETED
        assert subscriber.next_send_at is None
        assert drip.progress(subscriber, steps) == steps
        sent = session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.status == DeliveryStatus.SENT)
        )
        assert sent == steps


def test_resume_continues_one_interval_later_without_a_burst(
    services: Services, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    send_due_step(services, subscriber_id, clock.now)
    with session_scope(services.sessions) as session:
        subscriber = session.get_one(Subscriber, subscriber_id)
        assert drip.pause(session, subscriber, now=clock.now)
        assert drip.due_email(subscriber, services.policy.total_steps) is None
    resumed_at = clock.advance(timedelta(days=30))
    with session_scope(services.sessions) as session:
        subscriber = session.get_one(Subscriber, subscriber_id)
        assert drip.resume(session, subscriber, policy=services.policy, now=resumed_at)
        assert subscriber.next_send_at == resumed_at + services.policy.step_interval
        assert drip.due_email(subscriber, services.policy.total_steps) == (EmailKind.STEP, 2)
        assert not drip.resume(session, subscriber, policy=services.policy, now=resumed_at)


def test_an_unsubscribe_after_the_claim_stops_the_send(
    services: Services, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    with session_scope(services.sessions) as session:
        assert claim(session, now=clock.now, lease=timedelta(minutes=5), limit=10)
    with session_scope(services.sessions) as session:
        drip.unsubscribe(
            session,
            session.get_one(Subscriber, subscriber_id),
            keys=services.mailbox_keys,
            now=clock.now,
        )
    assert begin(services, subscriber_id, clock.now) is None


def test_temporary_failures_back_off_then_bounce(services: Services, clock: FakeClock) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    retry_times: list[datetime | None] = []
    delays: list[timedelta] = []
    for _ in range(drip.MAX_ATTEMPTS):
        planned = begin(services, subscriber_id, clock.now)
        assert planned is not None
        retry_at = defer(services, planned.delivery_id, "451 try later", clock.now, count=True)
        retry_times.append(retry_at)
        if retry_at is not None:
            delays.append(retry_at - clock.now)
            clock.advance(delays[-1])
    assert retry_times[-1] is None
    assert delays == sorted(delays), "retries must back off"
    assert delays[0] < delays[-1]
    with session_scope(services.sessions) as session:
        subscriber = session.get_one(Subscriber, subscriber_id)
        assert subscriber.status == S.BOUNCED
        assert subscriber.last_error == "451 try later"


def test_relay_outages_never_bounce_a_subscriber(services: Services, clock: FakeClock) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    for _ in range(drip.MAX_ATTEMPTS * 2):
        planned = begin(services, subscriber_id, clock.now)
        assert planned is not None
        retry_at = defer(services, planned.delivery_id, "refused", clock.now, count=False)
        assert retry_at is not None
        clock.advance(retry_at - clock.now)
    with session_scope(services.sessions) as session:
        assert session.get_one(Subscriber, subscriber_id).status == S.ACTIVE


def test_sign_ups_never_confirmed_are_forgotten_after_thirty_days(
    services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        stale = sign_up(session, services, "stale@example.com", clock.now).subscriber_id
        session.add(
            Delivery(
                subscriber_id=stale,
                kind=EmailKind.CONFIRMATION,
                number=1,
                message_id="<stale@onward.test>",
                status=DeliveryStatus.SENT,
                started_at=clock.now,
            )
        )
    kept = active_subscriber(services, "kept@example.com", clock.now)
    clock.advance(timedelta(days=20))
    with session_scope(services.sessions) as session:
        recent = sign_up(session, services, "recent@example.com", clock.now).subscriber_id
    clock.advance(timedelta(days=11))
    with session_scope(services.sessions) as session:
        assert drip.forget_unconfirmed(session, now=clock.now) == 1
    with session_scope(services.sessions) as session:
        assert session.get(Subscriber, stale) is None
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
        assert session.scalar(select(func.count()).select_from(Consent)) == 2
        assert session.get(Subscriber, kept) is not None
        assert session.get(Subscriber, recent) is not None
    with session_scope(services.sessions) as session:
        assert drip.forget_unconfirmed(session, now=clock.now) == 0


def test_recording_a_chunk_skips_a_subscription_erased_since_its_rows_were_read(
    services: Services, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, erased = (active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(2))
    planned = [begin(services, subscriber_id, clock.now) for subscriber_id in (kept, erased)]
    assert all(planned)
    lock = store.lock_subscribers

    def erased_meanwhile(session: Session, ids: list[int], **options: bool) -> list[Subscriber]:
        # As if erased between reading the ledger rows and locking the subscriptions.
        return [s for s in lock(session, ids, **options) if s.id != erased]

    monkeypatch.setattr(store, "lock_subscribers", erased_meanwhile)
    with session_scope(services.sessions) as session:
        drip.finish_deliveries(
            session,
            [p.delivery_id for p in planned if p is not None],
            policy=services.policy,
            now=clock.now,
        )
    with session_scope(services.sessions) as session:
        assert session.get_one(Subscriber, kept).next_step == 2
        assert session.get_one(Subscriber, erased).next_step == 1
        statuses = {
            row.subscriber_id: row.status for row in session.scalars(select(Delivery)).all()
        }
        assert statuses == {kept: DeliveryStatus.SENT, erased: DeliveryStatus.SENDING}
