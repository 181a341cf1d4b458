"""The tables: subscribers, their consent records and the delivery ledger."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime


class SubscriberStatus(StrEnum):
    """Where a subscription stands; `drip.TRANSITIONS` says how it may move."""

    PENDING = "pending"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"


#: Statuses that end a subscription: the address may subscribe afresh.
ENDED_STATUSES = (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED)


class EmailKind(StrEnum):
    """Which kind of email a ledger row records."""

    CONFIRMATION = "confirmation"
    STEP = "step"
    #: "You're already signed up": to an address that signs up while its course runs or ran.
    NOTICE = "notice"


class DeliveryStatus(StrEnum):
    """Where one email stands in the ledger."""

    SENDING = "sending"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"


def template_name(kind: EmailKind, number: int) -> str:
    """The email template that sends `kind` number `number` (like `step-03`)."""
    if kind == EmailKind.STEP:
        return f"step-{number:02d}"
    return str(kind)


def new_key() -> str:
    """A random, unguessable public key for a subscription (what signed links carry)."""
    return secrets.token_urlsafe(16)


def new_keys(batch: int = 1000) -> Iterator[str]:
    """new_key()s without end, the randomness drawn `batch` keys at a time (an import
    needs one a row, and one system call a key costs it more than the key itself)."""
    while True:
        drawn = secrets.token_bytes(16 * batch)
        for start in range(0, len(drawn), 16):
            yield base64.urlsafe_b64encode(drawn[start : start + 16]).rstrip(b"=").decode()


class Subscriber(Base):
    """One subscription of one address to the course."""

    __tablename__ = "subscriber"
    __table_args__ = (
        # One live subscription per address; ended ones stay as history.
        Index(
            "uq_subscriber_live_email",
            "email",
            unique=True,
            postgresql_where=text("status NOT IN ('unsubscribed', 'bounced')"),
            sqlite_where=text("status NOT IN ('unsubscribed', 'bounced')"),
        ),
        # The console counts subscriptions by status and step from this index alone,
        # and finds any address (ended ones too) by equality.
        Index("ix_subscriber_status_next_step", "status", "next_step"),
        Index("ix_subscriber_email", "email"),
        # Room on each page for updated rows: a claim, which changes no indexed
        # column, is then a HOT update that writes no index entries.
        {"sqlite_autoincrement": True, "postgresql_with": {"fillfactor": 90}},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(32), unique=True, default=new_key)
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[SubscriberStatus] = mapped_column(String(16), default=SubscriberStatus.PENDING)
    #: The course step to send next (1 up to the course's step count; past it: done).
    next_step: Mapped[int] = mapped_column(Integer, default=1)
    #: When the next email (confirmation or step) is due; NULL when nothing is.
    next_send_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: A tick or worker holds this subscriber's due email until then.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: How many confirmation emails were asked for (the first sign-up and each re-send).
    confirmations_requested: Mapped[int] = mapped_column(Integer, default=1)
    confirmation_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Temporary failures in a row for the email now due (reset by a success).
    send_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The subscriber's IANA time zone; NULL: the DEFAULT_TIME_ZONE setting.
    time_zone: Mapped[str | None] = mapped_column(String(64))
    #: The earliest the next step may go, before the send window moves it later; NULL
    #: for a step sent at once, never held for a window (step 1, "send my next step now").
    due_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: A paused course resumes by itself then ("pause for a week", "pause until").
    resume_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: Which run through the course this is (1, then 2 after "start again").
    course_round: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    consent: Mapped[Consent] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan", uselist=False
    )
    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan", order_by="Delivery.id"
    )
    #: Links followed, only with CLICK_TRACKING=per-person; erased with the subscription.
    clicks: Mapped[list[Click]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Click.id"
    )

    def __repr__(self) -> str:
        return f"<Subscriber {self.id} {self.status} step={self.next_step}>"


class Consent(Base):
    """The record of how and when an address asked for the course and confirmed it."""

    __tablename__ = "consent"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscriber.id", ondelete="CASCADE"), unique=True
    )
    source: Mapped[str] = mapped_column(String(16))
    wording: Mapped[str] = mapped_column(Text)
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirmed_ip: Mapped[str | None] = mapped_column(String(45))
    confirmed_user_agent: Mapped[str | None] = mapped_column(String(512))

    subscriber: Mapped[Subscriber] = relationship(back_populates="consent")


class Delivery(Base):
    """The ledger: one row per email a subscription is due, so no email is sent twice."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "kind", "number"),
        # The console's emails per day, and its counts of deferred and failed emails by step.
        Index("ix_delivery_sent_at", "sent_at"),
        Index("ix_delivery_status_kind_number", "status", "kind", "number"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscriber.id", ondelete="CASCADE"))
    kind: Mapped[EmailKind] = mapped_column(String(16))
    #: The step number, or for confirmations which re-send this is.
    number: Mapped[int] = mapped_column(Integer)
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[DeliveryStatus] = mapped_column(String(16), default=DeliveryStatus.SENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Set while `sending`, just before the email's final "." went to the relay: the relay
    #: had the whole message. A row still `sending` with this set once its lease lapsed
    #: belongs to a worker that died before it read the answer: it counts as sent, since
    #: sending it again could only duplicate it (see sending.send_batch).
    handed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the recipient's mail server reported the email delivered (a provider event).
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    #: Who the last failure was about (app.failures.FailureClass); NULL once sent.
    failure_class: Mapped[str | None] = mapped_column(String(24))

    subscriber: Mapped[Subscriber] = relationship(back_populates="deliveries")

    @property
    def template(self) -> str:
        """The name of the email template this row sends."""
        return template_name(self.kind, self.number)


class SignupRequest(Base):
    """One sign-up as it was asked for, before anything is decided about it.

    The request only records the intent, the same work whatever the address's state;
    a job (or the scheduler's tick, if Redis was down) decides what to do and send.
    """

    __tablename__ = "signup_request"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The normalised address.
    email: Mapped[str] = mapped_column(String(320), index=True)
    first_name: Mapped[str] = mapped_column(String(100), default="")
    time_zone: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    wording: Mapped[str] = mapped_column(Text)
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: When it was decided; NULL while it waits.
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: What was decided (drip.SubscribeOutcome), for operators.
    outcome: Mapped[str | None] = mapped_column(String(24))


class SuppressionReason(StrEnum):
    """Why an address is on the suppression list."""

    BOUNCED = "bounced"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    ERASED = "erased"


class Suppression(Base):
    """An address never mailed again until it signs up and confirms after `suppressed_at`.

    Only a keyed hash of the normalised mailbox is kept, so an erased address stays
    suppressed without being stored.
    """

    __tablename__ = "suppression"

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[SuppressionReason] = mapped_column(String(16))
    suppressed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MailEventKind(StrEnum):
    """What a relay, a DSN or a feedback loop reported about an email after it was sent."""

    DELIVERED = "delivered"
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    COMPLAINT = "complaint"
    #: Refused for a reason about our sending (spam filter, DMARC, reputation), not the address.
    BLOCKED = "blocked"


class MailEvent(Base):
    """One report about a sent email, kept once per (source, event id): replays change nothing.

    It outlives an erased subscription (no address, only the mailbox hash), so the
    figures per step and per day and the soft-bounce count stay right.
    """

    __tablename__ = "mail_event"
    __table_args__ = (
        UniqueConstraint("source", "event_id"),
        Index("ix_mail_event_mailbox_kind", "mailbox_hash", "kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: ses, postmark, mailgun, sendgrid, dsn or arf.
    source: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[MailEventKind] = mapped_column(String(16))
    mailbox_hash: Mapped[str | None] = mapped_column(String(64))
    #: The email it concerns, as a template name (like `step-03`), when known.
    template: Mapped[str | None] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    detail: Mapped[str | None] = mapped_column(Text)


class ConfirmationCount(Base):
    """Confirmation emails sent to one mailbox (by keyed hash) on one UTC day.

    Kept in the database, not Redis: a lost counter would let a mail-bomb through,
    and nothing (unsubscribing, erasure) resets it.
    """

    __tablename__ = "confirmation_count"

    mailbox_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    sent: Mapped[int] = mapped_column(Integer, default=0)


class Operator(Base):
    """Someone who may sign in to the console at /admin (`flask admin create EMAIL`)."""

    __tablename__ = "operator"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    #: An argon2id hash in PHC string form; never the password itself.
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OperatorSession(Base):
    """A signed-in console session: the cookie holds a random token, the table its hash."""

    __tablename__ = "operator_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: SHA-256 of the token in the operator's cookie: a copy of this table signs nobody in.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    operator_id: Mapped[int] = mapped_column(ForeignKey("operator.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)

    operator: Mapped[Operator] = relationship()


class AuditEntry(Base):
    """One action an operator took in the console, kept after the subscription is erased."""

    __tablename__ = "audit_entry"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The operator's address at the time, so the entry outlives the operator's account.
    operator_email: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(32))
    #: Not a foreign key: the entry stays when the subscription is erased.
    subscriber_id: Mapped[int | None] = mapped_column(Integer, index=True)
    detail: Mapped[str] = mapped_column(Text, default="")


class LinkClicks(Base):
    """How often one link of one email was followed, counted for everyone together.

    Kept only with CLICK_TRACKING on; a link is named by its text, not its URL, since
    our own links carry each subscriber's token.
    """

    __tablename__ = "link_clicks"
    __table_args__ = (UniqueConstraint("template", "link"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    template: Mapped[str] = mapped_column(String(64))
    link: Mapped[str] = mapped_column(String(500))
    clicks: Mapped[int] = mapped_column(Integer, default=0)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Click(Base):
    """One person following one link: kept only with CLICK_TRACKING=per-person."""

    __tablename__ = "click"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscriber.id", ondelete="CASCADE"), index=True
    )
    template: Mapped[str] = mapped_column(String(64))
    link: Mapped[str] = mapped_column(String(500))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiScope(StrEnum):
    """What an API token may do: read only, or read and change."""

    READ = "read"
    WRITE = "write"


class ApiToken(Base):
    """A bearer token for the admin API at /api/v1 (`flask admin token` or the console).

    Only the SHA-256 of the token is kept: the token is 32 random bytes, so its hash
    cannot be reversed by guessing, and a copy of this table lets nobody in.
    """

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[ApiScope] = mapped_column(String(8))
    #: Who made it, kept as an address so the token's audit entries outlive the account.
    operator_email: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEndpoint(Base):
    """A URL that receives signed event notifications (Standard Webhooks)."""

    __tablename__ = "webhook_endpoint"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    #: `whsec_` and the base64 of the signing key.
    secret: Mapped[str] = mapped_column(String(100))
    #: The event types it receives, comma-separated.
    events: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Why it was disabled (shown in the console), or NULL.
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    @property
    def event_types(self) -> list[str]:
        """The event types this endpoint receives."""
        return [name for name in self.events.split(",") if name]


class WebhookEvent(Base):
    """The outbox: one event for one endpoint, delivered at least once, same id every try."""

    __tablename__ = "webhook_event"
    __table_args__ = (Index("ix_webhook_event_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The `webhook-id` header: the receiver's key for ignoring duplicates.
    message_id: Mapped[str] = mapped_column(String(40), unique=True)
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoint.id", ondelete="CASCADE"), index=True
    )
    event_type: Mapped[str] = mapped_column(String(32))
    #: Not a foreign key: erasing the subscription deletes its events by this id (their
    #: bodies hold the address), and a delivered event's row is not the subscription's.
    subscriber_id: Mapped[int | None] = mapped_column(Integer, index=True)
    #: The JSON body, fixed when the event happened (the signature covers these bytes).
    payload: Mapped[str] = mapped_column(Text)
    #: pending, delivered or failed.
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    endpoint: Mapped[WebhookEndpoint] = relationship()


class WebhookAttempt(Base):
    """One try at delivering an event: what the endpoint answered, or what went wrong."""

    __tablename__ = "webhook_attempt"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_event.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
