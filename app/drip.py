"""The course logic: subscribe, confirm, what is due, pause, resume, unsubscribe, the ledger.

Plain functions over a SQLAlchemy session and an explicit `now`; no Flask, no RQ.
The web app and the worker both call these, and tests move time by passing `now`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, EmailUndeliverableError, validate_email
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import addresses, outbound, store, timing
from app.config import Rate
from app.failures import FailureClass, classify_reported
from app.mailbox import MailboxKeys
from app.models import (
    ENDED_STATUSES,
    Consent,
    Delivery,
    DeliveryStatus,
    EmailKind,
    MailEvent,
    MailEventKind,
    SignupRequest,
    Subscriber,
    SubscriberStatus,
    SuppressionReason,
    template_name,
)

log = logging.getLogger(__name__)

S = SubscriberStatus

#: Which status each action moves a subscription from, and to.
TRANSITIONS: dict[str, dict[SubscriberStatus, SubscriberStatus]] = {
    "confirm": {S.PENDING: S.ACTIVE},
    "pause": {S.ACTIVE: S.PAUSED},
    "resume": {S.PAUSED: S.ACTIVE},
    "complete": {S.ACTIVE: S.COMPLETED, S.PAUSED: S.COMPLETED},
    "restart": {S.COMPLETED: S.ACTIVE, S.ACTIVE: S.ACTIVE, S.PAUSED: S.ACTIVE},
    "unsubscribe": {
        S.PENDING: S.UNSUBSCRIBED,
        S.ACTIVE: S.UNSUBSCRIBED,
        S.PAUSED: S.UNSUBSCRIBED,
        S.COMPLETED: S.UNSUBSCRIBED,
    },
    "bounce": {S.PENDING: S.BOUNCED, S.ACTIVE: S.BOUNCED, S.PAUSED: S.BOUNCED},
}
#: A complaint ("this is spam") ends a subscription the way unsubscribing does.
TRANSITIONS["complain"] = TRANSITIONS["unsubscribe"]

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
#: "Send my next step now" gives at most one step in this long.
SEND_NOW_EVERY = timedelta(days=1)
#: "Pause for a week" pauses this long; "pause until" reaches at most this far.
PAUSE_FOR = timedelta(days=7)
LONGEST_PAUSE = timedelta(days=365)


@dataclass(frozen=True)
class Policy:
    """The timing rules of the course, from the settings."""

    step_interval: timedelta
    #: How many steps the course has (from the course file).
    total_steps: int
    confirm_resend_after: timedelta = timedelta(minutes=10)
    claim_lease: timedelta = timedelta(minutes=10)
    #: Local hours and days steps go in; None: any time.
    send_window: timing.SendWindow | None = None
    #: The zone of subscribers who did not give one.
    default_time_zone: str = "UTC"
    #: Confirmation emails one mailbox may receive per UTC day, however it is spelled.
    confirmations_per_day: int = 3
    #: This many soft bounces of one mailbox within the window suppress it.
    soft_bounce_limit: int = 3
    soft_bounce_window: timedelta = timedelta(days=7)


class InvalidEmail(ValueError):
    """The address cannot receive the course; the message says why, for the subscriber."""


class InvalidTimeZone(ValueError):
    """Not an IANA time zone this server knows; the message says so, for the subscriber."""


class InvalidPause(ValueError):
    """A pause date that cannot be used; the message says why, for the subscriber."""


class SubscribeOutcome(StrEnum):
    """What a sign-up did (never shown to the visitor, who always sees the same answer)."""

    CREATED = "created"
    CONFIRMATION_RESENT = "confirmation_resent"
    #: The address's course runs or ran: it gets a notice with its manage link.
    NOTICE = "notice"
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
    #: When the step after this one will go, if there is one.
    next_step_at: datetime | None = None
    #: The subscriber's time zone, for wording about that time.
    time_zone: str = "UTC"
    #: The subscription finished the course (a notice offers to start again).
    finished: bool = False

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
        address = _validated(candidate, check_deliverability=check_deliverability)
    except EmailUndeliverableError:
        raise InvalidEmail(addresses.undeliverable(candidate)) from None
    except EmailNotValidError:
        # The library's wording ("invalid characters before the @-sign: SPACE") is for
        # developers: the subscriber gets plain words and what to do.
        raise InvalidEmail(addresses.plain_reason(candidate)) from None
    # Mailbox providers treat the local part case-insensitively, and so do we:
    # Ada@example.com and ada@example.com are one subscriber.
    return address.lower()


#: A local part that is a plain ASCII dot-atom (RFC 5322): email-validator keeps it as it is.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_LOCAL_PART = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
#: The longest local part RFC 5321 allows.
_LOCAL_PART_LENGTH = 64


def _validated(candidate: str, *, check_deliverability: bool) -> str:
    """email-validator's normalised form of `candidate` (its exceptions if it is not valid).

    Most addresses are a plain ASCII local part at one of few domains: their domain is
    validated once per process (the costly part, an import's rate depends on it) and the
    local part is kept, as email-validator would keep it. Everything else, and every
    deliverability check (DNS answers change), goes through email-validator itself.
    """
    local, _, domain = candidate.rpartition("@")
    if (
        not check_deliverability
        and len(local) <= _LOCAL_PART_LENGTH
        and _PLAIN_LOCAL_PART.match(local)
    ):
        return f"{local}@{_validated_domain(domain)}"
    return str(validate_email(candidate, check_deliverability=check_deliverability).normalized)


@functools.lru_cache(maxsize=4096)
def _validated_domain(domain: str) -> str:
    """A domain as email-validator normalises it (a valid address there says so)."""
    return str(validate_email(f"a@{domain}", check_deliverability=False).normalized)[2:]


def clean_name(raw: str) -> str:
    """A first name fit for a greeting and a To header: no control characters, one line."""
    raw = raw or ""
    # str.isprintable is False for every character of category C (and for separators
    # other than the space, which split() below handles): most names skip the loop.
    printable = (
        raw
        if raw.isprintable()
        else "".join(" " if unicodedata.category(c)[0] == "C" else c for c in raw)
    )
    return " ".join(printable.split())[:100]


def check_time_zone(name: str) -> str:
    """An IANA time zone name as given, or InvalidTimeZone with a message for the subscriber."""
    if not timing.is_time_zone(name):
        raise InvalidTimeZone(
            f"We don't know the time zone {name[:64]!r}: "
            "use a name like Europe/London or America/New_York."
        )
    return name


def zone_of(subscriber: Subscriber, policy: Policy) -> ZoneInfo:
    """The subscriber's time zone, or the default one."""
    return timing.zone(subscriber.time_zone, policy.default_time_zone)


def _schedule(subscriber: Subscriber, earliest: datetime, policy: Policy) -> None:
    """Make the next step due at `earliest`, moved to the subscriber's next open window."""
    subscriber.due_after = earliest
    subscriber.next_send_at = timing.next_open(
        earliest, zone=zone_of(subscriber, policy), window=policy.send_window, key=subscriber.key
    )


def _send_at_once(subscriber: Subscriber, now: datetime) -> None:
    """Make the next step due now, not held for the window (no `due_after` to move it by)."""
    subscriber.due_after = None
    subscriber.next_send_at = now
    subscriber.claimed_until = None


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
    time_zone: str | None = None,
    source: str,
    wording: str,
    ip: str | None,
    user_agent: str | None,
    policy: Policy,
    now: datetime,
) -> SubscribeResult:
    """Sign an (already normalised) address up, or re-send its confirmation if it is pending.

    An active, paused or completed subscription is left as it is (its address gets a
    notice, NOTICE); an ended one (unsubscribed, bounced) is followed by a new
    pending one with a new consent record, which continues where the last one left
    off once confirmed. A time zone that is given must be a known one
    (InvalidTimeZone); none means DEFAULT_TIME_ZONE.
    """
    if time_zone is not None:
        check_time_zone(time_zone)
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
        time_zone=time_zone,
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
    return _add_new(session, subscriber)


