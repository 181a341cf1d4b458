"""Read in your browser: the signed page of each step a subscriber has received."""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

from flask.testing import FlaskClient
from sqlalchemy import select

from app.db import session_scope
from app.models import Delivery, Subscriber
from app.services import Services
from tests.support import FakeClock, Received, SmtpSink, active_subscriber, run_worker
from worker.schedule import tick

ADA = "ada@example.com"
BOB = "bob@example.org"


def path_of(url: str) -> str:
    return urlsplit(url).path


def deliver(services: Services) -> None:
    tick(services)
    run_worker(services)


def snapshot(services: Services) -> list[tuple[object, ...]]:
    """Every subscription and ledger row, to show that nothing changed."""
    with session_scope(services.sessions) as session:
        people = [
            (s.id, s.status, s.next_step, s.next_send_at, s.claimed_until)
            for s in session.scalars(select(Subscriber).order_by(Subscriber.id))
        ]
        ledger = [
            (d.id, d.template, d.status, d.attempts)
            for d in session.scalars(select(Delivery).order_by(Delivery.id))
        ]
    return [*people, *ledger]


def first_two_steps(services: Services, smtp: SmtpSink, clock: FakeClock) -> list[Received]:
    """Ada, subscribed and confirmed, receives steps 1 and 2."""
    active_subscriber(services, ADA, clock.now)
    deliver(services)
    clock.advance(services.policy.step_interval)
    deliver(services)
    received = smtp.to(ADA)
    assert len(received) == 2
    return received


def test_each_received_step_opens_in_the_browser_from_its_email(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one, step_two = first_two_steps(services, smtp, clock)
    for number, email in ((1, step_one), (2, step_two)):
        link = email.link("read")
        assert link.endswith(f"/{number}")
        response = client.get(path_of(link))
        assert response.status_code == 200
        page = html.unescape(response.get_data(as_text=True))
        assert f"<title>{email.subject}</title>" in page
        assert "Hi there," in page  # the email as Ada received it
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    # Each page links to the other received steps, and to no later one.
    two = path_of(step_two.link("read"))
    page = client.get(two).get_data(as_text=True)
    base = two.rpartition("/")[0]
    assert f'href="{base}/1"' in page
    assert f'href="{base}/3"' not in page


def test_a_step_not_yet_received_is_refused(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one, _ = first_two_steps(services, smtp, clock)
    base = path_of(step_one.link("read")).rpartition("/")[0]
    for number in (3, services.course.step_count, services.course.step_count + 1, 0):
        response = client.get(f"{base}/{number}")
        assert response.status_code == 404, number
        assert "hasn't reached you yet" in html.unescape(response.get_data(as_text=True))
        assert response.headers["Cache-Control"] == "no-store"


def test_forged_altered_and_other_purpose_tokens_are_refused(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one, _ = first_two_steps(services, smtp, clock)
    token = path_of(step_one.link("read")).split("/")[2]
    manage_token = path_of(step_one.link("manage")).split("/")[2]
    for bad in (token[:-2] + "xx", manage_token, "nonsense", token + "a"):
        response = client.get(f"/read/{bad}/1")
        assert response.status_code == 400, bad
        assert response.headers["Cache-Control"] == "no-store"


def test_a_get_changes_nothing_and_another_subscriber_sees_only_their_own(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one, _ = first_two_steps(services, smtp, clock)
    active_subscriber(services, BOB, clock.now)
    deliver(services)
    [bob_one] = smtp.to(BOB)
    before = snapshot(services)
    for _ in range(2):
        assert client.get(path_of(step_one.link("read"))).status_code == 200
        assert client.head(path_of(step_one.link("read"))).status_code == 200
    assert snapshot(services) == before
    # Bob's token reads Bob's steps: he has only the first.
    bob_base = path_of(bob_one.link("read")).rpartition("/")[0]
    assert client.get(f"{bob_base}/1").status_code == 200
    assert client.get(f"{bob_base}/2").status_code == 404


def test_after_unsubscribing_received_steps_stay_readable_and_after_deletion_none(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one, _ = first_two_steps(services, smtp, clock)
    read = path_of(step_one.link("read"))
    assert client.post(path_of(step_one.link("unsubscribe"))).status_code == 200
    assert client.get(read).status_code == 200
    manage = path_of(step_one.link("manage"))
    assert client.post(f"{manage}/delete", data={"confirm": "yes"}).status_code == 200
    assert client.get(read).status_code == 404


def test_the_manage_page_links_to_each_received_step(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one, step_two = first_two_steps(services, smtp, clock)
    page = html.unescape(client.get(path_of(step_one.link("manage"))).get_data(as_text=True))
    reads = re.findall(r'href="(https?://[^"]+/read/[^"]+)"', page)
    assert [read.rpartition("/")[2] for read in reads] == ["1", "2"]
    for read, email in zip(reads, (step_one, step_two), strict=True):
        response = client.get(path_of(read))
        assert response.status_code == 200
        assert f"<title>{email.subject}</title>" in html.unescape(response.get_data(as_text=True))
