"""What the operator's console shows: aggregate figures, the funnel, subscribers and problems.

Plain functions over a SQLAlchemy session and an explicit `now`; no Flask. Every figure
over many rows is one aggregate query (GROUP BY, served by the indexes of the
console's migration), so the pages stay fast with a million subscriptions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from rq import Queue
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.breaker import RelayState
from app.models import (
    AuditEntry,
    Consent,
    Delivery,
    DeliveryStatus,
    EmailKind,
    LinkClicks,
    Subscriber,
    SubscriberStatus,
    template_name,
)

if TYPE_CHECKING:
    from app.services import Services

S = SubscriberStatus
#: Subscriptions per page in the console's lists.
PAGE_SIZE = 50


def status_counts(session: Session) -> dict[SubscriberStatus, int]:
    """Subscriptions by status, every status present (zero when none)."""
    counts = dict.fromkeys(S, 0)
    for status, count in session.execute(
        select(Subscriber.status, func.count()).group_by(Subscriber.status)
    ):
        counts[S(status)] = count
    return counts


def sent_per_day(session: Session, *, now: datetime, days: int = 30) -> list[tuple[date, int]]:
    """Emails the relay accepted on each of the last `days` days (UTC), oldest first."""
    first = (now - timedelta(days=days - 1)).date()
    since = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo)
    day = func.date(Delivery.sent_at)
    # Only an accepted email has a sent_at, so the sent_at index alone answers this
    # (an index-only scan on PostgreSQL), without reading the ledger's rows.
    rows = session.execute(select(day, func.count()).where(Delivery.sent_at >= since).group_by(day))
    # SQLite answers the date as text, PostgreSQL as a date.
    found = {
        value if isinstance(value, date) else date.fromisoformat(value): n for value, n in rows
    }
    return [
        (first + timedelta(days=i), found.get(first + timedelta(days=i), 0)) for i in range(days)
    ]


@dataclass(frozen=True)
class Due:
    """Emails waiting: overdue now, and coming due within the next 24 hours."""

    overdue: int
    next_24h: int


def due(session: Session, *, now: datetime) -> Due:
    """How many subscriptions have an email due now, and within the next 24 hours."""
    waiting = Subscriber.status.in_((S.PENDING, S.ACTIVE))
    overdue, soon = session.execute(
        select(
            func.count().filter(Subscriber.next_send_at <= now),
            func.count().filter(Subscriber.next_send_at > now),
        ).where(waiting, Subscriber.next_send_at <= now + timedelta(days=1))
    ).one()
    return Due(overdue=overdue or 0, next_24h=soon or 0)


def delivery_counts(session: Session) -> dict[DeliveryStatus, int]:
    """Emails now deferred (to be retried), failed (bounced) or being sent."""
    counts = dict.fromkeys(
        (DeliveryStatus.SENDING, DeliveryStatus.DEFERRED, DeliveryStatus.FAILED), 0
    )
    for status, count in session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.status.in_(list(counts)))
        .group_by(Delivery.status)
    ):
        counts[DeliveryStatus(status)] = count
    return counts


def ledger_counts(session: Session) -> dict[DeliveryStatus, int]:
    """Every email in the ledger by status, every status present."""
    counts = dict.fromkeys(DeliveryStatus, 0)
    for status, count in session.execute(
        select(Delivery.status, func.count()).group_by(Delivery.status)
    ):
        counts[DeliveryStatus(status)] = count
    return counts


@dataclass(frozen=True)
class FunnelStep:
    """One step of the course and what happened around it."""

    number: int
    #: Subscriptions that received this step (its email was accepted by the relay).
    reached: int
    #: Paused (now) having received this step and not the next.
    paused_after: int
    #: Unsubscribed having received this step and not the next.
    unsubscribed_after: int
    #: Whose address bounced on this step's email.
    bounced_at: int

    @property
    def left_after(self) -> int:
        """Those who stopped here for good (unsubscribed after it, or bounced at it)."""
        return self.unsubscribed_after + self.bounced_at


@dataclass(frozen=True)
class Funnel:
    """The course's funnel: before step 1, then each step, then completion."""

    signed_up: int
    confirmed: int
    pending: int
    unsubscribed_before_step_1: int
    bounced_at_confirmation: int
    steps: list[FunnelStep]
    completed: int
    #: Subscriptions by status, every status present.
    statuses: dict[SubscriberStatus, int]

    @property
    def completion_rate(self) -> float:
        """Completed as a share of those who received step 1 (0 when nobody has)."""
        started = self.steps[0].reached if self.steps else 0
        return self.completed / started if started else 0.0


def _received(status: str, next_step: int, total_steps: int) -> int:
    """How many of the course's `total_steps` steps a subscription in this state has received."""
    if status == S.COMPLETED:
        return total_steps
    return max(0, min(next_step - 1, total_steps))