def _ask_again(subscriber: Subscriber, policy: Policy, now: datetime) -> SubscribeOutcome:
    """A second sign-up of a live address: re-send a pending one's confirmation, rate-limited.

    An address whose course runs or ran is told so by a notice (NOTICE).
    """
    if subscriber.status != S.PENDING:
        return SubscribeOutcome.NOTICE
    if subscriber.next_send_at is not None:
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


def record_signup(
    session: Session,
    email: str,
    *,
    first_name: str = "",
    time_zone: str | None = None,
    source: str,
    wording: str,
    ip: str | None,
    user_agent: str | None,
    now: datetime,
) -> int:
    """Record a sign-up's intent for `take_signup` to decide later; return its id.

    The same single INSERT whatever the address's state: what a sign-up does must
    not show in how long it takes. A time zone that is given must be a known one.
    """
    if time_zone is not None:
        check_time_zone(time_zone)
    request = SignupRequest(
        email=email,
        first_name=clean_name(first_name),
        time_zone=time_zone,
        source=source,
        wording=wording,
        ip=ip,
        user_agent=(user_agent or "")[:512] or None,
        created_at=now,
    )
    session.add(request)
    session.flush()
    return request.id


def take_signup(
    session: Session, request_id: int, *, policy: Policy, now: datetime
) -> SubscribeResult | None:
    """Decide a recorded sign-up: subscribe its address (see `subscribe`); None if it was
    decided already (by another job or a tick), or erased since."""
    if not store.take_signup_request(session, request_id, now=now):
        return None
    request = session.get(SignupRequest, request_id)
    if request is None:
        return None
    result = subscribe(
        session,
        request.email,
        first_name=request.first_name,
        time_zone=request.time_zone,
        source=request.source,
        wording=request.wording,
        ip=request.ip,
        user_agent=request.user_agent,
        policy=policy,
        now=request.created_at,
    )
    request.outcome = result.outcome
    return result


def waiting_signups(session: Session, *, now: datetime, limit: int) -> list[int]:
    """Ids of sign-up requests made before `now` and not decided yet, oldest first."""
    return store.waiting_signup_requests(session, before=now, limit=limit)


def current(session: Session, subscriber: Subscriber) -> Subscriber:
    """The address's current subscription: its live one, else its most recent."""
    return store.subscriber_by_email(session, subscriber.email) or subscriber


def find_by_key(session: Session, key: str) -> Subscriber | None:
    """The current subscription of the address a signed link was made for, if any is kept.

    An address has one identity: a link in any email ever sent to it acts on the
    subscription running now, not on the one that sent the email.
    """
    subscriber = session.scalar(select(Subscriber).where(Subscriber.key == key))
    return None if subscriber is None else current(session, subscriber)


def confirm(
    session: Session,
    subscriber: Subscriber,
    *,
    ip: str | None,
    user_agent: str | None,
    now: datetime,
    total_steps: int,
) -> bool:
    """Confirm a pending subscription: its first step becomes due now. Say whether it changed.

    The first step is step 1, or for an address that subscribed before, the step
    after the last one its latest confirmed subscription reached (one that finished
    the course of `total_steps` starts again at step 1). It is not held for the
    send window: whoever just confirmed expects it at once.
    """
    if not _move(subscriber, "confirm"):
        return False
    subscriber.next_step = _continue_from(session, subscriber, total_steps)
    _send_at_once(subscriber, now)
    subscriber.send_failures = 0
    subscriber.consent.confirmed_at = now
    subscriber.consent.confirmed_ip = ip
    subscriber.consent.confirmed_user_agent = (user_agent or "")[:512] or None
    return True


