"""Helpers for the console's tests: an operator, a signed-in client, a seeded course."""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from app import drip, operators
from app.db import session_scope
from app.failures import FailureClass
from app.models import (
    Consent,
    Delivery,
    DeliveryStatus,
    EmailKind,
    Subscriber,
    SubscriberStatus,
)
from app.services import Services
from tests.support import TOTAL_STEPS

S = SubscriberStatus
OPERATOR = "ops@onward.test"
PASSWORD = "correct horse battery staple"
#: The console's cookie is Secure (BASE_URL is https in the tests): talk to it over https.
HTTPS = "https://onward.test"

#: The course's size, from the course file.


def referer(path: str) -> dict[str, str]:
    """The Referer a browser sends from the console page at `path` (over https, CSRF wants it)."""
    return {"Referer": HTTPS + path}


def add_operator(services: Services, email: str = OPERATOR, password: str = PASSWORD) -> None:
    with session_scope(services.sessions) as session:
        operators.create_operator(session, email, password, now=services.clock())


def form_token(client: FlaskClient, path: str = "/admin/login") -> str:
    """The CSRF token in the form of the page at `path`."""
    page = client.get(path, base_url=HTTPS).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def log_in(client: FlaskClient, email: str = OPERATOR, password: str = PASSWORD) -> int:
    """Sign in through the form; return the answer's status code."""
    response = client.post(
        "/admin/login",
        data={"email": email, "password": password, "csrf_token": form_token(client)},
        base_url=HTTPS,
        headers=referer("/admin/login"),
    )
    return response.status_code


def signed_in(app: Flask, services: Services) -> FlaskClient:
    """A client with a live console session."""
    add_operator(services)
    client = app.test_client()
    assert log_in(client) == 302
    return client


def post_action(client: FlaskClient, subscriber_id: int, action: str) -> int:
    token = form_token(client, f"/admin/subscribers/{subscriber_id}")
    response = client.post(
        f"/admin/subscribers/{subscriber_id}/{action}",
        data={"csrf_token": token},
        base_url=HTTPS,
        headers=referer(f"/admin/subscribers/{subscriber_id}"),
    )
    return response.status_code


def seed_course(session: Session, count: int, *, now: datetime, seed: int = 13) -> None:
    """`count` subscriptions spread over every status and step, with consistent ledgers.

    Each one's ledger holds what its state implies: a sent confirmation once confirmed,
    a sent email for each step received, a failed one where it bounced, and a deferred
    one for some of those still going.
    """
    rng = random.Random(seed)
    for index in range(count):
        status = list(S)[index % len(S)]
        confirmed = status != S.PENDING and not (
            status in (S.UNSUBSCRIBED, S.BOUNCED) and rng.random() < 0.2
        )
        if status == S.COMPLETED:
            next_step = TOTAL_STEPS + 1
        elif not confirmed:
            next_step = 1
        else:
            next_step = rng.randint(1, TOTAL_STEPS)
        created = now - timedelta(days=rng.randint(0, 60), minutes=rng.randint(0, 1440))
        subscriber = Subscriber(
            email=f"person{index}@example.com",
            status=status,
            next_step=next_step,
            created_at=created,
            confirmation_requested_at=created,
            next_send_at=(
                now + timedelta(hours=rng.randint(-5, 60))
                if status in (S.ACTIVE, S.PENDING)
                else None
            ),
            consent=Consent(
                source="form",
                wording="seeded",
                requested_at=created,
                confirmed_at=created + timedelta(minutes=5) if confirmed else None,
            ),
        )
        session.add(subscriber)
        session.flush()
        ledger = _Ledger(session, subscriber)
        if status == S.BOUNCED and not confirmed:
            ledger.add(EmailKind.CONFIRMATION, 1, DeliveryStatus.FAILED, created)
            continue
        ledger.add(EmailKind.CONFIRMATION, 1, DeliveryStatus.SENT, created)
        received = min(next_step - 1, TOTAL_STEPS)
        for number in range(1, received + 1):
            at = min(now, created + timedelta(days=2 * number))
            ledger.add(EmailKind.STEP, number, DeliveryStatus.SENT, at)
        if status == S.BOUNCED:
            ledger.add(EmailKind.STEP, next_step, DeliveryStatus.FAILED, now - timedelta(hours=1))
        elif status == S.ACTIVE and rng.random() < 0.1:
            ledger.add(EmailKind.STEP, next_step, DeliveryStatus.DEFERRED, now - timedelta(hours=1))


#: The error and failure class a seeded ledger row carries for each outcome.
SEEDED_ERRORS = {
    DeliveryStatus.FAILED: ("recipient refused: 550 5.1.1 no", FailureClass.RECIPIENT_PERMANENT),
    DeliveryStatus.DEFERRED: (
        "recipient refused: 450 4.2.1 busy",
        FailureClass.RECIPIENT_TEMPORARY,
    ),
}


class _Ledger:
    """Adds one subscription's ledger rows."""

    def __init__(self, session: Session, subscriber: Subscriber) -> None:
        self.session = session
        self.subscriber = subscriber

    def add(self, kind: EmailKind, number: int, status: DeliveryStatus, at: datetime) -> None:
        error, failure_class = SEEDED_ERRORS.get(status, (None, None))
        self.session.add(
            Delivery(
                subscriber_id=self.subscriber.id,
                kind=kind,
                number=number,
                message_id=drip.message_id_for(self.subscriber.key, kind, number, "onward.test"),
                status=status,
                started_at=at,
                sent_at=at if status == DeliveryStatus.SENT else None,
                error=error,
                failure_class=failure_class,
            )
        )
