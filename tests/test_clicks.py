"""Optional click tracking: off by default; per email and link; per person only when asked.

Emails are sent by the real sending path to a real SMTP server, and the tracked links in
them are followed through the app.
"""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app import drip
from app.clicks import track_links
from app.config import ClickTracking, ConfigError, Settings
from app.db import session_scope
from app.emails import RenderedEmail
from app.models import Click, LinkClicks, Subscriber
from app.sending import send_batch
from app.services import Services
from app.tokens import Purpose, TrackedLink
from tests.admin_support import HTTPS, signed_in
from tests.support import FakeClock, Received, SmtpSink, active_subscriber, claim

TRACKED = re.compile(r"https://onward\.test/c/[A-Za-z0-9_.\-]+")
READ_LINK = "Read this step in your browser"


def send_step_1(services: Services, smtp: SmtpSink, clock: FakeClock, email: str) -> Received:
    subscriber_id = active_subscriber(services, email, clock.now)
    claim(services, [subscriber_id], clock.now)
    assert send_batch(services, [subscriber_id]).as_dict() == {"sent": 1}
    return smtp.messages[-1]


def link_counts(services: Services) -> dict[tuple[str, str], int]:
    with session_scope(services.sessions) as session:
        return {(r.template, r.link): r.clicks for r in session.scalars(select(LinkClicks))}


def _key_of(services: Services, subscriber_id: int) -> str:
    with session_scope(services.sessions) as session:
        return session.get_one(Subscriber, subscriber_id).key


def path_of(url: str) -> str:
    return url.removeprefix("https://onward.test")


def follow(client: FlaskClient, url: str) -> str:
    """GET a tracked link; return where it redirects."""
    response = client.get(path_of(url), base_url=HTTPS)
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    return response.headers["Location"]


