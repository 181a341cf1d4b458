"""The course logic: subscribe, confirm, what is due, pause, resume, unsubscribe, the ledger.

Plain functions over a SQLAlchemy session and an explicit `now`; no Flask, no RQ.
The web app and the worker both call these, and tests move time by passing `now`.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import store
from app.failures import FailureClass
from app.models import (
    ENDED_STATUSES,
    TOTAL_STEPS,
    Consent,
    Delivery,
    DeliveryStatus,
    EmailKind,
    Subscriber,
    SubscriberStatus,
    template_name,
)

S = SubscriberStatus

#: Which status each action moves a subscription from, and to.
TRANSITIONS: dict[str, dict[SubscriberStatus, SubscriberStatus]] = {
    "confirm": {S.PENDING: S.ACTIVE},
    "pause": {S.ACTIVE: S.PAUSED},
    "resume": {S.PAUSED: S.ACTIVE},
    "complete": {S.ACTIVE: S.COMPLETED, S.PAUSED: S.COMPLETED},
    "unsubscribe": {
        S.PENDING: S.UNSUBSCRIBED,
        S.ACTIVE: S.UNSUBSCRIBED,
        S.PAUSED: S.UNSUBSCRIBED,
        S.COMPLETED: S.UNSUBSCRIBED,
    },
    "bounce": {S.PENDING: S.BOUNCED, S.ACTIVE: S.BOUNCED, S.PAUSED: S.BOUNCED},
}

#: An address never confirmed is forgotten this long after it last asked.
FORGET_UNCONFIRMED_AFTER = timedelta(days=30)
#: A pending address gets at most this many confirmation emails.
MAX_CONFIRMATIONS = 5
#: Failures of one email that count (the recipient's, or the email's own) before
#: it is given up: marked failed, and the address bounced if the failure says so.
MAX_ATTEMPTS = 8
#: Statuses whose due email may be claimed and sent.
SENDABLE = (S.PENDING, S.ACTIVE)
#: Delays between retries after a temporary failure (the last repeats).
RETRY_DELAYS = tuple(timedelta(minutes=m) for m in (1, 5, 15, 30, 60))


@dataclass(frozen=True)
class Policy:
    """The timing rules of the course, from the settings."""

    step_interval: timedelta
    confirm_resend_after: timedelta = timedelta(minutes=10)
    claim_lease: timedelta = timedelta(minutes=10)


class InvalidEmail(ValueError):
    """The address cannot receive the course; the message says why, for the subscriber."""


class SubscribeOutcome(StrEnum):
    """What a sign-up did (never shown to the visitor, who always sees the same answer)."""

    CREATED = "created"
    CONFIRMATION_RESENT = "confirmation_resent"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class SubscribeResult:
    """A sign-up's outcome and the subscription it concerns."""

    outcome: SubscribeOutcome
    subscriber_id: int


@dataclass(frozen=True)
class PlannedEmail:
    """One email a worker is cleared to send: everything needed to render it."""

    delivery_id: int
    subscriber_id: int
    subscriber_key: str
    email: str
    first_name: str
    kind: EmailKind
    number: int
    message_id: str

    @property
    def template(self) -> str:
        """The email template's name."""
        return template_name(self.kind, self.number)


def normalize_email(raw: str, *, check_deliverability: bool = False, smtputf8: bool = False) -> str:
    """The canonical form of an address, or InvalidEmail with a message for the subscriber.

    Without `smtputf8` (the relay cannot carry them) an address with letters
    beyond ASCII before the @ is refused; a non-ASCII domain is always fine.
    """
    candidate = (raw or "").strip()
    if not candidate:
        raise InvalidEmail("Please enter your email address.")
    if len(candidate) > 254:
        raise InvalidEmail("That email address is too long.")
    if not smtputf8 and not candidate.rpartition("@")[0].isascii():
        raise InvalidEmail(
            "We can't send to an address with accented or non-Latin letters before the @ "
            "yet. Please use another address."
        )
    try:
        address = validate_email(candidate, check_deliverability=check_deliverability).normalized
    except EmailNotValidError as error:
        raise InvalidEmail(f"That doesn't look like a valid email address: {error}") from None
    # Mailbox providers treat the local part case-insensitively, and so do we:
    # Ada@example.com and ada@example.com are one subscriber.
    return address.lower()