def funnel(session: Session, total_steps: int) -> Funnel:
    """The funnel of a course of `total_steps` steps, from two aggregate queries.

    One counts subscriptions by status and step, the other failed emails.
    """
    by_state = session.execute(
        select(Subscriber.status, Subscriber.next_step, func.count()).group_by(
            Subscriber.status, Subscriber.next_step
        )
    ).all()
    failed = {
        (kind, number): count
        for kind, number, count in session.execute(
            select(Delivery.kind, Delivery.number, func.count())
            .where(Delivery.status == DeliveryStatus.FAILED)
            .group_by(Delivery.kind, Delivery.number)
        )
    }
    received_at_least = [0] * (total_steps + 2)
    paused = [0] * (total_steps + 1)
    unsubscribed = [0] * (total_steps + 1)
    totals = dict.fromkeys(S, 0)
    for status, next_step, count in by_state:
        received = _received(status, next_step, total_steps)
        totals[S(status)] += count
        received_at_least[received] += count
        if status == S.PAUSED:
            paused[received] += count
        elif status == S.UNSUBSCRIBED:
            unsubscribed[received] += count
    # received_at_least[n] holds "received exactly n"; make it cumulative from the top.
    for n in range(total_steps - 1, -1, -1):
        received_at_least[n] += received_at_least[n + 1]
    bounced_at_confirmation = sum(
        count for (kind, _), count in failed.items() if kind == EmailKind.CONFIRMATION
    )
    steps = [
        FunnelStep(
            number=n,
            reached=received_at_least[n],
            paused_after=paused[n],
            unsubscribed_after=unsubscribed[n],
            bounced_at=failed.get((EmailKind.STEP, n), 0),
        )
        for n in range(1, total_steps + 1)
    ]
    signed_up = sum(totals.values())
    never_confirmed = totals[S.PENDING] + bounced_at_confirmation
    return Funnel(
        signed_up=signed_up,
        confirmed=signed_up - never_confirmed - _unconfirmed_unsubscribes(session),
        pending=totals[S.PENDING],
        unsubscribed_before_step_1=unsubscribed[0],
        bounced_at_confirmation=bounced_at_confirmation,
        steps=steps,
        completed=totals[S.COMPLETED],
        statuses=totals,
    )