def _continue_from(session: Session, subscriber: Subscriber, total_steps: int) -> int:
    """The step a newly confirmed subscription starts at: where the address left off."""
    earlier = store.last_confirmed_before(session, subscriber.email, subscriber.id)
    if earlier is None or earlier.next_step > total_steps:
        return 1
    return earlier.next_step


def pause(session: Session, subscriber: Subscriber, *, now: datetime) -> bool:
    """Pause an active course: nothing is sent until it is resumed. Say whether it changed."""
    if not _move(subscriber, "pause"):
        return False
    subscriber.paused_at = now
    subscriber.resume_at = None
    subscriber.next_send_at = None
    return True


def pause_until(
    session: Session, subscriber: Subscriber, until: datetime, *, now: datetime
) -> bool:
    """Pause an active (or paused) course until `until`, when it resumes by itself."""
    if subscriber.status not in (S.ACTIVE, S.PAUSED):
        return False
    if not now < until <= now + LONGEST_PAUSE:
        raise InvalidPause("Please choose a date after today and within a year.")
    pause(session, subscriber, now=now)
    subscriber.resume_at = until
    return True


def pause_until_date(
    session: Session, subscriber: Subscriber, day: date, *, policy: Policy, now: datetime
) -> bool:
    """Pause until the start of `day` in the subscriber's time zone; see pause_until."""
    local_midnight = datetime.combine(day, time(0), tzinfo=zone_of(subscriber, policy))
    return pause_until(session, subscriber, local_midnight.astimezone(UTC), now=now)


def resume(session: Session, subscriber: Subscriber, *, policy: Policy, now: datetime) -> bool:
    """Resume a paused course. Say whether it changed.

    The next step comes in the first open window at least one step interval from
    now: never a burst of the steps the pause held back.
    """
    if not _move(subscriber, "resume"):
        return False
    subscriber.paused_at = None
    subscriber.resume_at = None
    subscriber.claimed_until = None
    _schedule(subscriber, now + policy.step_interval, policy)
    return True


def resume_due(session: Session, *, policy: Policy, now: datetime) -> int:
    """Resume the timed pauses that have run out, as of their own end; return how many."""
    ended = store.lock_pauses_ended(session, now=now)
    for subscriber in ended:
        # Resuming as of the pause's end keeps the schedule whatever the tick's delay.
        resume(session, subscriber, policy=policy, now=subscriber.resume_at or now)
    return len(ended)


def send_next_now(
    session: Session, subscriber: Subscriber, *, total_steps: int, now: datetime
) -> bool:
    """Make the next step due now, at most once per SEND_NOW_EVERY. Say whether it did.

    The subscriber asked: this step is not held for the window, nor for STEP_INTERVAL.
    """
    if not can_send_now(session, subscriber, total_steps=total_steps, now=now):
        return False
    _send_at_once(subscriber, now)
    return True


def can_send_now(
    session: Session, subscriber: Subscriber, *, total_steps: int, now: datetime
) -> bool:
    """Whether "send my next step now" would send one: no step went in SEND_NOW_EVERY."""
    if subscriber.status != S.ACTIVE or subscriber.next_step > total_steps:
        return False
    last = store.last_sent_at(session, subscriber.id, EmailKind.STEP)
    return last is None or now - last >= SEND_NOW_EVERY


def start_again(session: Session, subscriber: Subscriber, *, now: datetime) -> bool:
    """Take the course again from step 1, sent at once. Say whether it changed.

    A finished course, or one that continued where an earlier subscription of the
    address left off (see `can_start_again`).

    The earlier run's step rows leave the ledger (which holds one row per step), and
    the new run's emails get new Message-IDs: mailbox providers drop a message whose
    Message-ID they have seen, taking it for a duplicate.
    """
    if not can_start_again(session, subscriber) or not _move(subscriber, "restart"):
        return False
    store.drop_ledger_rows(session, subscriber.id, EmailKind.STEP)
    session.expire(subscriber, ["deliveries"])
    subscriber.course_round += 1
    subscriber.next_step = 1
    subscriber.ended_at = None
    subscriber.paused_at = None
    subscriber.resume_at = None
    subscriber.send_failures = 0
    _send_at_once(subscriber, now)
    return True


def can_start_again(session: Session, subscriber: Subscriber) -> bool:
    """Whether "start again from step 1" applies: to a finished course, or to one that
    continued where an earlier subscription of the address left off (no step 1 in it)."""
    if subscriber.status == S.COMPLETED:
        return True
    return (
        subscriber.status in (S.ACTIVE, S.PAUSED)
        and subscriber.next_step > 1
        and store.ledger_row(session, subscriber.id, EmailKind.STEP, 1) is None
    )


def change_time_zone(
    session: Session, subscriber: Subscriber, name: str, *, policy: Policy, now: datetime
) -> bool:
    """Use another time zone. Say whether it changed.

    A step held for the window, sent or not yet, moves to the new zone's window (a
    step due now in the old zone's morning may be the new zone's night); a step
    sent at once (step 1, "send my next step now") stays at once.
    """
    check_time_zone(name)
    if subscriber.time_zone == name:
        return False
    subscriber.time_zone = name
    due_after = subscriber.due_after
    if subscriber.status == S.ACTIVE and subscriber.next_send_at and due_after is not None:
        _schedule(subscriber, max(due_after, now), policy)
    return True


def next_step_at(subscriber: Subscriber, policy: Policy, *, now: datetime) -> datetime | None:
    """When the step after the one due now would go, if it were sent at `now`."""
    if subscriber.status != S.ACTIVE or subscriber.next_step >= policy.total_steps:
        return None
    return timing.next_open(
        now + policy.step_interval,
        zone=zone_of(subscriber, policy),
        window=policy.send_window,
        key=subscriber.key,
    )