def clean_name(raw: str) -> str:
    """A first name fit for a greeting and a To header: no control characters, one line."""
    printable = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in raw or "")
    return " ".join(printable.split())[:100]


def _move(subscriber: Subscriber, action: str) -> bool:
    """Apply `action` if the subscriber's status allows it; say whether it did."""
    target = TRANSITIONS[action].get(subscriber.status)
    if target is None:
        return False
    subscriber.status = target
    return True


def subscribe(
    session: Session,
    email: str,
    *,
    first_name: str = "",
    source: str,
    wording: str,
    ip: str | None,
    user_agent: str | None,
    policy: Policy,
    now: datetime,
) -> SubscribeResult:
    """Sign an (already normalised) address up, or re-send its confirmation if it is pending.

    An active, paused or completed subscription is left as it is; an ended one
    (unsubscribed, bounced) starts afresh with a new consent record.
    """
    live = session.scalar(
        select(Subscriber).where(
            Subscriber.email == email, Subscriber.status.not_in(ENDED_STATUSES)
        )
    )
    if live is not None:
        return SubscribeResult(_ask_again(live, policy, now), live.id)
    subscriber = Subscriber(
        email=email,
        first_name=clean_name(first_name),
        status=S.PENDING,
        created_at=now,
        next_send_at=now,
        confirmations_requested=1,
        confirmation_requested_at=now,
        consent=Consent(
            source=source,
            wording=wording,
            ip=ip,
            user_agent=(user_agent or "")[:512] or None,
            requested_at=now,
        ),
    )
    try:
        with session.begin_nested():
            session.add(subscriber)
    except IntegrityError:
        # Another request signed the same address up at the same moment.
        live = session.scalars(
            select(Subscriber).where(
                Subscriber.email == email, Subscriber.status.not_in(ENDED_STATUSES)
            )
        ).one()
        return SubscribeResult(SubscribeOutcome.UNCHANGED, live.id)
    return SubscribeResult(SubscribeOutcome.CREATED, subscriber.id)


def _ask_again(subscriber: Subscriber, policy: Policy, now: datetime) -> SubscribeOutcome:
    """A second sign-up of a live address: re-send a pending one's confirmation, rate-limited."""
    if subscriber.status != S.PENDING or subscriber.next_send_at is not None:
        return SubscribeOutcome.UNCHANGED
    last = subscriber.confirmation_requested_at
    if subscriber.confirmations_requested >= MAX_CONFIRMATIONS or (
        last is not None and now - last < policy.confirm_resend_after
    ):
        return SubscribeOutcome.UNCHANGED
    subscriber.confirmations_requested += 1
    subscriber.confirmation_requested_at = now
    subscriber.next_send_at = now
    return SubscribeOutcome.CONFIRMATION_RESENT


def find_by_key(session: Session, key: str) -> Subscriber | None:
    """The subscription a signed link points at, if it still exists."""
    return session.scalar(select(Subscriber).where(Subscriber.key == key))


def confirm(
    session: Session,
    subscriber: Subscriber,
    *,
    ip: str | None,
    user_agent: str | None,
    now: datetime,
) -> bool:
    """Confirm a pending subscription: step 1 becomes due now. Say whether it changed."""
    if not _move(subscriber, "confirm"):
        return False
    subscriber.next_step = 1
    subscriber.next_send_at = now
    subscriber.claimed_until = None
    subscriber.send_failures = 0
    subscriber.consent.confirmed_at = now
    subscriber.consent.confirmed_ip = ip
    subscriber.consent.confirmed_user_agent = (user_agent or "")[:512] or None
    return True


def pause(session: Session, subscriber: Subscriber, *, now: datetime) -> bool:
    """Pause an active course: nothing is sent until it is resumed. Say whether it changed."""
    if not _move(subscriber, "pause"):
        return False
    subscriber.paused_at = now
    subscriber.next_send_at = None
    return True


def resume(session: Session, subscriber: Subscriber, *, policy: Policy, now: datetime) -> bool:
    """Resume a paused course: the next step is due one step interval from now, never a burst."""
    if not _move(subscriber, "resume"):
        return False
    subscriber.paused_at = None
    subscriber.next_send_at = now + policy.step_interval
    subscriber.claimed_until = None
    return True


