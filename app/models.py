"""The tables: subscribers, their consent records and the delivery ledger."""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime

TOTAL_STEPS = 10


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


class DeliveryStatus(StrEnum):
    """Where one email stands in the ledger."""

    SENDING = "sending"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"


def template_name(kind: EmailKind, number: int) -> str:
    """The email template that sends `kind` number `number` (like `step-03`)."""
    return "confirmation" if kind == EmailKind.CONFIRMATION else f"step-{number:02d}"


def new_key() -> str:
    """A random, unguessable public key for a subscription (what signed links carry)."""
    return secrets.token_urlsafe(16)


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
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(32), unique=True, default=new_key)
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[SubscriberStatus] = mapped_column(String(16), default=SubscriberStatus.PENDING)
    #: The course step to send next (1..TOTAL_STEPS).
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

    consent: Mapped[Consent] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan", uselist=False
    )
    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan", order_by="Delivery.id"
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
    error: Mapped[str | None] = mapped_column(Text)
    #: Who the last failure was about (app.failures.FailureClass); NULL once sent.
    failure_class: Mapped[str | None] = mapped_column(String(24))

    subscriber: Mapped[Subscriber] = relationship(back_populates="deliveries")

    @property
    def template(self) -> str:
        """The name of the email template this row sends."""
        return template_name(self.kind, self.number)


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
