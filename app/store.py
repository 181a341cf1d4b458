"""The ledger and claim SQL: who is claimed by whom until when, and one row per email.

Dialect differences live here and only here (PostgreSQL `FOR UPDATE SKIP LOCKED`,
`UPDATE ... RETURNING` on both). The store knows no course rules: which email is
due and what happens after it are the course's business (app/drip.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import Delivery, DeliveryStatus, EmailKind, Subscriber, SubscriberStatus


@dataclass(frozen=True)
class Claim:
    """Subscriptions claimed together, and a key naming exactly this due work."""

    ids: list[int]
    key: str


def claim_due(
    session: Session,
    *,
    now: datetime,
    lease: timedelta,
    limit: int,
    statuses: tuple[SubscriberStatus, ...],
    ids: list[int] | None = None,
) -> Claim | None:
    """Claim up to `limit` subscriptions in `statuses` whose next email is due.

    A claim lasts `lease`: two ticks or two web requests never claim the same
    subscription at once, and a claim whose job was lost lapses and is taken again.
    The key depends only on which subscriptions and which due moments were
    claimed, so claiming the same work again (after a lapse) gives the same key.
    """
    due = (
        select(Subscriber.id)
        .where(
            Subscriber.next_send_at <= now,
            Subscriber.status.in_(statuses),
            or_(Subscriber.claimed_until.is_(None), Subscriber.claimed_until <= now),
        )
        .order_by(Subscriber.next_send_at)
        .limit(limit)
    )
    if ids is not None:
        due = due.where(Subscriber.id.in_(ids))
    if session.get_bind().dialect.name == "postgresql":
        # Concurrent ticks skip each other's rows instead of waiting on them.
        due = due.with_for_update(skip_locked=True)
    rows = sorted(
        session.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(due.scalar_subquery()))
            .values(claimed_until=now + lease)
            .returning(Subscriber.id, Subscriber.next_send_at)
            .execution_options(synchronize_session=False)
        ).all()
    )
    if not rows:
        return None
    material = ",".join(f"{row.id}@{row.next_send_at.timestamp():.6f}" for row in rows)
    return Claim([row.id for row in rows], hashlib.sha256(material.encode()).hexdigest()[:24])


def start_claims(session: Session, ids: list[int], *, now: datetime, lease: timedelta) -> list[int]:
    """Renew the claims a starting job holds, for `lease` from now; return the ids still held.

    A claim that lapsed before the job started is not renewed: that subscription
    may have been claimed again and queued elsewhere, so this job leaves it alone.
    """
    if not ids:
        return []
    held = session.scalars(
        update(Subscriber)
        .where(Subscriber.id.in_(ids), Subscriber.claimed_until > now)
        .values(claimed_until=now + lease)
        .returning(Subscriber.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(held)


def release_claims(session: Session, ids: list[int], *, retry_at: datetime | None = None) -> None:
    """Give claims back; with `retry_at`, their due emails also wait until then."""
    if not ids:
        return
    if retry_at is not None:
        session.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(ids), Subscriber.next_send_at < retry_at)
            .values(next_send_at=retry_at)
            .execution_options(synchronize_session=False)
        )
    session.execute(
        update(Subscriber)
        .where(Subscriber.id.in_(ids))
        .values(claimed_until=None)
        .execution_options(synchronize_session=False)
    )


def lock_subscriber(session: Session, subscriber_id: int) -> Subscriber | None:
    """The subscription, locked for this transaction; None if it is gone."""
    return session.get(Subscriber, subscriber_id, with_for_update=True)


def ledger_row(
    session: Session, subscriber_id: int, kind: EmailKind, number: int
) -> Delivery | None:
    """The ledger row of one email of one subscription, if it exists."""
    return session.scalar(
        select(Delivery).where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.kind == kind,
            Delivery.number == number,
        )
    )


def add_ledger_row(session: Session, delivery: Delivery) -> bool:
    """Insert a new ledger row; False if another worker inserted the same email first."""
    try:
        with session.begin_nested():
            session.add(delivery)
    except IntegrityError:
        return False
    return True


def counts(session: Session, *, now: datetime) -> dict[str, int]:
    """Figures for operators: subscriptions by status, emails by ledger status, due now."""
    figures = {
        f"subscribers_{status}": count
        for status, count in session.execute(
            select(Subscriber.status, func.count()).group_by(Subscriber.status)
        )
    }
    figures |= {
        f"emails_{status}": count
        for status, count in session.execute(
            select(Delivery.status, func.count()).group_by(Delivery.status)
        )
    }
    figures["emails_sent_last_24h"] = (
        session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(
                Delivery.status == DeliveryStatus.SENT, Delivery.sent_at >= now - timedelta(days=1)
            )
        )
        or 0
    )
    figures["due_now"] = (
        session.scalar(
            select(func.count()).select_from(Subscriber).where(Subscriber.next_send_at <= now)
        )
        or 0
    )
    return figures


def failed_deliveries(session: Session, *, limit: int = 20) -> list[Delivery]:
    """The most recent emails given up on, with their errors, for operators."""
    return list(
        session.scalars(
            select(Delivery)
            .where(Delivery.status == DeliveryStatus.FAILED)
            .order_by(Delivery.started_at.desc(), Delivery.id.desc())
            .limit(limit)
        )
    )
