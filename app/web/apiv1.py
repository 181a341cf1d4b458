"""The admin JSON API at /api/v1: subscribers, their timelines, actions, stats and the funnel.

Every call needs `Authorization: Bearer <token>` (`flask admin token` or the console's
API tokens page); a read token may only GET. Changes go through `operators.act`, so
the audit log names the token and the operator who made it.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app import apitokens, console, drip, operators
from app.db import session_scope
from app.models import ApiScope, ApiToken, DeliveryStatus, Subscriber, SubscriberStatus
from app.web import services
from app.web.openapi import ApiError, responses, spec
from app.web.pages import send_soon

bp = Blueprint("api_v1", __name__, url_prefix="/api/v1")

#: Largest id a subscription can have (the column is a 32-bit integer).
MAX_ID = 2**31 - 1
#: Errors any call may answer: no or bad token, too weak a token, the database down.
COMMON_ERRORS = (401, 403, 503)
SECURITY = {"token": []}  # type: ignore[var-annotated]
TAGS = ["Subscribers (admin)"]


# --------------------------------------------------------------------------- models


class SubscriberOut(BaseModel):
    """A subscription as the API shows it."""

    id: int
    email: str
    first_name: str
    status: SubscriberStatus
    next_step: int = Field(description="The course step to send next.")
    steps_received: int
    next_send_at: datetime | None
    created_at: datetime
    time_zone: str | None


class SubscriberList(BaseModel):
    """One page of subscriptions, newest first."""

    items: list[SubscriberOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: none.")


class ConsentOut(BaseModel):
    """How and when the address asked for the course, and confirmed."""

    source: str
    wording: str
    ip: str | None
    user_agent: str | None
    requested_at: datetime
    confirmed_at: datetime | None


class DeliveryOut(BaseModel):
    """One row of the ledger: an email sent or tried."""

    email: str = Field(description="The template, like confirmation or step-03.")
    status: str
    attempts: int
    started_at: datetime
    sent_at: datetime | None
    message_id: str
    error: str | None


class SubscriberDetail(SubscriberOut):
    """A subscription with its timeline: the consent record and every ledger row."""

    consent: ConsentOut | None
    deliveries: list[DeliveryOut]


class ActionResult(BaseModel):
    """What an action did."""

    changed: bool = Field(description="False when the action did not apply (nothing changed).")
    subscriber: SubscriberOut


class ConsentIn(BaseModel):
    """Consent given elsewhere (an import): the subscription starts active, unconfirmed by email."""

    given: bool = Field(description="Must be true: the address agreed to receive the course.")
    source: str = Field("import", min_length=1, max_length=16)
    wording: str | None = Field(None, max_length=2000, description="Default: the course's.")
    at: datetime | None = Field(None, description="When it was given; default: now.")


class SubscriberIn(BaseModel):
    """A new subscription: pending (a confirmation email goes), or imported with consent."""

    email: str = Field(max_length=320, json_schema_extra={"format": "email"})
    first_name: str = Field("", max_length=100)
    time_zone: str | None = Field(None, max_length=64, description="An IANA name.")
    consent: ConsentIn | None = None


class ListQuery(BaseModel):
    """Search and paging."""

    q: str = Field("", max_length=320, description="Part of the address.")
    status: SubscriberStatus | None = None
    cursor: str | None = Field(None, max_length=100)
    limit: int = Field(console.PAGE_SIZE, ge=1, le=200)


class StatusCounts(BaseModel):
    """Subscriptions by status."""

    pending: int
    active: int
    paused: int
    completed: int
    unsubscribed: int
    bounced: int


class Stats(BaseModel):
    """The overview's figures."""

    subscribers: StatusCounts
    total: int
    due_now: int
    due_next_24h: int
    emails_sending: int
    emails_deferred: int
    emails_failed: int
    sent_last_minute: int


class FunnelStepOut(BaseModel):
    """One step of the funnel."""

    number: int
    reached: int
    paused_after: int
    unsubscribed_after: int
    bounced_at: int


class FunnelOut(BaseModel):
    """The course's funnel."""

    signed_up: int
    confirmed: int
    pending: int
    unsubscribed_before_step_1: int
    bounced_at_confirmation: int
    steps: list[FunnelStepOut]
    completed: int
    completion_rate: float


# --------------------------------------------------------------------------- the door