def unsubscribe(session: Session, subscriber: Subscriber, *, now: datetime) -> bool:
    """End the subscription at once; nothing more is sent. Say whether it changed."""
    if not _move(subscriber, "unsubscribe"):
        return False
    _end(subscriber, now)
    return True


def forget(session: Session, subscriber: Subscriber) -> None:
    """Erase a subscription with its consent record and ledger (the subscriber's request)."""
    session.delete(subscriber)


def forget_unconfirmed(session: Session, *, now: datetime) -> int:
    """Erase sign-ups never confirmed within FORGET_UNCONFIRMED_AFTER; return how many."""
    # One DELETE (the database cascades to consent and ledger rows), so two
    # schedulers doing this at once simply find nothing left the second time.
    result = session.execute(
        delete(Subscriber)
        .where(
            Subscriber.status == S.PENDING,
            Subscriber.confirmation_requested_at < now - FORGET_UNCONFIRMED_AFTER,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _end(subscriber: Subscriber, now: datetime) -> None:
    subscriber.ended_at = now
    subscriber.next_send_at = None
    subscriber.claimed_until = None
    subscriber.paused_at = None


def message_id_for(subscriber_key: str, kind: EmailKind, number: int, domain: str) -> str:
    """The Message-ID of one email: the same on every retry, so a resend can be recognised."""
    digest = hashlib.sha256(f"{subscriber_key}:{kind}:{number}".encode()).hexdigest()[:24]
    return f"<{kind}-{number}.{digest}@{domain}>"


def due_email(subscriber: Subscriber) -> tuple[EmailKind, int] | None:
    """Which email the subscription is due next, if any."""
    if subscriber.next_send_at is None:
        return None
    if subscriber.status == S.PENDING:
        return EmailKind.CONFIRMATION, subscriber.confirmations_requested
    if subscriber.status == S.ACTIVE and subscriber.next_step <= TOTAL_STEPS:
        return EmailKind.STEP, subscriber.next_step
    return None


def begin_delivery(
    session: Session, subscriber_id: int, *, policy: Policy, domain: str, now: datetime
) -> PlannedEmail | None:
    """Record in the ledger that the due email is being sent, and return it; None if not due.

    The ledger row is unique per (subscriber, email): if another worker is sending it,
    or it was sent, this returns None. A row left `sending` longer than the claim
    lease (a crashed worker) is taken over and sent again with the same Message-ID.
    """
    subscriber = store.lock_subscriber(session, subscriber_id)
    if subscriber is None or subscriber.next_send_at is None or subscriber.next_send_at > now:
        # Gone, or not due yet: a retry's backoff holds whichever job runs it.
        return None
    if subscriber.claimed_until is None or subscriber.claimed_until <= now:
        # This job's claim lapsed: the subscription may be queued elsewhere by now.
        return None
    due = due_email(subscriber)
    if due is None:
        return None
    kind, number = due
    delivery = store.ledger_row(session, subscriber.id, kind, number)
    if delivery is None:
        delivery = Delivery(
            subscriber_id=subscriber.id,
            kind=kind,
            number=number,
            message_id=message_id_for(subscriber.key, kind, number, domain),
            status=DeliveryStatus.SENDING,
            started_at=now,
        )
        if not store.add_ledger_row(session, delivery):
            return None
    elif delivery.status == DeliveryStatus.SENT:
        # Sent, but the subscription was not moved on (it cannot happen through
        # this module, which does both in one transaction): move it on now.
        _advance(subscriber, kind, number, policy, now)
        return None
    elif (
        delivery.status == DeliveryStatus.SENDING and now - delivery.started_at < policy.claim_lease
    ):
        return None
    else:
        delivery.status = DeliveryStatus.SENDING
        delivery.started_at = now
        delivery.attempts += 1
    return PlannedEmail(
        delivery_id=delivery.id,
        subscriber_id=subscriber.id,
        subscriber_key=subscriber.key,
        email=subscriber.email,
        first_name=subscriber.first_name,
        kind=kind,
        number=number,
        message_id=delivery.message_id,
    )


def finish_delivery(session: Session, delivery_id: int, *, policy: Policy, now: datetime) -> None:
    """The relay accepted the email: mark it sent and schedule the next one."""
    delivery = session.get_one(Delivery, delivery_id)
    delivery.status = DeliveryStatus.SENT
    delivery.sent_at = now
    delivery.error = None
    delivery.failure_class = None
    subscriber = session.get_one(Subscriber, delivery.subscriber_id, with_for_update=True)
    subscriber.send_failures = 0
    subscriber.last_error = None
    _advance(subscriber, delivery.kind, delivery.number, policy, now)


def _advance(
    subscriber: Subscriber, kind: EmailKind, number: int, policy: Policy, now: datetime
) -> None:
    subscriber.claimed_until = None
    if kind == EmailKind.CONFIRMATION:
        if subscriber.status == S.PENDING:
            subscriber.next_send_at = None
        return
    subscriber.next_step = max(subscriber.next_step, number + 1)
    if subscriber.next_step > TOTAL_STEPS:
        if _move(subscriber, "complete"):
            _end(subscriber, now)
    elif subscriber.status == S.ACTIVE:
        subscriber.next_send_at = now + policy.step_interval


def defer_delivery(
    session: Session,
    delivery_id: int,
    *,
    error: str,
    now: datetime,
    counts: bool,
    bounces: bool = False,
    retry_at: datetime | None = None,
    failure_class: FailureClass | None = None,
) -> datetime | None:
    """This email failed for now: it waits, then is tried again. Return when, or None if given up.

    A failure that `counts` (the recipient's, or the email's own) moves the email
    towards MAX_ATTEMPTS, with growing backoff; then it is given up, bouncing the
    address only if `bounces`. Other failures (the relay, our sender) wait until
    `retry_at` and never count. The wait is the subscription's `next_send_at`,
    so every job that might run the retry respects it. `failure_class` is kept on the
    ledger row for operators.
    """
    delivery = session.get_one(Delivery, delivery_id)
    subscriber = session.get_one(Subscriber, delivery.subscriber_id, with_for_update=True)
    delivery.status = DeliveryStatus.DEFERRED
    delivery.error = error
    delivery.failure_class = failure_class
    subscriber.last_error = error
    if counts:
        subscriber.send_failures += 1
        if subscriber.send_failures >= MAX_ATTEMPTS:
            fail_delivery(
                session,
                delivery_id,
                error=error,
                now=now,
                bounce=bounces,
                failure_class=failure_class,
            )
            return None
    if retry_at is None:
        failures = max(subscriber.send_failures, 1)
        retry_at = now + RETRY_DELAYS[min(failures, len(RETRY_DELAYS)) - 1]
    subscriber.next_send_at = retry_at
    subscriber.claimed_until = None
    return retry_at


def fail_delivery(
    session: Session,
    delivery_id: int,
    *,
    error: str,
    now: datetime,
    bounce: bool,
    failure_class: FailureClass | None = None,
) -> None:
    """Give an email up: it is marked failed for the operator to see.

    With `bounce` the address bounced and its course ends; otherwise the
    subscription is held (nothing more is sent) until it is resumed or ends.
    """
    delivery = session.get_one(Delivery, delivery_id)
    subscriber = session.get_one(Subscriber, delivery.subscriber_id, with_for_update=True)
    delivery.status = DeliveryStatus.FAILED
    delivery.error = error
    delivery.failure_class = failure_class
    subscriber.last_error = error
    subscriber.claimed_until = None
    if bounce and _move(subscriber, "bounce"):
        _end(subscriber, now)
    elif not bounce:
        subscriber.next_send_at = None


def progress(subscriber: Subscriber) -> int:
    """How many course steps the subscriber has received."""
    return min(subscriber.next_step - 1, TOTAL_STEPS)


def send_now(session: Session, subscriber: Subscriber, *, now: datetime) -> bool:
    """Make an active subscription's next step due now (an operator's choice).

    Say whether it changed; a claim a worker holds is left alone, so nothing goes twice.
    """
    if subscriber.status != S.ACTIVE or subscriber.next_step > TOTAL_STEPS:
        return False
    if subscriber.next_send_at is not None and subscriber.next_send_at <= now:
        return False
    subscriber.next_send_at = now
    return True
