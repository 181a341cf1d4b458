"""Outbound webhooks (Standard Webhooks): endpoints, the event outbox, signed delivery.

Events are found by watching the session: a subscription's status moving, a step's
ledger row becoming sent. They are written to the outbox (`webhook_event`, one row per
endpoint) in the same transaction as the change, just before it commits, so an event
exists exactly when its change does. The worker then delivers each at least once,
with the same `webhook-id` on every try, retrying with backoff for about a day; an
endpoint whose event runs out of tries is disabled with a notice for the console.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, event, inspect, select, update
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from app.db import session_scope
from app.models import (
    Delivery,
    DeliveryStatus,
    EmailKind,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookEvent,
)

log = logging.getLogger(__name__)
S = SubscriberStatus

#: The events an endpoint may ask for.
EVENT_TYPES = (
    "subscribed",
    "confirmed",
    "step_sent",
    "paused",
    "resumed",
    "unsubscribed",
    "bounced",
    "complained",
    "completed",
)
#: The wait after each failed try: 9 retries over about 23 hours, then it gives up.
BACKOFF = (
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(hours=4),
    timedelta(hours=6),
    timedelta(hours=9),
)
MAX_ATTEMPTS = len(BACKOFF) + 1
#: How long a worker holds an event it is delivering before another may try it.
LEASE = timedelta(minutes=2)
#: How long one delivery may take.
TIMEOUT_SECONDS = 10
#: Events delivered per run of the job.
BATCH = 100

#: Status moves and the event each one is.
_MOVES: dict[tuple[str, str], str] = {
    (S.PENDING, S.ACTIVE): "confirmed",
    (S.ACTIVE, S.PAUSED): "paused",
    (S.PAUSED, S.ACTIVE): "resumed",
    (S.ACTIVE, S.COMPLETED): "completed",
    (S.PAUSED, S.COMPLETED): "completed",
}
_PENDING = "webhook_events"
_COMPLAINED = "webhook_complained"
_ERASED = "webhook_erased"


class EndpointError(ValueError):
    """An endpoint cannot be set up as asked; the message says why."""


# --------------------------------------------------------------------------- signing


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` and base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# --------------------------------------------------------------------------- endpoints


def create_endpoint(
    session: Session, url: str, events: list[str], *, now: datetime
) -> WebhookEndpoint:
    """Add an endpoint for `events`; EndpointError if the URL or an event is not valid."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2000:
        raise EndpointError("the URL must be a full http:// or https:// address")
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown or not events:
        raise EndpointError("choose at least one event from: " + ", ".join(EVENT_TYPES))
    endpoint = WebhookEndpoint(
        url=url,
        secret=new_secret(),
        events=",".join(name for name in EVENT_TYPES if name in events),
        enabled=True,
        created_at=now,
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def enable(session: Session, endpoint_id: int) -> bool:
    """Turn a disabled endpoint back on; its waiting events are tried again at once."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.enabled:
        return False
    endpoint.enabled = True
    endpoint.disabled_reason = None
    return True


def endpoints(session: Session) -> list[WebhookEndpoint]:
    """Every endpoint, oldest first."""
    return list(session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id)))


def recent_attempts(
    session: Session, endpoint_id: int, limit: int = 50
) -> list[tuple[WebhookAttempt, WebhookEvent]]:
    """The endpoint's latest delivery attempts with their events, newest first."""
    rows = session.execute(
        select(WebhookAttempt, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookAttempt.event_id)
        .where(WebhookEvent.endpoint_id == endpoint_id)
        .order_by(WebhookAttempt.id.desc())
        .limit(limit)
    )
    return [(attempt, ev) for attempt, ev in rows]


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class Happened:
    """One event seen in a transaction, before it goes to the outbox."""

    type: str
    subscriber_id: int
    email: str
    status: str
    step: int | None


def note(
    session: Session,
    kind: str,
    *,
    subscriber_id: int,
    email: str,
    status: str,
    step: int | None = None,
) -> None:
    """Tell the endpoints that `kind` happened to a subscription written in bulk (an
    import, the ledger's sent rows), which the session's own change tracking does not
    see; sent at commit."""
    _seen(session).append(Happened(kind, subscriber_id, email, status, step))


def _seen(session: Session) -> list[Happened]:
    found: list[Happened] = session.info.setdefault(_PENDING, [])
    return found


def _after_flush(session: Session, _context: Any) -> None:
    """Note what the flush changed that an endpoint may want to hear about."""
    seen = _seen(session)
    for obj in session.deleted:
        if isinstance(obj, Subscriber):
            session.info.setdefault(_ERASED, set()).add(obj.id)
    for obj in list(session.new) + list(session.dirty):
        if isinstance(obj, Subscriber):
            _subscriber_moves(obj, obj in session.new, seen)
        elif isinstance(obj, Delivery):
            _step_sent(obj, seen)
        elif isinstance(obj, Suppression) and obj.reason == SuppressionReason.COMPLAINED:
            session.info[_COMPLAINED] = True


def _subscriber_moves(subscriber: Subscriber, new: bool, seen: list[Happened]) -> None:
    def note(kind: str) -> None:
        seen.append(Happened(kind, subscriber.id, subscriber.email, str(subscriber.status), None))

    if new:
        note("subscribed")
        return
    history = _history(subscriber, "status")
    if history is None:
        return
    before, after = history
    if after in (S.UNSUBSCRIBED, S.BOUNCED):
        note(str(after))
    elif (before, after) in _MOVES:
        note(_MOVES[(before, after)])


def _step_sent(delivery: Delivery, seen: list[Happened]) -> None:
    history = _history(delivery, "status")
    if delivery.kind != EmailKind.STEP or history is None or history[1] != DeliveryStatus.SENT:
        return
    subscriber = delivery.subscriber
    seen.append(
        Happened(
            "step_sent", subscriber.id, subscriber.email, str(subscriber.status), delivery.number
        )
    )


def _history(obj: Any, name: str) -> tuple[str, str] | None:
    """(before, after) of an attribute changed in this flush, or None."""
    history = inspect(obj).attrs[name].history
    if not history.added or not history.deleted:
        return None
    return str(history.deleted[0]), str(history.added[0])


def _write_outbox(session: Session, now: datetime) -> None:
    """Before commit: turn what was seen into outbox rows for the endpoints that want them."""
    session.flush()
    seen = session.info.pop(_PENDING, [])
    complained = session.info.pop(_COMPLAINED, False)
    erased = session.info.pop(_ERASED, set())
    if erased:
        # An erased address must not live on in the outbox, sent or waiting.
        session.execute(delete(WebhookEvent).where(WebhookEvent.subscriber_id.in_(erased)))
        seen = [h for h in seen if h.subscriber_id not in erased]
    if not seen:
        return
    # A complaint ends the subscription the way unsubscribing does: say which it was.
    seen = [
        Happened("complained", h.subscriber_id, h.email, h.status, h.step)
        if complained and h.type == "unsubscribed"
        else h
        for h in seen
    ]
    # A disabled endpoint still collects its events: enabled again, it gets them all.
    with session.no_autoflush:
        live = session.scalars(select(WebhookEndpoint)).all()
    if not live:
        return
    for happened in seen:
        body = json.dumps(
            {
                "type": happened.type,
                "timestamp": now.isoformat(),
                "data": {
                    "subscriber_id": happened.subscriber_id,
                    "email": happened.email,
                    "status": happened.status,
                    **({"step": happened.step} if happened.step is not None else {}),
                },
            },
            separators=(",", ":"),
        )
        for endpoint in live:
            if happened.type in endpoint.event_types:
                session.add(
                    WebhookEvent(
                        message_id="msg_" + uuid.uuid4().hex,
                        endpoint_id=endpoint.id,
                        event_type=happened.type,
                        subscriber_id=happened.subscriber_id,
                        payload=body,
                        status="pending",
                        attempts=0,
                        created_at=now,
                        next_attempt_at=now,
                    )
                )
    session.flush()
    session.info.pop(_PENDING, None)


def _forget(session: Session, transaction: SessionTransaction) -> None:
    """When the whole transaction ends (a rollback, or a commit already written): start afresh."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)
        session.info.pop(_COMPLAINED, None)
        session.info.pop(_ERASED, None)


def install(sessions: sessionmaker[Session], clock: Callable[[], datetime]) -> None:
    """Record events for every session `sessions` makes."""
    event.listen(sessions, "after_flush", _after_flush)
    event.listen(sessions, "before_commit", lambda session: _write_outbox(session, clock()))
    event.listen(sessions, "after_transaction_end", _forget)


# --------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class Outgoing:
    """One event claimed for a try."""

    id: int
    message_id: str
    payload: str
    url: str
    secret: str


Post = Callable[[str, bytes, dict[str, str]], int]


def http_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST `body`; return the answer's status code (OSError if there is none)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except urllib.error.URLError as error:
        # Say what really went wrong (refused, timed out, no such host) in the attempt log.
        if isinstance(error.reason, OSError):
            raise error.reason from None
        raise


def claim_due(session: Session, *, now: datetime, limit: int = BATCH) -> list[Outgoing]:
    """Claim up to `limit` events due now on enabled endpoints, each for LEASE.

    Each claim is a conditional UPDATE on the time it was read with, so two workers
    never both take one event.
    """
    rows = session.execute(
        select(WebhookEvent, WebhookEndpoint)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookEvent.endpoint_id)
        .where(
            WebhookEvent.status == "pending",
            WebhookEvent.next_attempt_at <= now,
            WebhookEndpoint.enabled,
        )
        .order_by(WebhookEvent.id)
        .limit(limit)
    ).all()
    claimed = []
    for ev, endpoint in rows:
        taken = session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == ev.id, WebhookEvent.next_attempt_at == ev.next_attempt_at)
            .values(next_attempt_at=now + LEASE)
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount:  # type: ignore[attr-defined]
            claimed.append(
                Outgoing(ev.id, ev.message_id, ev.payload, endpoint.url, endpoint.secret)
            )
    return claimed


def record_attempt(
    session: Session, event_id: int, *, status_code: int | None, error: str | None, now: datetime
) -> str:
    """Log one try and move the event on; return its status (delivered, pending, failed)."""
    ev = session.get(WebhookEvent, event_id)
    if ev is None:
        return "gone"
    session.add(WebhookAttempt(event_id=ev.id, at=now, status_code=status_code, error=error))
    ev.attempts += 1
    if status_code is not None and 200 <= status_code < 300:
        ev.status = "delivered"
        ev.delivered_at = now
        ev.next_attempt_at = None
    elif ev.attempts >= MAX_ATTEMPTS:
        ev.status = "failed"
        ev.next_attempt_at = None
        endpoint = ev.endpoint
        if endpoint.enabled:
            endpoint.enabled = False
            endpoint.disabled_reason = (
                f"Disabled on {now:%Y-%m-%d %H:%M} UTC: event {ev.message_id} failed "
                f"{ev.attempts} times over a day (last: {error or f'HTTP {status_code}'}). "
                "Fix the receiver, then enable it again."
            )
            log.warning("webhook endpoint %s disabled after repeated failures", endpoint.id)
    else:
        ev.next_attempt_at = now + BACKOFF[ev.attempts - 1]
    return ev.status


def deliver_due(
    sessions: sessionmaker[Session], *, clock: Callable[[], datetime], post: Post = http_post
) -> dict[str, int]:
    """Deliver the events due now, once each; return counts by outcome."""
    with session_scope(sessions) as session:
        claimed = claim_due(session, now=clock())
    counts: dict[str, int] = {}
    for out in claimed:
        now = clock()
        timestamp = int(now.timestamp())
        body = out.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Onward-Webhooks/1",
            "webhook-id": out.message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(out.secret, out.message_id, timestamp, body),
        }
        status_code: int | None = None
        error: str | None = None
        try:
            status_code = post(out.url, body, headers)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except (OSError, ValueError) as problem:
            error = f"{problem.__class__.__name__}: {problem}"[:500]
        with session_scope(sessions) as session:
            outcome = record_attempt(
                session, out.id, status_code=status_code, error=error, now=clock()
            )
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def due_count(session: Session, *, now: datetime) -> int:
    """How many events wait for a try now (the tick queues a delivery job when any do)."""
    return len(
        session.scalars(
            select(WebhookEvent.id)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookEvent.endpoint_id)
            .where(
                WebhookEvent.status == "pending",
                WebhookEvent.next_attempt_at <= now,
                WebhookEndpoint.enabled,
            )
            .limit(BATCH)
        ).all()
    )