def test_off_by_default_links_go_straight_where_they_lead(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    assert services.settings.click_tracking == ClickTracking.OFF
    received = send_step_1(services, smtp, clock, "plain@example.com")
    assert "/c/" not in received.html and "/c/" not in received.text
    assert "/read/" in received.link("read")


def test_per_link_counts_each_link_for_everyone_together_and_leads_on(
    app: Flask, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    services.settings = services.settings.with_changes(click_tracking=ClickTracking.PER_LINK)
    first = send_step_1(services, smtp, clock, "ana@example.com")
    second = send_step_1(services, smtp, clock, "ben@example.com")
    tracked = TRACKED.findall(first.html)
    assert len(set(tracked)) == 1  # the read-again link; the footer's actions are never tracked
    # The text part leads through the same tracked URL as the HTML.
    assert TRACKED.findall(first.text) == [tracked[0]]
    for action in ("unsubscribe", "pause", "manage"):
        assert f"/{action}/" in first.link(action)
    assert "/c/" not in first.message["List-Unsubscribe"]
    client = app.test_client()
    target = follow(client, tracked[0])
    assert re.fullmatch(r"https://onward\.test/read/[^/]+/1", target)
    assert client.get(path_of(target), base_url=HTTPS).status_code == 200
    follow(client, tracked[0])
    follow(client, TRACKED.findall(second.html)[0])
    # Two people's personal links count as one link: named by its text, not its URL.
    assert link_counts(services) == {("step-01", READ_LINK): 3}
    with session_scope(services.sessions) as session:
        assert session.scalars(select(Click)).all() == []


def test_per_person_keeps_who_clicked_until_they_are_erased(
    app: Flask, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    services.settings = services.settings.with_changes(click_tracking=ClickTracking.PER_PERSON)
    received = send_step_1(services, smtp, clock, "cleo@example.com")
    follow(app.test_client(), TRACKED.findall(received.html)[0])
    with session_scope(services.sessions) as session:
        subscriber = session.scalars(
            select(Subscriber).where(Subscriber.email == "cleo@example.com")
        ).one()
        subscriber_id = subscriber.id
        assert [(c.template, c.link) for c in subscriber.clicks] == [("step-01", READ_LINK)]
    operator = signed_in(app, services)
    page = operator.get(f"/admin/subscribers/{subscriber_id}", base_url=HTTPS)
    assert f"step-01, &ldquo;{READ_LINK}&rdquo;" in page.get_data(as_text=True)
    emails = operator.get("/admin/emails/step-01", base_url=HTTPS).get_data(as_text=True)
    assert f'<th scope="row">{READ_LINK}</th><td class="num">1</td>' in emails
    manage = path_of(services.links(_key_of(services, subscriber_id)).manage_url)
    exported = app.test_client().get(f"{manage}/data.json", base_url=HTTPS).get_json()
    assert [(c["email"], c["link"]) for c in exported["links_followed"]] == [("step-01", READ_LINK)]
    with session_scope(services.sessions) as session:
        drip.forget(
            session,
            session.get_one(Subscriber, subscriber_id),
            keys=services.mailbox_keys,
            now=clock.now,
        )
    with session_scope(services.sessions) as session:
        assert session.scalars(select(Click)).all() == []
    # The count for everyone together stays: it names nobody.
    assert link_counts(services) == {("step-01", READ_LINK): 1}


def test_forged_altered_or_foreign_tokens_lead_nowhere_and_count_nothing(
    app: Flask, services: Services
) -> None:
    services.settings = services.settings.with_changes(click_tracking=ClickTracking.PER_LINK)
    client = app.test_client()
    genuine = services.signer.sign_click(
        TrackedLink("step-01", "A link", "https://example.org/", None)
    )
    assert client.get(f"/c/{genuine}", base_url=HTTPS).status_code == 302
    read_token = services.signer.sign(Purpose.READ, "some-key")
    javascript = services.signer.sign_click(
        TrackedLink("step-01", "A link", "javascript:alert(1)", None)
    )
    for token in (genuine[:-3] + "abc", "not-a-token", read_token, javascript):
        response = client.get(f"/c/{token}", base_url=HTTPS)
        assert response.status_code == 400
        assert "Location" not in response.headers
        assert "Traceback" not in response.get_data(as_text=True)
    assert link_counts(services) == {("step-01", "A link"): 1}


def test_with_tracking_turned_off_later_old_links_still_lead_on_but_count_nothing(
    app: Flask, services: Services
) -> None:
    token = services.signer.sign_click(
        TrackedLink("step-02", "Read", "https://onward.test/read/k/2", None)
    )
    response = app.test_client().get(f"/c/{token}", base_url=HTTPS)
    assert response.status_code == 302
    assert response.headers["Location"] == "https://onward.test/read/k/2"
    assert link_counts(services) == {}


def test_a_url_that_starts_another_is_not_rewritten_inside_it() -> None:
    links = [f"https://onward.test/read/tok/{n}" for n in (1, 10)]
    rendered = RenderedEmail(
        subject="s",
        html=f'<a href="{links[0]}">Step <b>one</b></a> <a href="{links[1]}">Step ten</a>'
        '<a href="https://onward.test/unsubscribe/x">Unsubscribe</a>',
        text=f"Step one ({links[0]})\nStep ten ({links[1]})\n{links[0]}.",
    )
    seen: list[tuple[str, str]] = []

    def track(link: str, url: str) -> str:
        seen.append((link, url))
        return f"https://onward.test/c/{len(seen)}"

    tracked = track_links(rendered, track=track, never={"https://onward.test/unsubscribe/x"})
    assert seen == [("Step one", links[0]), ("Step ten", links[1])]
    assert tracked.text == (
        "Step one (https://onward.test/c/1)\nStep ten (https://onward.test/c/2)\n"
        "https://onward.test/c/1."
    )
    assert 'href="https://onward.test/c/1">Step <b>one</b></a>' in tracked.html
    assert 'href="https://onward.test/unsubscribe/x"' in tracked.html


@pytest.mark.parametrize("value", ["per-link", "per-person", "off", ""])
def test_click_tracking_is_read_from_the_environment(value: str) -> None:
    settings = Settings.from_env({"CLICK_TRACKING": value} if value else {})
    assert settings.click_tracking == ClickTracking(value or "off")


def test_an_unknown_click_tracking_value_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="CLICK_TRACKING"):
        Settings.from_env({"CLICK_TRACKING": "yes"})