@bp.before_request
def require_token() -> None:
    """Refuse a call without a live token, or a change with a read token."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "Send an API token: Authorization: Bearer <token>.")
    svc = services()
    with session_scope(svc.sessions) as session:
        row = apitokens.authenticate(session, token.strip(), now=svc.clock())
        if row is not None:
            session.flush()  # write last_used_at before the row leaves the session
            session.expunge(row)
    if row is None:
        raise ApiError(401, "unauthorized", "This API token is unknown or was revoked.")
    needed = ApiScope.READ if request.method in ("GET", "HEAD") else ApiScope.WRITE
    if not apitokens.allows(row, needed):
        raise ApiError(403, "forbidden", "This API token may only read; this call changes data.")
    g.api_token = row


def _token() -> ApiToken:
    token: ApiToken = g.api_token
    return token


def _actor() -> apitokens.TokenActor:
    token = _token()
    return apitokens.TokenActor(label=token.label, operator_email=token.operator_email)


# --------------------------------------------------------------------------- helpers


def encode_cursor(last_id: int) -> str:
    """An opaque cursor for the page after the row `last_id`."""
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The row id a cursor points after; ApiError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    prefix, _, number = raw.partition(":")
    if prefix != "id" or not number.isdigit() or int(number) > MAX_ID:
        raise ApiError(
            400, "invalid_cursor", "This cursor is not valid; start from the first page."
        )
    return int(number)


def _out(subscriber: Subscriber) -> SubscriberOut:
    return SubscriberOut(
        id=subscriber.id,
        email=subscriber.email,
        first_name=subscriber.first_name,
        status=subscriber.status,
        next_step=subscriber.next_step,
        steps_received=drip.progress(subscriber, services().course.step_count),
        next_send_at=subscriber.next_send_at,
        created_at=subscriber.created_at,
        time_zone=subscriber.time_zone,
    )


def _detail(subscriber: Subscriber) -> SubscriberDetail:
    consent = subscriber.consent
    return SubscriberDetail(
        **_out(subscriber).model_dump(),
        consent=None
        if consent is None
        else ConsentOut(
            source=consent.source,
            wording=consent.wording,
            ip=consent.ip,
            user_agent=consent.user_agent,
            requested_at=consent.requested_at,
            confirmed_at=consent.confirmed_at,
        ),
        deliveries=[
            DeliveryOut(
                email=d.template,
                status=d.status,
                attempts=d.attempts,
                started_at=d.started_at,
                sent_at=d.sent_at,
                message_id=d.message_id,
                error=d.error,
            )
            for d in subscriber.deliveries
        ],
    )


def _json(model: BaseModel, status: int = 200) -> tuple[Response, int]:
    return jsonify(model.model_dump(mode="json")), status


def _context(name: str) -> Any:
    return getattr(request.context, name)  # type: ignore[attr-defined]


def _subscriber(session: Session, subscriber_id: int, *, lock: bool = False) -> Subscriber:
    found = (
        session.get(Subscriber, subscriber_id, with_for_update=lock)
        if subscriber_id <= MAX_ID
        else None
    )
    if found is None:
        raise ApiError(404, "not_found", f"There is no subscription {subscriber_id}.")
    return found


# --------------------------------------------------------------------------- subscribers


@bp.get("/subscribers")
@spec.validate(
    query=ListQuery,
    resp=responses(400, *COMMON_ERRORS, HTTP_200=SubscriberList),
    tags=TAGS,
    security=SECURITY,
)
def list_subscribers() -> tuple[Response, int]:
    """List and search subscriptions, newest first, a page at a time."""
    query: ListQuery = _context("query")
    before = decode_cursor(query.cursor) if query.cursor else None
    svc = services()
    with session_scope(svc.sessions) as session:
        rows = console.subscribers_before(
            session, query=query.q, status=query.status, before_id=before, limit=query.limit + 1
        )
        items = [_out(row) for row in rows[: query.limit]]
    more = len(rows) > query.limit
    return _json(
        SubscriberList(items=items, next_cursor=encode_cursor(items[-1].id) if more else None)
    )


@bp.post("/subscribers")
@spec.validate(
    json=SubscriberIn,
    resp=responses(
        400, 409, 415, *COMMON_ERRORS, HTTP_201=SubscriberDetail, HTTP_200=SubscriberDetail
    ),
    tags=TAGS,
    security=SECURITY,
)
def create_subscriber() -> tuple[Response, int]:
    """Add a subscription: pending, with the confirmation email sent as for any sign-up; or,
    with `consent.given`, imported as active (step 1 goes at once).

    201 when it was added; 200 with the live subscription when the address already has one.
    """
    body: SubscriberIn = _context("json")
    svc = services()
    if body.consent is not None and not body.consent.given:
        raise ApiError(400, "consent_required", "consent.given must be true to import an address.")
    try:
        email = drip.normalize_email(
            body.email,
            check_deliverability=svc.settings.check_deliverability,
            smtputf8=svc.settings.smtp_utf8,
        )
        if body.time_zone:
            drip.check_time_zone(body.time_zone)
    except (drip.InvalidEmail, drip.InvalidTimeZone) as error:
        code = "invalid_email" if isinstance(error, drip.InvalidEmail) else "invalid_time_zone"
        raise ApiError(400, code, str(error)) from None
    now = svc.clock()
    with session_scope(svc.sessions) as session:
        if body.consent is None:
            result = drip.subscribe(
                session,
                email,
                first_name=body.first_name,
                time_zone=body.time_zone or None,
                source="api",
                wording=svc.course.consent_wording,
                ip=None,
                user_agent=f"API token {_token().label}",
                policy=svc.policy,
                now=now,
            )
        else:
            consent = body.consent
            result = drip.subscribe_confirmed(
                session,
                email,
                first_name=body.first_name,
                time_zone=body.time_zone or None,
                source=consent.source,
                wording=consent.wording or svc.course.consent_wording,
                consented_at=min(consent.at or now, now),
                now=now,
            )
        detail = _detail(_subscriber(session, result.subscriber_id))
    if result.outcome != drip.SubscribeOutcome.UNCHANGED:
        send_soon(result.subscriber_id)
    return _json(detail, 201 if result.outcome == drip.SubscribeOutcome.CREATED else 200)


@bp.get("/subscribers/<int:subscriber_id>")
@spec.validate(
    resp=responses(404, *COMMON_ERRORS, HTTP_200=SubscriberDetail),
    tags=TAGS,
    security=SECURITY,
)
def read_subscriber(subscriber_id: int) -> tuple[Response, int]:
    """One subscription with its timeline: the consent record and every ledger row."""
    svc = services()
    with session_scope(svc.sessions) as session:
        found = (
            console.subscriber_with_history(session, subscriber_id)
            if subscriber_id <= MAX_ID
            else None
        )
        if found is None:
            raise ApiError(404, "not_found", f"There is no subscription {subscriber_id}.")
        return _json(_detail(found))


def _act(subscriber_id: int, action: str) -> tuple[Response, int]:
    svc = services()
    with session_scope(svc.sessions) as session:
        found = _subscriber(session, subscriber_id, lock=True)
        changed = operators.act(
            session,
            _actor(),
            found,
            action,
            policy=svc.policy,
            keys=svc.mailbox_keys,
            now=svc.clock(),
        )
        if action == "erase":
            return Response(status=204), 204
        return _json(ActionResult(changed=changed, subscriber=_out(found)))


ACTION_RESPONSES = responses(404, *COMMON_ERRORS, HTTP_200=ActionResult)


@bp.post("/subscribers/<int:subscriber_id>/pause")
@spec.validate(resp=ACTION_RESPONSES, tags=TAGS, security=SECURITY)
def pause(subscriber_id: int) -> tuple[Response, int]:
    """Pause an active course (audited)."""
    return _act(subscriber_id, "pause")


@bp.post("/subscribers/<int:subscriber_id>/resume")
@spec.validate(resp=ACTION_RESPONSES, tags=TAGS, security=SECURITY)
def resume(subscriber_id: int) -> tuple[Response, int]:
    """Resume a paused course (audited); the next step is not sent in a burst."""
    return _act(subscriber_id, "resume")


@bp.post("/subscribers/<int:subscriber_id>/unsubscribe")
@spec.validate(resp=ACTION_RESPONSES, tags=TAGS, security=SECURITY)
def unsubscribe(subscriber_id: int) -> tuple[Response, int]:
    """End the subscription and suppress the address (audited)."""
    return _act(subscriber_id, "unsubscribe")


@bp.delete("/subscribers/<int:subscriber_id>")
@spec.validate(resp=responses(404, *COMMON_ERRORS, HTTP_204=None), tags=TAGS, security=SECURITY)
def erase(subscriber_id: int) -> tuple[Response, int]:
    """Erase the subscription with its consent record and ledger (audited by id only)."""
    return _act(subscriber_id, "erase")


# --------------------------------------------------------------------------- figures


@bp.get("/stats")
@spec.validate(resp=responses(*COMMON_ERRORS, HTTP_200=Stats), tags=["Figures"], security=SECURITY)
def stats() -> tuple[Response, int]:
    """Subscriptions by status, emails due, and the ledger's open problems."""
    svc = services()
    now = svc.clock()
    with session_scope(svc.sessions) as session:
        statuses = console.status_counts(session)
        due = console.due(session, now=now)
        deliveries = console.delivery_counts(session)
        last_minute = console.sent_last_minute(session, now=now)
    return _json(
        Stats(
            subscribers=StatusCounts(**{str(status): n for status, n in statuses.items()}),
            total=sum(statuses.values()),
            due_now=due.overdue,
            due_next_24h=due.next_24h,
            emails_sending=deliveries[DeliveryStatus.SENDING],
            emails_deferred=deliveries[DeliveryStatus.DEFERRED],
            emails_failed=deliveries[DeliveryStatus.FAILED],
            sent_last_minute=last_minute,
        )
    )


@bp.get("/funnel")
@spec.validate(
    resp=responses(*COMMON_ERRORS, HTTP_200=FunnelOut), tags=["Figures"], security=SECURITY
)
def funnel() -> tuple[Response, int]:
    """For each step: reached, paused after, unsubscribed after, bounced at; completion."""
    svc = services()
    with session_scope(svc.sessions) as session:
        figures = console.funnel(session, svc.course.step_count)
    return _json(
        FunnelOut(
            signed_up=figures.signed_up,
            confirmed=figures.confirmed,
            pending=figures.pending,
            unsubscribed_before_step_1=figures.unsubscribed_before_step_1,
            bounced_at_confirmation=figures.bounced_at_confirmation,
            steps=[
                FunnelStepOut(
                    number=s.number,
                    reached=s.reached,
                    paused_after=s.paused_after,
                    unsubscribed_after=s.unsubscribed_after,
                    bounced_at=s.bounced_at,
                )
                for s in figures.steps
            ],
            completed=figures.completed,
            completion_rate=figures.completion_rate,
        )
    )