def unsubscribe(
    session: Session, subscriber: Subscriber, *, keys: MailboxKeys, now: datetime
) -> bool:
    """End the subscription at once and suppress the mailbox. Say whether it changed."""
    if not _move(subscriber, "unsubscribe"):
        return False
    _end(subscriber, now)
    store.suppress(session, keys.hash(subscriber.email), SuppressionReason.UNSUBSCRIBED, now=now)
    return True


def forget(session: Session, subscriber: Subscriber, *, keys: MailboxKeys, now: datetime) -> None:
    """Erase every record of the subscription's address (the subscriber's request).

    Every subscription it ever had goes, with its consent record and ledger, and
    every sign-up request. Only the mailbox's keyed hash stays, on the suppression
    list: erasing must not make the address mailable again, nor reset its
    confirmation cap.
    """
    email = subscriber.email
    store.suppress(session, keys.hash(email), SuppressionReason.ERASED, now=now)
    session.flush()
    session.expunge_all()
    store.erase_address(session, email)


def complain(session: Session, subscriber: Subscriber, *, keys: MailboxKeys, now: datetime) -> bool:
    """The recipient reported an email as spam: end the subscription, suppress the mailbox."""
    changed = _move(subscriber, "complain")
    if changed:
        _end(subscriber, now)
    store.suppress(session, keys.hash(subscriber.email), SuppressionReason.COMPLAINED, now=now)
    return changed


def bounced(session: Session, subscriber: Subscriber, *, keys: MailboxKeys, now: datetime) -> bool:
    """The address bounced for good: end the subscription, suppress the mailbox."""
    changed = _move(subscriber, "bounce")
    if changed:
        _end(subscriber, now)
    else:
        subscriber.claimed_until = None
    store.suppress(session, keys.hash(subscriber.email), SuppressionReason.BOUNCED, now=now)
    return changed


def soft_bounce(session: Session, mailbox_hash: str, *, policy: Policy, now: datetime) -> bool:
    """Count a temporary bounce already recorded as a MailEvent; say if it suppresses the mailbox.

    `policy.soft_bounce_limit` soft bounces within `policy.soft_bounce_window` do.
    """
    recent = store.count_mail_events(
        session, mailbox_hash, MailEventKind.SOFT_BOUNCE, since=now - policy.soft_bounce_window
    )
    if recent < policy.soft_bounce_limit:
        return False
    store.suppress(session, mailbox_hash, SuppressionReason.BOUNCED, now=now)
    return True


def _suppression_blocks(session: Session, mailbox_hash: str, confirmed_at: datetime | None) -> bool:
    """Whether the list forbids course emails to a mailbox confirmed at `confirmed_at`.

    Confirming again after the suppression is the one way off the list.
    """
    return _blocks(store.suppressed_at(session, mailbox_hash), confirmed_at)


def _blocks(suppressed_since: datetime | None, confirmed_at: datetime | None) -> bool:
    """Whether a suppression then holds for a mailbox confirmed at `confirmed_at`."""
    return suppressed_since is not None and (
        confirmed_at is None or confirmed_at <= suppressed_since
    )


def forget_unconfirmed(session: Session, *, now: datetime) -> int:
    """Erase sign-ups never confirmed within FORGET_UNCONFIRMED_AFTER; return how many."""
    return store.erase_unconfirmed(session, requested_before=now - FORGET_UNCONFIRMED_AFTER)


def window_volume(
    session: Session, *, policy: Policy, rate: Rate | None, now: datetime
) -> tuple[int, int] | None:
    """Steps due within any one window's length over the next day, and how many fit in it.

    None without a send window or a send rate. When the first exceeds the second,
    the global send rate holds the rest back past the window's end, later that day.
    """
    window = policy.send_window
    if window is None or rate is None:
        return None
    due = store.due_moments(session, statuses=(S.ACTIVE,), until=now + timedelta(days=1))
    return (
        timing.busiest(due, window.length),
        int(window.length.total_seconds() / rate.interval),
    )


def _end(subscriber: Subscriber, now: datetime) -> None:
    subscriber.ended_at = now
    subscriber.next_send_at = None
    subscriber.due_after = None
    subscriber.claimed_until = None
    subscriber.paused_at = None
    subscriber.resume_at = None


def message_id_for(
    subscriber_key: str, kind: EmailKind, number: int, domain: str, course_round: int = 1
) -> str:
    """The Message-ID of one email: the same on every retry, so a resend can be recognised."""
    material = f"{subscriber_key}:{kind}:{number}"
    if course_round > 1:
        material += f":{course_round}"
    digest = hashlib.sha256(material.encode()).hexdigest()[:24]
    return f"<{kind}-{number}.{digest}@{domain}>"


def due_email(subscriber: Subscriber, total_steps: int) -> tuple[EmailKind, int] | None:
    """Which email the subscription is due next, if any."""
    if subscriber.next_send_at is None:
        return None
    if subscriber.status == S.PENDING:
        return EmailKind.CONFIRMATION, subscriber.confirmations_requested
    if subscriber.status == S.ACTIVE and subscriber.next_step <= total_steps:
        return EmailKind.STEP, subscriber.next_step
    return None


def begin_delivery(
    session: Session,
    subscriber_id: int,
    *,
    policy: Policy,
    keys: MailboxKeys,
    domain: str,
    now: datetime,
) -> PlannedEmail | None:
    """Record in the ledger that the subscription's due email is being sent; None if not due.

    One subscription's `begin_deliveries`.
    """
    planned = begin_deliveries(
        session, [subscriber_id], policy=policy, keys=keys, domain=domain, now=now
    )
    return planned[0] if planned else None


