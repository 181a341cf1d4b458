"""One identity per address: every link in any email ever sent acts on the address's
current subscription; signing up again continues the course; erasure and export cover
every record of the address."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app import store
from app.config import DEFAULT_EMAILS_DIR
from app.course import load_course
from app.db import session_scope
from app.models import Consent, Delivery, SignupRequest, Subscriber, Suppression
from app.services import Services
from tests.support import FakeClock, Received, SmtpSink, run_worker
from tests.test_web import (
    ADA,
    confirmed,
    deliver,
    form_sign_up,
    path_of,
    statuses,
    text_of,
)

COURSE = load_course(DEFAULT_EMAILS_DIR)


def back_again(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> tuple[Received, Received]:
    """Ada takes step 1, unsubscribes, signs up again and confirms: her first subscription's
    step 1, and the step that arrives after she confirmed again."""
    step_one = confirmed(client, services, smtp, ADA)
    assert client.post(path_of(step_one.link("unsubscribe"))).status_code == 200
    assert statuses(services, ADA) == ["unsubscribed"]
    clock.advance(timedelta(days=3))
    assert form_sign_up(client, ADA, "Ada").status_code == 200
    run_worker(services)
    confirmation = smtp.to(ADA)[-1]
    assert confirmation.subject == COURSE.confirmation_subject
    assert client.post(path_of(confirmation.link("confirm"))).status_code == 200
    run_worker(services)
    assert statuses(services, ADA) == ["unsubscribed", "active"]
    return step_one, smtp.to(ADA)[-1]


def test_signing_up_again_continues_where_the_address_left_off(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one, resumed = back_again(client, services, smtp, clock)
    assert resumed.subject == COURSE.steps[1].subject
    # A new subscription, so new Message-IDs: providers drop a Message-ID seen before.
    assert resumed.message["Message-ID"] != step_one.message["Message-ID"]
    manage = client.get(path_of(resumed.link("manage")))
    assert "Start again from step 1" in text_of(manage)
    assert client.post(path_of(resumed.link("manage")) + "/start-again").status_code == 303
    run_worker(services)
    assert smtp.to(ADA)[-1].subject == COURSE.steps[0].subject


def test_the_one_click_header_of_an_email_from_the_first_subscription_stops_the_current_one(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one, _ = back_again(client, services, smtp, clock)
    sent = len(smtp.to(ADA))
    header = step_one.message["List-Unsubscribe"].strip("<>")
    answer = client.post(
        path_of(header),
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.status_code == 200
    assert statuses(services, ADA) == ["unsubscribed", "unsubscribed"]
    for _ in range(5):
        clock.advance(timedelta(days=3))
        deliver(services)
    assert len(smtp.to(ADA)) == sent


def test_an_old_pause_link_pauses_the_course_that_runs_now(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one, _ = back_again(client, services, smtp, clock)
    sent = len(smtp.to(ADA))
    old_pause = path_of(step_one.link("pause"))
    page = text_of(client.get(old_pause))
    assert "Pause the course" in page
    assert "We're not sending you anything" not in page
    paused = client.post(old_pause, data={"action": "pause"})
    assert "Your course is paused" in text_of(paused)
    assert statuses(services, ADA) == ["unsubscribed", "paused"]
    for _ in range(5):
        clock.advance(timedelta(days=3))
        deliver(services)
    assert len(smtp.to(ADA)) == sent


def test_resubscribe_from_the_unsubscribed_page_confirms_again_then_continues(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one = confirmed(client, services, smtp, ADA)
    clock.advance(timedelta(days=2))
    deliver(services)
    assert smtp.to(ADA)[-1].subject == COURSE.steps[1].subject
    unsubscribe = path_of(step_one.link("unsubscribe"))
    page = text_of(client.post(unsubscribe))
    assert "You're unsubscribed" in page and "Resubscribe" in page
    assert "Check your inbox" in text_of(
        client.post(unsubscribe.replace("/unsubscribe/", "/resubscribe/"))
    )
    run_worker(services)
    # Double opt-in again: nothing but a confirmation until it is confirmed.
    confirmation = smtp.to(ADA)[-1]
    assert confirmation.subject == COURSE.confirmation_subject
    clock.advance(timedelta(days=3))
    deliver(services)
    assert smtp.to(ADA)[-1] is confirmation
    assert client.post(path_of(confirmation.link("confirm"))).status_code == 200
    run_worker(services)
    assert smtp.to(ADA)[-1].subject == COURSE.steps[2].subject
    with session_scope(services.sessions) as session:
        [_, consent] = session.scalars(select(Consent).order_by(Consent.id)).all()
        assert consent.source == "resubscribe"


def count_of(services: Services, model: type) -> int:
    with session_scope(services.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_export_and_erasure_cover_every_subscription_and_sign_up_of_the_address(
    app: Flask, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    first = app.test_client()
    first.environ_base.update(REMOTE_ADDR="192.0.2.1", HTTP_USER_AGENT="Old-Laptop/1.0")
    back_again(first, services, smtp, clock)
    manage = path_of(smtp.to(ADA)[-1].link("manage"))
    data = first.get(f"{manage}/data.json").get_json()
    assert data["status"] == "active"
    [earlier] = data["earlier_subscriptions"]
    assert earlier["status"] == "unsubscribed"
    assert earlier["consent"]["ip"] == "192.0.2.1"
    assert earlier["consent"]["confirmed_user_agent"] == "Old-Laptop/1.0"
    assert [e["email"] for e in earlier["emails"]] == ["confirmation", "step-01"]
    assert all(e["message_id"] for e in earlier["emails"])
    assert [r["source"] for r in data["signup_requests"]] == ["api", "form"]
    assert data["signup_requests"][0]["ip"] == "192.0.2.1"

    # Another address stays as it is.
    confirmed(app.test_client(), services, smtp, "bob@example.org")
    assert first.post(f"{manage}/delete", data={"confirm": "yes"}).status_code == 200
    with session_scope(services.sessions) as session:
        assert store.subscriptions_of(session, ADA) == []
        assert store.signup_requests_of(session, ADA) == []
        assert session.scalar(select(func.count()).select_from(Suppression)) == 1
    assert count_of(services, Subscriber) == 1
    assert count_of(services, Consent) == 1
    assert count_of(services, SignupRequest) == 1
    assert count_of(services, Delivery) == 2
    # Every old link now finds nothing, and the address is still not mailed.
    assert first.get(manage).status_code == 404
