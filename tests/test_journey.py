"""The whole course as subscribers live it: HTTP pages, real emails, a real worker."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask
from flask.testing import FlaskClient

from app.services import Services
from tests.support import FakeClock, SmtpSink, csrf_token, run_worker
from worker.schedule import tick

ADA = "ada@example.com"
BOB = "bob@example.org"


def path_of(url: str) -> str:
    return urlsplit(url).path


def deliver(services: Services) -> None:
    """What the scheduler and the worker do on their own: queue due emails, send them."""
    tick(services)
    run_worker(services)


def test_a_subscriber_takes_the_whole_course_with_a_pause(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    interval = services.settings.step_interval

    page = client.post(
        "/subscribe",
        data={"email": ADA, "first_name": "Ada", "csrf_token": csrf_token(client)},
    )
    assert page.status_code == 200
    assert "Check your inbox" in page.get_data(as_text=True)

    run_worker(services)
    [confirmation] = smtp.to(ADA)
    assert confirmation.subject == "Confirm your free 10-step course"
    assert "Hi Ada," in confirmation.text

    # Nothing but the confirmation until the address is confirmed.
    clock.advance(interval * 3)
    deliver(services)
    assert len(smtp.to(ADA)) == 1

    confirm_path = path_of(confirmation.link("confirm"))
    landing = client.get(confirm_path)
    assert landing.status_code == 200
    assert "Yes, send me the course" in landing.get_data(as_text=True)
    clock.advance(interval)
    deliver(services)
    assert len(smtp.to(ADA)) == 1, "opening the link (GET) must not confirm"

    confirmed = client.post(confirm_path)
    assert confirmed.status_code == 200
    assert "You're in" in confirmed.get_data(as_text=True)
    run_worker(services)
    assert smtp.to(ADA)[-1].subject.startswith("Step 1 of 10:")

    # Steps 2-4 arrive one interval apart, and not before.
    for step in (2, 3, 4):
        clock.advance(interval / 2)
        deliver(services)
        assert len(smtp.to(ADA)) == step, "a step arrived before its interval"
        clock.advance(interval / 2)
        deliver(services)
        assert smtp.to(ADA)[-1].subject.startswith(f"Step {step} of 10:")

    # Pause from the link in step 4: nothing arrives, however long the pause.
    pause_path = path_of(smtp.to(ADA)[-1].link("pause"))
    assert "Pause the course" in client.get(pause_path).get_data(as_text=True)
    paused = client.post(pause_path, data={"action": "pause"})
    assert "Your course is paused" in paused.get_data(as_text=True)
    for _ in range(5):
        clock.advance(interval)
        deliver(services)
    assert len(smtp.to(ADA)) == 5

    # Resume: step 5 comes one interval later, never the missed steps in a burst.
    resumed = client.post(pause_path, data={"action": "resume"})
    assert "running again" in resumed.get_data(as_text=True)
    deliver(services)
    clock.advance(interval / 2)
    deliver(services)
    assert len(smtp.to(ADA)) == 5
    clock.advance(interval / 2)
    deliver(services)
    assert len(smtp.to(ADA)) == 6
    assert smtp.to(ADA)[-1].subject == services.course.step(5).subject

    steps = services.course.step_count
    for _step in range(6, steps + 1):
        clock.advance(interval)
        deliver(services)

    subjects = [received.subject for received in smtp.to(ADA)[1:]]
    assert subjects == [step.subject for step in services.course.steps]
    message_ids = {received.message["Message-ID"] for received in smtp.to(ADA)}
    assert len(message_ids) == steps + 1

    # Completed: nothing more is sent, and the manage page says so.
    clock.advance(interval * 5)
    deliver(services)
    assert len(smtp.to(ADA)) == 11
    manage = client.get(path_of(smtp.to(ADA)[-1].link("manage")))
    assert "Completed" in manage.get_data(as_text=True)
    assert "10 of 10 steps received" in manage.get_data(as_text=True)


def test_one_click_unsubscribe_from_the_header_stops_even_a_queued_step(
    app: Flask,
    client: FlaskClient,
    services: Services,
    smtp: SmtpSink,
    clock: FakeClock,
) -> None:
    mailbox_provider = app.test_client()  # no cookies, no CSRF token
    interval = services.settings.step_interval

    answer = client.post("/api/subscribe", json={"email": BOB})
    assert answer.status_code == 202
    run_worker(services)
    [confirmation] = smtp.to(BOB)
    assert client.post(path_of(confirmation.link("confirm"))).status_code == 200
    run_worker(services)
    step_one = smtp.to(BOB)[-1]
    assert step_one.subject.startswith("Step 1 of 10:")

    # Read the header as a mailbox provider does: from the raw message, undecoded.
    [header] = [
        line for line in step_one.raw.split(b"\r\n") if line.startswith(b"List-Unsubscribe:")
    ]
    assert step_one.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = (
        header.decode()
        .removeprefix("List-Unsubscribe:")
        .strip()
        .removeprefix("<")
        .removesuffix(">")
    )
    assert url.startswith("https://onward.test/unsubscribe/")

    # Step 2 falls due and is queued, then the provider's one-click POST arrives.
    clock.advance(interval)
    assert tick(services) == 1
    response = mailbox_provider.post(
        path_of(url),
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert "You're unsubscribed" in response.get_data(as_text=True)

    run_worker(services)
    for _ in range(10):
        clock.advance(interval)
        deliver(services)
    assert len(smtp.to(BOB)) == 2