def begin_deliveries(
    session: Session,
    subscriber_ids: list[int],
    *,
    policy: Policy,
    keys: MailboxKeys,
    domain: str,
    now: datetime,
) -> list[PlannedEmail]:
    """Record in the ledger that each subscription's due email is being sent; return those.

    A handful of statements for the whole list, whatever its length. The ledger
    row is unique per (subscriber, email): an email another worker is sending, or
    that was sent, is left out. A row left `sending` longer than the claim lease
    (a crashed worker) is taken over and sent again with the same Message-ID, unless
    the relay had the whole email (`handed_at`): that one counts as sent.
    Nothing goes to a suppressed mailbox but a confirmation, and no confirmation
    past the mailbox's daily cap (see `_cleared`). A subscription not due (backoff),
    gone, or whose claim lapsed (it may be queued elsewhere) is left out.
    """
    due: list[tuple[Subscriber, EmailKind, int]] = []
    for subscriber in store.lock_subscribers(session, subscriber_ids, with_consent=False):
        if subscriber.next_send_at is None or subscriber.next_send_at > now:
            continue
        if subscriber.claimed_until is None or subscriber.claimed_until <= now:
            continue
        email = due_email(subscriber, policy.total_steps)
        if email is not None:
            due.append((subscriber, *email))
    if not due:
        return []
    ledger = store.ledger_rows(session, [(s.id, kind, number) for s, kind, number in due])
    mailboxes = {s.id: keys.hash(s.email) for s, kind, _ in due if kind == EmailKind.STEP}
    suppressed = store.suppressions_of(session, list(mailboxes.values()))
    planned: list[PlannedEmail] = []
    fresh: list[tuple[Subscriber, EmailKind, int, str]] = []
    presumed: list[int] = []
    for subscriber, kind, number in due:
        delivery = ledger.get((subscriber.id, kind, number))
        since = suppressed.get(mailboxes.get(subscriber.id, ""))
        if not _cleared(
            session, subscriber, kind, policy, keys, since, now, first=delivery is None
        ):
            continue
        if delivery is None:
            message_id = message_id_for(
                subscriber.key, kind, number, domain, subscriber.course_round
            )
            fresh.append((subscriber, kind, number, message_id))
            continue
        if delivery.status == DeliveryStatus.SENT:
            # Sent, but the subscription was not moved on (it cannot happen through
            # this module, which does both in one transaction): move it on now.
            _advance(subscriber, kind, number, policy, now)
            continue
        if delivery.status == DeliveryStatus.SENDING:
            if now - delivery.started_at < policy.claim_lease:
                continue
            if delivery.handed_at is not None:
                # Its worker died after the relay had the whole email, before it read
                # the answer: sending it again could only duplicate it.
                _mark_sent(delivery, subscriber, policy, delivery.handed_at)
                presumed.append(delivery.id)
                continue
        delivery.status = DeliveryStatus.SENDING
        delivery.started_at = now
        delivery.handed_at = None
        delivery.attempts += 1
        planned.append(
            _planned(subscriber, kind, number, delivery.id, delivery.message_id, policy, now)
        )
    inserted = store.add_ledger_rows(
        session,
        [
            {
                "subscriber_id": subscriber.id,
                "kind": kind,
                "number": number,
                "message_id": message_id,
                "status": DeliveryStatus.SENDING,
                "attempts": 1,
                "started_at": now,
            }
            for subscriber, kind, number, message_id in fresh
        ],
    )
    planned.extend(
        _planned(subscriber, kind, number, inserted[subscriber.id], message_id, policy, now)
        for subscriber, kind, number, message_id in fresh
        if subscriber.id in inserted
    )
    if presumed:
        log.warning(
            "%d emails counted as sent: handed to the relay by a worker that stopped before "
            "it read the answer (ledger rows %s)",
            len(presumed),
            ", ".join(map(str, presumed[:10])),
        )
    return sorted(planned, key=lambda email: email.subscriber_id)


def _planned(
    subscriber: Subscriber,
    kind: EmailKind,
    number: int,
    delivery_id: int,
    message_id: str,
    policy: Policy,
    now: datetime,
) -> PlannedEmail:
    return PlannedEmail(
        delivery_id=delivery_id,
        subscriber_id=subscriber.id,
        subscriber_key=subscriber.key,
        email=subscriber.email,
        first_name=subscriber.first_name,
        kind=kind,
        number=number,
        message_id=message_id,
        next_step_at=next_step_at(subscriber, policy, now=now) if kind == EmailKind.STEP else None,
        time_zone=zone_of(subscriber, policy).key,
    )


def _cleared(
    session: Session,
    subscriber: Subscriber,
    kind: EmailKind,
    policy: Policy,
    keys: MailboxKeys,
    suppressed_since: datetime | None,
    now: datetime,
    *,
    first: bool,
) -> bool:
    """Whether the due email may go out; if not, the subscription stops waiting for it.

    Course steps never go to a suppressed mailbox (`suppressed_since`: when it was
    last put on the list) unless it confirmed after the suppression: such a
    subscription ends. A confirmation is the way back onto the list, so it may go,
    within the mailbox's daily cap; past the cap it is dropped (signing up again
    tomorrow asks again). Only a `first` attempt counts against the cap: a retry
    is the same email.
    """
    if kind == EmailKind.STEP:
        # The consent record is read (and loaded) only for a suppressed mailbox.
        if suppressed_since is None or not _blocks(
            suppressed_since, subscriber.consent.confirmed_at
        ):
            return True
        if _move(subscriber, "unsubscribe"):
            _end(subscriber, now)
        subscriber.last_error = "suppressed: the address bounced, complained or unsubscribed"
        return False
    if not first or store.take_confirmation(
        session, keys.hash(subscriber.email), limit=policy.confirmations_per_day, now=now
    ):
        return True
    subscriber.next_send_at = None
    subscriber.claimed_until = None
    subscriber.last_error = "confirmation cap reached for this mailbox today"
    return False