def _unconfirmed_unsubscribes(session: Session) -> int:
    """Subscriptions that left before confirming (their consent was never confirmed)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Subscriber)
            .join(Consent, Consent.subscriber_id == Subscriber.id)
            .where(Subscriber.status == S.UNSUBSCRIBED, Subscriber.next_step == 1)
            .where(Consent.confirmed_at.is_(None))
        )
        or 0
    )


@dataclass(frozen=True)
class Page:
    """One page of subscriptions."""

    subscribers: list[Subscriber]
    page: int
    total: int

    @property
    def pages(self) -> int:
        """How many pages there are (at least one)."""
        return max(1, -(-self.total // PAGE_SIZE))


def find_subscribers(
    session: Session, *, query: str = "", status: SubscriberStatus | None = None, page: int = 1
) -> Page:
    """Subscriptions whose address contains `query` (all when empty), newest first, paged."""
    condition = []
    text = query.strip().lower()
    if text:
        # A whole address is found through the index; a fragment by a scan.
        condition.append(
            Subscriber.email == text
            if "@" in text and " " not in text
            else Subscriber.email.contains(text, autoescape=True)
        )
    if status is not None:
        condition.append(Subscriber.status == status)
    total = session.scalar(select(func.count()).select_from(Subscriber).where(*condition)) or 0
    if text and "@" in text and total == 0:
        # Not a whole address after all (like "@example.com"): look for it as a fragment.
        condition[0] = Subscriber.email.contains(text, autoescape=True)
        total = session.scalar(select(func.count()).select_from(Subscriber).where(*condition)) or 0
    page = max(1, page)
    rows = session.scalars(
        select(Subscriber)
        .where(*condition)
        .order_by(Subscriber.id.desc())
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    ).all()
    return Page(subscribers=list(rows), page=page, total=total)


def subscriber_with_history(session: Session, subscriber_id: int) -> Subscriber | None:
    """A subscription with its consent record and every ledger row loaded."""
    return session.scalar(
        select(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .options(
            selectinload(Subscriber.consent),
            selectinload(Subscriber.deliveries),
            selectinload(Subscriber.clicks),
        )
    )


def audit_entries(session: Session, subscriber_id: int) -> list[AuditEntry]:
    """What operators did to one subscription, oldest first."""
    return list(
        session.scalars(
            select(AuditEntry)
            .where(AuditEntry.subscriber_id == subscriber_id)
            .order_by(AuditEntry.at, AuditEntry.id)
        )
    )


@dataclass(frozen=True)
class ProblemGroup:
    """Deferred or failed emails that share a status, a failure class and an error."""

    status: DeliveryStatus
    #: A FailureClass value, or "unclassified" for rows written before classes were kept.
    failure_class: str
    error: str
    count: int
    last_at: datetime | None


#: Addresses inside error texts: replaced so refusals of different addresses group together.
_ADDRESS = re.compile(r"[^\s<>'\"(),;:]+@[^\s<>'\"(),;:]+")
#: How many distinct (status, class, error) rows the problems page reads at most.
PROBLEM_ROWS = 5000


def problem_groups(session: Session, *, limit: int = 100) -> list[ProblemGroup]:
    """Deferred and failed emails grouped by status, failure class and error, largest first.

    Addresses in an error's text are masked first, so the same refusal of many
    addresses is one group.
    """
    rows = session.execute(
        select(
            Delivery.status,
            Delivery.failure_class,
            Delivery.error,
            func.count(),
            func.max(Delivery.started_at),
        )
        .where(Delivery.status.in_((DeliveryStatus.DEFERRED, DeliveryStatus.FAILED)))
        .group_by(Delivery.status, Delivery.failure_class, Delivery.error)
        .order_by(func.count().desc())
        .limit(PROBLEM_ROWS)
    )
    groups: dict[tuple[str, str, str], tuple[int, datetime | None]] = {}
    for status, failure_class, error, count, last_at in rows:
        key = (
            str(status),
            failure_class or "unclassified",
            _ADDRESS.sub("<address>", error or "(no error recorded)"),
        )
        held, latest = groups.get(key, (0, None))
        groups[key] = (held + count, max((t for t in (latest, last_at) if t), default=None))
    ordered = sorted(groups.items(), key=lambda item: (-item[1][0], item[0]))
    return [
        ProblemGroup(
            status=DeliveryStatus(status),
            failure_class=failure_class,
            error=error,
            count=count,
            last_at=last_at,
        )
        for (status, failure_class, error), (count, last_at) in ordered[:limit]
    ]


def link_clicks(session: Session) -> dict[str, list[tuple[str, int]]]:
    """Clicks per email and link (CLICK_TRACKING on), most clicked link first."""
    found: dict[str, list[tuple[str, int]]] = {}
    for template, link, clicks in session.execute(
        select(LinkClicks.template, LinkClicks.link, LinkClicks.clicks).order_by(
            LinkClicks.template, LinkClicks.clicks.desc(), LinkClicks.link
        )
    ):
        found.setdefault(template, []).append((link, clicks))
    return found


def step_figures(session: Session) -> dict[str, dict[DeliveryStatus, int]]:
    """Emails in the ledger by template and status (confirmation, step-01, ...)."""
    figures: dict[str, dict[DeliveryStatus, int]] = {}
    for kind, number, status, count in session.execute(
        select(Delivery.kind, Delivery.number, Delivery.status, func.count()).group_by(
            Delivery.kind, Delivery.number, Delivery.status
        )
    ):
        name = template_name(EmailKind(kind), number)
        figures.setdefault(name, dict.fromkeys(DeliveryStatus, 0))[DeliveryStatus(status)] += count
    return figures


@dataclass(frozen=True)
class QueueState:
    """The job queue: how many jobs wait, and since when the oldest has."""

    depth: int
    oldest_enqueued_at: datetime | None


def queue_state(queue: Queue) -> QueueState:
    """Jobs waiting in `queue` and when the oldest was queued (RedisError if Redis is down)."""
    depth = queue.count
    oldest = None
    for job_id in queue.get_job_ids(0, 0):
        job = queue.fetch_job(job_id)
        if job is not None and job.enqueued_at is not None:
            oldest = job.enqueued_at
            if oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=UTC)
    return QueueState(depth=depth, oldest_enqueued_at=oldest)


@dataclass(frozen=True)
class Relay:
    """The SMTP relay as the senders see it: the breaker, and the send rate against its cap."""

    breaker: RelayState
    #: SEND_RATE in emails a second; None when unlimited.
    send_rate_limit: float | None
    #: The share of SEND_RATE in force now: below 1 while the relay has us slowed down.
    send_rate_factor: float


def relay_state(services: Services) -> Relay:
    """The relay breaker and the send rate in force (RedisError if Redis is down)."""
    rate = services.send_rate
    return Relay(
        breaker=services.breaker.state(),
        send_rate_limit=None if rate is None else rate.rate.count / rate.rate.period,
        send_rate_factor=1.0 if rate is None else rate.factor(),
    )


def sent_last_minute(session: Session, *, now: datetime) -> int:
    """Emails the relay accepted in the minute before `now` (the send rate actually reached)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.sent_at > now - timedelta(minutes=1))
        )
        or 0
    )


def subscribers_before(
    session: Session,
    *,
    query: str = "",
    status: SubscriberStatus | None = None,
    before_id: int | None = None,
    limit: int = PAGE_SIZE,
) -> list[Subscriber]:
    """Up to `limit` subscriptions whose address contains `query`, newest first, with ids
    below `before_id`: keyset pages, which stay fast and stable while rows are added."""
    condition = []
    text = query.strip().lower()
    if text:
        condition.append(Subscriber.email.contains(text, autoescape=True))
    if status is not None:
        condition.append(Subscriber.status == status)
    if before_id is not None:
        condition.append(Subscriber.id < before_id)
    return list(
        session.scalars(
            select(Subscriber).where(*condition).order_by(Subscriber.id.desc()).limit(limit)
        )
    )