#: Subscriptions whose address gets a notice, not a confirmation, when it signs up again.
NOTICE_STATUSES = (S.ACTIVE, S.PAUSED, S.COMPLETED)


def begin_notice(
    session: Session,
    subscriber_id: int,
    number: int,
    *,
    policy: Policy,
    keys: MailboxKeys,
    domain: str,
    now: datetime,
) -> PlannedEmail | None:
    """Record in the ledger that notice `number` (the sign-up request's id) is being sent.

    None if the subscription is no longer one that gets notices, if the mailbox is
    suppressed, if this notice was begun before, or past the mailbox's daily cap
    (shared with confirmations, so the form cannot be used to flood a mailbox).
    """
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None or subscriber.status not in NOTICE_STATUSES:
        return None
    mailbox = keys.hash(subscriber.email)
    if _suppression_blocks(session, mailbox, subscriber.consent.confirmed_at):
        return None
    if store.ledger_row(session, subscriber.id, EmailKind.NOTICE, number) is not None:
        return None
    if not store.take_confirmation(session, mailbox, limit=policy.confirmations_per_day, now=now):
        return None
    delivery = Delivery(
        subscriber_id=subscriber.id,
        kind=EmailKind.NOTICE,
        number=number,
        message_id=message_id_for(subscriber.key, EmailKind.NOTICE, number, domain),
        status=DeliveryStatus.SENDING,
        started_at=now,
    )
    if not store.add_ledger_row(session, delivery):
        return None
    return PlannedEmail(
        delivery_id=delivery.id,
        subscriber_id=subscriber.id,
        subscriber_key=subscriber.key,
        email=subscriber.email,
        first_name=subscriber.first_name,
        kind=EmailKind.NOTICE,
        number=number,
        message_id=delivery.message_id,
        time_zone=zone_of(subscriber, policy).key,
        finished=subscriber.status == S.COMPLETED,
    )


def end_notice(
    session: Session,
    delivery_id: int,
    *,
    now: datetime,
    error: str | None = None,
    failure_class: FailureClass | None = None,
) -> None:
    """Record a notice as sent, or with `error` as failed: a notice is tried once only.

    Its subscription's schedule is not touched: a notice is no step.
    """
    delivery = session.get_one(Delivery, delivery_id)
    if error is None:
        delivery.status = DeliveryStatus.SENT
        delivery.sent_at = now
        return
    delivery.status = DeliveryStatus.FAILED
    delivery.error = error
    delivery.failure_class = failure_class


def finish_delivery(session: Session, delivery_id: int, *, policy: Policy, now: datetime) -> None:
    """The relay accepted the email: mark it sent and schedule the next one."""
    finish_deliveries(session, [delivery_id], policy=policy, now=now)


def finish_deliveries(
    session: Session, delivery_ids: list[int], *, policy: Policy, now: datetime
) -> None:
    """The relay accepted these emails: mark them sent and schedule each next one.

    A handful of statements for the whole list. Doing it again changes nothing:
    a subscription moves past an email once, however often it is recorded.
    """
    # The ledger rows as plain values and one UPDATE: a chunk's rows need no objects.
    # The subscriptions are locked before the rows are written, as everywhere else.
    entries = store.ledger_entries(session, delivery_ids)
    subscribers = {
        subscriber.id: subscriber
        for subscriber in store.lock_subscribers(
            session, [entry.subscriber_id for entry in entries], with_consent=False
        )
    }
    # A subscription erased since its rows were read took its rows with it.
    entries = [entry for entry in entries if entry.subscriber_id in subscribers]
    store.set_sent(session, [entry.id for entry in entries], now)
    for entry in entries:
        subscriber = subscribers[entry.subscriber_id]
        _moves_on(subscriber, entry.kind, entry.number, policy, now)
        if entry.kind == EmailKind.STEP and entry.status != DeliveryStatus.SENT:
            # What the session's change tracking reports for a sent row it loaded.
            outbound.note(
                session,
                "step_sent",
                subscriber_id=subscriber.id,
                email=subscriber.email,
                status=str(subscriber.status),
                step=entry.number,
            )


def _mark_sent(delivery: Delivery, subscriber: Subscriber, policy: Policy, now: datetime) -> None:
    delivery.status = DeliveryStatus.SENT
    delivery.sent_at = now
    delivery.error = None
    delivery.failure_class = None
    _moves_on(subscriber, delivery.kind, delivery.number, policy, now)


def _moves_on(
    subscriber: Subscriber, kind: EmailKind, number: int, policy: Policy, now: datetime
) -> None:
    """The subscription after its email (kind, number) was sent: its failures are
    forgotten, and it goes on to what comes next."""
    subscriber.send_failures = 0
    subscriber.last_error = None
    _advance(subscriber, kind, number, policy, now)


def release_deliveries(session: Session, delivery_ids: list[int]) -> None:
    """Emails begun but never handed to the relay (the batch stopped): they may be begun again.

    Their attempt is not counted, and no other worker has to wait for a lease to lapse.
    A row begun for its first try goes, as if never begun (it is no problem to show the
    operator); one tried before waits as it did, with that try's error and class.
    """
    for delivery in store.deliveries(session, delivery_ids):
        if delivery.status != DeliveryStatus.SENDING:
            continue
        if delivery.attempts <= 1:
            session.delete(delivery)
        else:
            delivery.status = DeliveryStatus.DEFERRED
            delivery.attempts -= 1


def _advance(
    subscriber: Subscriber, kind: EmailKind, number: int, policy: Policy, now: datetime
) -> None:
    subscriber.claimed_until = None
    if kind == EmailKind.CONFIRMATION:
        if subscriber.status == S.PENDING:
            subscriber.next_send_at = None
        return
    subscriber.next_step = max(subscriber.next_step, number + 1)
    if subscriber.next_step > policy.total_steps:
        if _move(subscriber, "complete"):
            _end(subscriber, now)
    elif subscriber.status == S.ACTIVE:
        _schedule(subscriber, now + policy.step_interval, policy)


def defer_delivery(
    session: Session,
    delivery_id: int,
    *,
    error: str,
    now: datetime,
    counts: bool,
    keys: MailboxKeys,
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
                keys=keys,
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
    keys: MailboxKeys,
    failure_class: FailureClass | None = None,
) -> None:
    """Give an email up: it is marked failed for the operator to see.

    With `bounce` the address bounced: it takes the same path as a hard bounce a
    relay reports later (recorded, course ended, mailbox suppressed). Otherwise
    the subscription is held (nothing more is sent) until it is resumed or ends.
    """
    delivery = session.get_one(Delivery, delivery_id)
    subscriber = session.get_one(Subscriber, delivery.subscriber_id, with_for_update=True)
    delivery.status = DeliveryStatus.FAILED
    delivery.error = error
    delivery.failure_class = failure_class
    subscriber.last_error = error
    subscriber.claimed_until = None
    if not bounce:
        subscriber.next_send_at = None
        return
    event = MailEvent(
        source="smtp",
        event_id=delivery.message_id,
        kind=MailEventKind.HARD_BOUNCE,
        mailbox_hash=keys.hash(subscriber.email),
        template=delivery.template,
        occurred_at=now,
        detail=error[:2000] or None,
    )
    store.add_mail_event(session, event)
    bounced(session, subscriber, keys=keys, now=now)


def progress(subscriber: Subscriber, total_steps: int) -> int:
    """How many of the course's `total_steps` steps the subscriber has received."""
    return min(subscriber.next_step - 1, total_steps)


@dataclass(frozen=True)
class Report:
    """One thing a relay, a bounce message or a feedback loop said about an email we sent."""

    #: Where it came from: ses, postmark, mailgun, sendgrid, dsn or arf.
    source: str
    #: The source's own id for it: the same report delivered twice has the same id.
    event_id: str
    #: What the source says happened; a bounce's status code may overrule it (`apply_report`).
    kind: MailEventKind
    occurred_at: datetime
    #: Our Message-ID (with or without angle brackets), when the report carries it.
    message_id: str | None = None
    recipient: str | None = None
    #: The remote server's answer as the report quotes it ("smtp; 550 5.1.1 ...").
    detail: str = ""
    #: The enhanced status code (RFC 3463) the report gives, when apart from `detail`.
    status: str | None = None


#: Bounce kinds as the failure table sees them (app/failures.py).
_BOUNCE_KINDS = {
    FailureClass.RECIPIENT_PERMANENT: MailEventKind.HARD_BOUNCE,
    FailureClass.RECIPIENT_TEMPORARY: MailEventKind.SOFT_BOUNCE,
}


def reported_kind(report: Report) -> MailEventKind:
    """What a report means for the list, by the same failure table as SMTP answers at send time.

    A bounce whose status code is about the address (5.1.1, a full mailbox) stays a
    hard or soft bounce; one about our sending (5.7.x spam or DMARC refusals,
    throttling, the remote system) is `blocked`: nobody is bounced for it.
    """
    if report.kind not in (MailEventKind.HARD_BOUNCE, MailEventKind.SOFT_BOUNCE):
        return report.kind
    rule = classify_reported(
        report.detail,
        status=report.status,
        permanent=report.kind == MailEventKind.HARD_BOUNCE,
    )
    return _BOUNCE_KINDS.get(rule.cls, MailEventKind.BLOCKED)


def apply_report(
    session: Session, report: Report, *, keys: MailboxKeys, policy: Policy, now: datetime
) -> str:
    """Apply a report once: record it, then bounce, suppress or mark delivered; say what it did.

    The email is found by its Message-ID, else the recipient's live subscription.
    A report about an erased address still suppresses its mailbox (by hash).
    """
    delivery = store.delivery_by_message_id(session, report.message_id)
    subscriber = delivery.subscriber if delivery is not None else None
    if subscriber is None and report.recipient:
        subscriber = store.subscriber_by_email(session, report.recipient)
    address = subscriber.email if subscriber is not None else report.recipient
    if not address:
        return f"{report.source} {report.event_id}: no email of ours found, ignored"
    mailbox = keys.hash(address)
    kind = reported_kind(report)
    event = MailEvent(
        source=report.source,
        event_id=report.event_id[:255],
        kind=kind,
        mailbox_hash=mailbox,
        template=delivery.template if delivery is not None else None,
        occurred_at=report.occurred_at,
        detail=report.detail[:2000] or None,
    )
    if not store.add_mail_event(session, event):
        return f"{report.source} {report.event_id}: already applied"
    what = f"{report.source} {report.event_id}: {kind} for subscriber " + (
        str(subscriber.id) if subscriber is not None else "(erased)"
    )
    if kind == MailEventKind.DELIVERED:
        if delivery is None and subscriber is not None:
            delivery = store.last_sent(session, subscriber.id)
        if delivery is not None and delivery.delivered_at is None:
            delivery.delivered_at = report.occurred_at
        return what + ", marked delivered"
    if kind == MailEventKind.BLOCKED:
        return what + ", about our sending, not the address: nobody bounced"
    if kind == MailEventKind.COMPLAINT:
        if subscriber is not None:
            complain(session, subscriber, keys=keys, now=now)
        else:
            store.suppress(session, mailbox, SuppressionReason.COMPLAINED, now=now)
        return what + ", unsubscribed and suppressed"
    if kind == MailEventKind.SOFT_BOUNCE and not soft_bounce(
        session, mailbox, policy=policy, now=now
    ):
        return what + ", counted"
    if subscriber is not None:
        bounced(session, subscriber, keys=keys, now=now)
    else:
        store.suppress(session, mailbox, SuppressionReason.BOUNCED, now=now)
    return what + ", bounced and suppressed"


#: The kinds `flask stats` counts per email and per day.
HYGIENE_KINDS = (
    MailEventKind.HARD_BOUNCE,
    MailEventKind.SOFT_BOUNCE,
    MailEventKind.COMPLAINT,
    MailEventKind.BLOCKED,
)


def hygiene_counts(session: Session, *, now: datetime, days: int = 7) -> HygieneFigures:
    """Bounces and complaints per email and per day, and the complaint rate."""
    since = now - timedelta(days=days)
    per_step: dict[tuple[str, str], int] = {}
    per_day: dict[tuple[str, str], int] = {}
    for template, kind, occurred in store.mail_events(session, HYGIENE_KINDS, since=since):
        step_key = (template or "unknown", kind)
        per_step[step_key] = per_step.get(step_key, 0) + 1
        day_key = (occurred.date().isoformat(), kind)
        per_day[day_key] = per_day.get(day_key, 0) + 1
    complaints = sum(n for (_day, kind), n in per_day.items() if kind == MailEventKind.COMPLAINT)
    return HygieneFigures(
        days=days,
        per_step=per_step,
        per_day=per_day,
        sent=store.sent_since(session, since),
        complaints=complaints,
    )


#: Gmail's bulk-sender rules: keep the spam-complaint rate under 0.3 %.
GMAIL_COMPLAINT_LIMIT = 0.003


@dataclass(frozen=True)
class HygieneFigures:
    """Bounces and complaints over the last `days` days, by email and by day."""

    days: int
    #: (template, kind) -> count
    per_step: dict[tuple[str, str], int]
    #: (ISO day, kind) -> count
    per_day: dict[tuple[str, str], int]
    sent: int
    complaints: int

    @property
    def complaint_rate(self) -> float:
        """Complaints per email sent in the period (0 when nothing was sent)."""
        return self.complaints / self.sent if self.sent else 0.0


def send_now(session: Session, subscriber: Subscriber, *, total_steps: int, now: datetime) -> bool:
    """Make an active subscription's next step due now (an operator's choice).

    Say whether it changed; a claim a worker holds is left alone, so nothing goes twice.
    """
    if subscriber.status != S.ACTIVE or subscriber.next_step > total_steps:
        return False
    if subscriber.next_send_at is not None and subscriber.next_send_at <= now:
        return False
    subscriber.next_send_at = now
    return True


def imported_state(
    status: SubscriberStatus,
    step: int,
    *,
    key: str,
    time_zone: str | None,
    policy: Policy,
    now: datetime,
) -> dict[str, object]:
    """The scheduling fields of a subscription imported in `status` at `step`.

    A pending one's confirmation is due now (the tick sends it); an active one's step
    is due now, held for its send window; a paused one waits for "resume"; a completed
    one is past the last step; an ended one is history and nothing is due.
    """
    if status == S.COMPLETED:
        step = policy.total_steps + 1
    state: dict[str, object] = {
        "status": str(status),
        "next_step": 1 if status == S.PENDING else step,
        "next_send_at": None,
        "due_after": None,
        "paused_at": None,
        "ended_at": None,
        "confirmations_requested": 1 if status == S.PENDING else 0,
        "confirmation_requested_at": now if status == S.PENDING else None,
    }
    if status == S.PENDING:
        state["next_send_at"] = now
    elif status == S.ACTIVE:
        state["due_after"] = now
        state["next_send_at"] = timing.next_open(
            now,
            zone=timing.zone(time_zone, policy.default_time_zone),
            window=policy.send_window,
            key=key,
        )
    elif status == S.PAUSED:
        state["paused_at"] = now
    elif status in ENDED_STATUSES:
        state["ended_at"] = now
    return state


def _add_new(session: Session, subscriber: Subscriber) -> SubscribeResult:
    """Add a new subscription; if another request added the address's live one at the
    same moment, that one stands (the unique index on live addresses decides)."""
    try:
        with session.begin_nested():
            session.add(subscriber)
    except IntegrityError:
        live = session.scalars(
            select(Subscriber).where(
                Subscriber.email == subscriber.email, Subscriber.status.not_in(ENDED_STATUSES)
            )
        ).one()
        return SubscribeResult(SubscribeOutcome.UNCHANGED, live.id)
    return SubscribeResult(SubscribeOutcome.CREATED, subscriber.id)


def subscribe_confirmed(
    session: Session,
    email: str,
    *,
    first_name: str = "",
    time_zone: str | None = None,
    source: str,
    wording: str,
    consented_at: datetime,
    now: datetime,
) -> SubscribeResult:
    """Add an (already normalised) address whose consent was given elsewhere: active, step 1
    due now, with no confirmation email. A live subscription of the address is left as it is.

    The suppression list still applies when step 1 is sent.
    """
    if time_zone is not None:
        check_time_zone(time_zone)
    live = session.scalar(
        select(Subscriber).where(
            Subscriber.email == email, Subscriber.status.not_in(ENDED_STATUSES)
        )
    )
    if live is not None:
        return SubscribeResult(SubscribeOutcome.UNCHANGED, live.id)
    subscriber = Subscriber(
        email=email,
        first_name=clean_name(first_name),
        time_zone=time_zone,
        status=S.ACTIVE,
        next_step=1,
        created_at=now,
        confirmations_requested=0,
        consent=Consent(
            source=source,
            wording=wording,
            requested_at=consented_at,
            confirmed_at=consented_at,
        ),
    )
    _send_at_once(subscriber, now)
    return _add_new(session, subscriber)
