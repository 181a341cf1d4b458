"""The web pages and the JSON API, on real servers: what visitors see and what gets stored."""

from __future__ import annotations

import html
import json
import re
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import func, select
from sqlalchemy.orm import DeclarativeBase
from werkzeug.test import TestResponse

from app import create_app, ratelimit, store
from app.config import DEFAULT_EMAILS_DIR, Settings
from app.course import load_course
from app.db import session_scope
from app.models import Consent, Delivery, EmailKind, Subscriber, SubscriberStatus
from app.services import Services
from app.signups import TICK_GRACE
from app.tokens import Links, LinkSigner, Purpose
from tests.support import (
    FakeClock,
    Received,
    SmtpSink,
    active_subscriber,
    csrf_token,
    run_worker,
)
from worker.schedule import tick

S = SubscriberStatus
COURSE = load_course(DEFAULT_EMAILS_DIR)
ADA = "ada@example.com"
BOB = "bob@example.org"
LONG_ADDRESS = "a" * 288 + "@example.com"
#: Texts of a page that must never reach a visitor.
INTERNALS = ("Traceback", "OperationalError", "sqlalchemy", "psycopg", 'File "')


# --- helpers ---------------------------------------------------------------------------


def text_of(response: TestResponse) -> str:
    """The page as a person reads it (entities such as &#39; decoded)."""
    return html.unescape(response.get_data(as_text=True))


def path_of(url: str) -> str:
    return urlsplit(url).path


def client_from(app: Flask, ip: str, user_agent: str = "pytest-browser/1.0") -> FlaskClient:
    """A test client that connects from `ip` with its own user agent."""
    visitor = app.test_client()
    visitor.environ_base["REMOTE_ADDR"] = ip
    visitor.environ_base["HTTP_USER_AGENT"] = user_agent
    return visitor


def form_sign_up(
    client: FlaskClient, email: str, first_name: str = "", **extra: str
) -> TestResponse:
    """Fill in and send the subscribe form the way a browser does."""
    data = {"email": email, "first_name": first_name, "csrf_token": csrf_token(client)}
    return client.post("/subscribe", data={**data, **extra})


def subscribers(services: Services, email: str | None = None) -> list[Subscriber]:
    """Stored subscriptions (of one address, or all), oldest first."""
    with session_scope(services.sessions) as session:
        query = select(Subscriber).order_by(Subscriber.id)
        if email is not None:
            query = query.where(Subscriber.email == email)
        return list(session.scalars(query))


def statuses(services: Services, email: str) -> list[str]:
    return [str(subscriber.status) for subscriber in subscribers(services, email)]


def count(services: Services, model: type[DeclarativeBase]) -> int:
    with session_scope(services.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def consent_of(services: Services, email: str) -> Consent:
    with session_scope(services.sessions) as session:
        return session.scalars(
            select(Consent).join(Subscriber).where(Subscriber.email == email)
        ).one()


def deliver(services: Services) -> None:
    """What the scheduler and the worker do on their own: queue due emails, send them."""
    tick(services)
    run_worker(services)


def signed_up(
    client: FlaskClient, services: Services, smtp: SmtpSink, email: str, first_name: str = ""
) -> Received:
    """Sign up through the API; return the confirmation email that arrived."""
    answer = client.post("/api/subscribe", json={"email": email, "first_name": first_name})
    assert answer.status_code == 202
    run_worker(services)
    confirmation = smtp.to(email)[-1]
    assert confirmation.subject == "Confirm your free 10-step course"
    return confirmation


def confirmed(client: FlaskClient, services: Services, smtp: SmtpSink, email: str) -> Received:
    """Sign up and confirm through the web; return step 1 as it arrived."""
    confirmation = signed_up(client, services, smtp, email)
    assert client.post(path_of(confirmation.link("confirm"))).status_code == 200
    run_worker(services)
    step_one = smtp.to(email)[-1]
    assert step_one.subject.startswith("Step 1 of 10:")
    return step_one


def links_of(services: Services, email: str) -> Links:
    [subscriber] = subscribers(services, email)
    return services.links(subscriber.key)


def token_of(url: str) -> str:
    return url.rstrip("/").rpartition("/")[2]


def assert_human_error(response: TestResponse, status: int, *phrases: str) -> None:
    """An error page with the status, the phrases a person needs, and no internals."""
    page = text_of(response)
    assert response.status_code == status, f"{response.status_code}: {page[-500:]}"
    assert response.mimetype == "text/html"
    for phrase in phrases:
        assert phrase in page
    for internal in INTERNALS:
        assert internal not in page


class _EightDaysAgo(TimestampSigner):
    """Signs as if it were eight days ago (confirmation links last seven)."""

    def get_timestamp(self) -> int:
        return int(time.time()) - 8 * 24 * 3600


def old_token(services: Services, purpose: Purpose, key: str) -> str:
    """A genuine token for `purpose`, signed eight days ago."""
    serializer = URLSafeTimedSerializer(
        services.settings.secret_key, salt=f"onward.{purpose}", signer=_EightDaysAgo
    )
    return str(serializer.dumps(key))


@pytest.fixture
def broken_services() -> Iterator[list[Services]]:
    """Services built in a test on broken settings, cleaned up afterwards."""
    built: list[Services] = []
    yield built
    for svc in built:
        svc.close()


def app_with(built: list[Services], settings: Settings, clock: FakeClock, **changes: str) -> Flask:
    svc = Services(settings.with_changes(**changes), clock=clock)
    built.append(svc)
    flask_app = create_app(services=svc)
    flask_app.config["TESTING"] = True
    return flask_app


# --- invalid input -----------------------------------------------------------------------

INVALID = [
    pytest.param("", "Please enter your email address.", id="empty"),
    pytest.param("not-an-email", "An email address needs an @ in it", id="no-at"),
    pytest.param("a@b", "The part after the @ should be a full domain, like b.com.", id="no-dot"),
    pytest.param("ada @example.com", "can't contain spaces", id="space"),
    pytest.param(LONG_ADDRESS, "That email address is too long.", id="300-chars"),
]


@pytest.mark.parametrize(("address", "message"), INVALID)
def test_the_form_refuses_an_invalid_address_with_a_clear_message(
    client: FlaskClient, services: Services, smtp: SmtpSink, address: str, message: str
) -> None:
    assert len(LONG_ADDRESS) == 300
    response = form_sign_up(client, address, "Ada")
    page = text_of(response)
    assert response.status_code == 400
    assert message in page
    assert 'role="alert"' in page
    # The form comes back filled in, so the visitor can correct it.
    assert 'name="email"' in page and 'value="Ada"' in page
    assert "Check your inbox" not in page
    assert count(services, Subscriber) == 0
    deliver(services)
    assert smtp.messages == []


@pytest.mark.parametrize(("address", "message"), INVALID)
def test_the_api_refuses_an_invalid_address_with_a_json_error(
    client: FlaskClient, services: Services, address: str, message: str
) -> None:
    response = client.post("/api/subscribe", json={"email": address})
    assert response.status_code == 400
    assert response.is_json
    payload = response.get_json()
    assert payload["error"]["code"] == "invalid_email"
    assert message in payload["error"]["message"]
    assert count(services, Subscriber) == 0


def test_the_form_escapes_what_it_echoes_back(client: FlaskClient, services: Services) -> None:
    response = form_sign_up(client, '"><script>alert(1)</script>', "<b>Ada</b>")
    raw = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "<script>alert(1)</script>" not in raw
    assert "<b>Ada</b>" not in raw
    assert "&lt;b&gt;Ada&lt;/b&gt;" in raw
    assert count(services, Subscriber) == 0


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param("email=ada%40example.com", "application/x-www-form-urlencoded", id="form"),
        pytest.param('{"email": "ada@example.com"}', "text/plain", id="text"),
        pytest.param("", None, id="no-body"),
    ],
)
def test_the_api_wants_json(
    client: FlaskClient, services: Services, body: str, content_type: str | None
) -> None:
    response = client.post("/api/subscribe", data=body, content_type=content_type)
    assert response.status_code == 415
    assert response.is_json
    assert response.get_json()["error"]["code"] == "unsupported_media_type"
    assert "application/json" in response.get_json()["error"]["message"]
    assert count(services, Subscriber) == 0


@pytest.mark.parametrize(
    "body", ['["ada@example.com"]', '"ada@example.com"', "null", "42", '{"email": '], ids=repr
)
def test_the_api_wants_a_json_object(client: FlaskClient, services: Services, body: str) -> None:
    response = client.post("/api/subscribe", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.is_json
    assert response.get_json()["error"]["code"] == "invalid_json"
    assert response.get_json()["error"]["message"]
    assert count(services, Subscriber) == 0


def test_the_api_wants_string_fields(client: FlaskClient, services: Services) -> None:
    for payload in ({"email": ["ada@example.com"]}, {"email": ADA, "first_name": 7}):
        response = client.post("/api/subscribe", json=payload)
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "invalid_field"
    assert count(services, Subscriber) == 0


# --- no enumeration, no duplicate confirmations --------------------------------------------


def shape(page: str, address: str) -> str:
    """A page without what the visitor typed and the form tokens: what it says of the address."""
    page = re.sub(r'name="csrf_token" value="[^"]+"', 'name="csrf_token"', page)
    return page.replace(address, "ADDRESS")


def test_the_answer_is_the_same_whether_the_address_is_new_pending_active_or_gone(
    app: Flask, services: Services, smtp: SmtpSink
) -> None:
    # Set the addresses up from another IP, so the probes below stay under the rate limit.
    setup = client_from(app, "198.51.100.7")
    for channel in ("form", "api"):
        signed_up(setup, services, smtp, f"pending-{channel}@example.com")
        confirmed(setup, services, smtp, f"active-{channel}@example.com")
        step_one = confirmed(setup, services, smtp, f"gone-{channel}@example.com")
        assert setup.post(path_of(step_one.link("unsubscribe"))).status_code == 200
        assert statuses(services, f"pending-{channel}@example.com") == ["pending"]
        assert statuses(services, f"active-{channel}@example.com") == ["active"]
        assert statuses(services, f"gone-{channel}@example.com") == ["unsubscribed"]

    prober = client_from(app, "203.0.113.9")
    form_answers = set()
    api_answers = set()
    for state in ("new", "pending", "active", "gone"):
        form = form_sign_up(prober, f"{state}-form@example.com")
        page = shape(form.get_data(as_text=True), f"{state}-form@example.com")
        form_answers.add((form.status_code, form.mimetype, page))
        api = prober.post("/api/subscribe", json={"email": f"{state}-api@example.com"})
        api_answers.add((api.status_code, api.mimetype, api.get_data(as_text=True)))

    [(form_status, _, form_body)] = form_answers
    assert form_status == 200
    assert "Check your inbox" in form_body
    [(api_status, api_mimetype, api_body)] = api_answers
    assert (api_status, api_mimetype) == (202, "application/json")
    assert json.loads(api_body)["status"] == "accepted"
    # The job decides each request: the states are what they should be after the probes,
    # and an active address hears about the probe by email, not on the page.
    run_worker(services)
    for channel in ("form", "api"):
        assert smtp.to(f"active-{channel}@example.com")[-1].subject == COURSE.notice_subject
    for channel in ("form", "api"):
        assert statuses(services, f"new-{channel}@example.com") == ["pending"]
        assert statuses(services, f"pending-{channel}@example.com") == ["pending"]
        assert statuses(services, f"active-{channel}@example.com") == ["active"]
        assert statuses(services, f"gone-{channel}@example.com") == ["unsubscribed", "pending"]


def test_a_pending_address_gets_a_second_confirmation_only_after_ten_minutes(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    assert form_sign_up(client, ADA, "Ada").status_code == 200
    run_worker(services)
    [first] = smtp.to(ADA)

    for minutes in (0, 4, 5):  # 0, 4 and 9 minutes after the first sign-up
        clock.advance(timedelta(minutes=minutes))
        answer = form_sign_up(client, ADA, "Ada")
        assert answer.status_code == 200
        assert "Check your inbox" in text_of(answer)
        deliver(services)
        assert len(smtp.to(ADA)) == 1, f"a second confirmation after {clock.now}"

    clock.advance(timedelta(minutes=2))  # 11 minutes after the first sign-up
    assert form_sign_up(client, ADA, "Ada").status_code == 200
    run_worker(services)
    assert len(smtp.to(ADA)) == 2
    second = smtp.to(ADA)[-1]
    assert second.subject == first.subject
    assert second.message["Message-ID"] != first.message["Message-ID"]
    assert statuses(services, ADA) == ["pending"]
    # The fresh link works.
    assert client.post(path_of(second.link("confirm"))).status_code == 200
    assert statuses(services, ADA) == ["active"]


def manage_key(services: Services, email: Received) -> str:
    """The subscription an email's manage link acts on."""
    return services.signer.read(Purpose.MANAGE, email.link("manage").rsplit("/", 1)[1])


def test_signing_up_an_active_address_sends_a_notice_within_the_daily_cap(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one = confirmed(client, services, smtp, ADA)
    assert len(smtp.to(ADA)) == 2
    for _ in range(2):
        assert "Check your inbox" in text_of(form_sign_up(client, ADA))
        assert client.post("/api/subscribe", json={"email": ADA}).status_code == 202
        deliver(services)
        clock.advance(timedelta(minutes=11))
    # CONFIRMATIONS_PER_DAY (3) caps every email a sign-up causes: the confirmation
    # took one, so two notices went and the other two sign-ups sent nothing.
    notices = smtp.to(ADA)[2:]
    assert [n.subject for n in notices] == [COURSE.notice_subject] * 2
    # The same subscription's manage link (tokens carry the second they were signed in).
    assert manage_key(services, notices[0]) == manage_key(services, step_one)
    assert "already under way" in notices[0].text
    assert "/confirm/" not in notices[0].text
    assert statuses(services, ADA) == ["active"]
    with session_scope(services.sessions) as session:
        subscriber = session.scalars(select(Subscriber)).one()
        # A notice is no step: the course's schedule is as it was.
        assert subscriber.next_step == 2
        assert [str(d.kind) for d in subscriber.deliveries].count("notice") == 2


def test_the_honeypot_answers_like_a_sign_up_and_stores_nothing(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    real = form_sign_up(client, BOB)
    bot = form_sign_up(client, ADA, "Ada", website="https://spam.example")
    assert bot.status_code == real.status_code == 200
    assert shape(text_of(bot), ADA) == shape(text_of(real), BOB)
    assert "Check your inbox" in text_of(bot)
    deliver(services)
    assert subscribers(services, ADA) == []
    assert smtp.to(ADA) == []
    assert len(smtp.to(BOB)) == 1


@pytest.mark.parametrize("token", [None, "", "forged-csrf-token"])
def test_a_form_post_without_a_valid_csrf_token_is_refused(
    client: FlaskClient, services: Services, smtp: SmtpSink, token: str | None
) -> None:
    client.get("/")  # a session, as a browser that loaded the page has
    data = {"email": ADA, "first_name": "Ada"}
    if token is not None:
        data["csrf_token"] = token
    response = client.post("/subscribe", data=data)
    assert_human_error(response, 400, "Form expired", "Please reload and try again.")
    assert count(services, Subscriber) == 0
    deliver(services)
    assert smtp.messages == []


# --- signed links ----------------------------------------------------------------------------

PAGES = ["confirm", "pause", "unsubscribe", "manage"]
PAUSE_FORM = {"action": "pause"}


def link_path(page: str, token: str, method: str) -> str:
    """Where a link's token goes; the manage page answers GET, its actions are POSTs below it."""
    if page == "manage" and method == "POST":
        return f"/manage/{token}/pause"
    return f"/{page}/{token}"


def tampered(token: str) -> str:
    """The token with one character of its signature changed."""
    position = len(token) - 10
    replacement = "A" if token[position] != "A" else "B"
    return token[:position] + replacement + token[position + 1 :]


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_forged_and_tampered_links_get_a_human_400(
    client: FlaskClient, services: Services, smtp: SmtpSink, page: str, method: str
) -> None:
    confirmed(client, services, smtp, ADA)
    genuine = token_of(getattr(links_of(services, ADA), f"{page}_url"))
    other_secret = LinkSigner("another-secret", confirm_max_age=timedelta(days=7))
    [subscriber] = subscribers(services, ADA)
    bad_tokens = [
        secrets.token_urlsafe(32),
        "not-a-token",
        tampered(genuine),
        other_secret.sign(Purpose(page), subscriber.key),
    ]
    assert tampered(genuine) != genuine
    # The genuine token works, so a 400 below is about the change made to it.
    assert client.get(f"/{page}/{genuine}").status_code == 200
    for token in bad_tokens:
        response = client.open(link_path(page, token, method), method=method, data=PAUSE_FORM)
        assert_human_error(response, 400, "Link not valid", "exactly as it appears in your email")
    assert statuses(services, ADA) == ["active"]


@pytest.mark.parametrize(
    ("token_of_purpose", "page"),
    [
        ("unsubscribe", "pause"),
        ("unsubscribe", "confirm"),
        ("unsubscribe", "manage"),
        ("confirm", "unsubscribe"),
        ("manage", "unsubscribe"),
        ("pause", "manage"),
    ],
)
def test_a_link_made_for_another_purpose_gets_a_400(
    client: FlaskClient, services: Services, token_of_purpose: str, page: str
) -> None:
    signed = client.post("/api/subscribe", json={"email": ADA})
    assert signed.status_code == 202
    run_worker(services)
    token = token_of(getattr(links_of(services, ADA), f"{token_of_purpose}_url"))
    for method in ("GET", "POST"):
        response = client.open(link_path(page, token, method), method=method, data=PAUSE_FORM)
        assert_human_error(response, 400, "Link not valid")
    assert statuses(services, ADA) == ["pending"]


def test_a_manage_action_with_a_token_of_another_purpose_changes_nothing(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    confirmed(client, services, smtp, ADA)
    links = links_of(services, ADA)
    for token in (token_of(links.unsubscribe_url), token_of(links.pause_url)):
        for action in ("delete", "pause", "unsubscribe"):
            response = client.post(f"/manage/{token}/{action}")
            assert_human_error(response, 400, "Link not valid")
        assert client.get(f"/manage/{token}/data.json").status_code == 400
    assert statuses(services, ADA) == ["active"]
    assert count(services, Consent) == 1


def test_an_expired_confirmation_link_gets_410_and_other_old_links_still_work(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    signed_up(client, services, smtp, ADA)
    [subscriber] = subscribers(services, ADA)
    # The old-token helper signs exactly as the app does: the app reads its tokens.
    assert services.signer.read(Purpose.PAUSE, old_token(services, Purpose.PAUSE, "k")) == "k"

    expired = old_token(services, Purpose.CONFIRM, subscriber.key)
    for method in ("GET", "POST"):
        response = client.open(f"/confirm/{expired}", method=method)
        assert_human_error(response, 410, "Link expired", "Sign up again")
    assert statuses(services, ADA) == ["pending"]

    # Pause, unsubscribe and manage links sit in old emails and never expire.
    for purpose in (Purpose.PAUSE, Purpose.UNSUBSCRIBE, Purpose.MANAGE):
        response = client.get(f"/{purpose}/{old_token(services, purpose, subscriber.key)}")
        assert response.status_code == 200, purpose
    assert statuses(services, ADA) == ["pending"]


def test_links_to_a_deleted_subscription_get_a_human_404(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    confirmed(client, services, smtp, ADA)
    links = links_of(services, ADA)
    deleted = client.post(path_of(links.manage_url) + "/delete", data={"confirm": "yes"})
    assert deleted.status_code == 200
    assert subscribers(services, ADA) == []
    for method, url in [
        ("GET", links.manage_url),
        ("GET", links.unsubscribe_url),
        ("POST", links.unsubscribe_url),
        ("GET", links.pause_url),
        ("POST", links.confirm_url),
        ("GET", links.manage_url + "/data.json"),
    ]:
        response = client.open(path_of(url), method=method)
        assert_human_error(response, 404, "We couldn't find this subscription")


def test_opening_links_with_get_never_changes_a_subscription(
    app: Flask, client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    signed_up(client, services, smtp, ADA)
    confirmed(client, services, smtp, BOB)
    scanner = app.test_client()  # what a mail scanner or link preview does
    for email, status in ((ADA, "pending"), (BOB, "active")):
        links = links_of(services, email)
        [before] = subscribers(services, email)
        confirmed_at = consent_of(services, email).confirmed_at
        assert str(before.status) == status
        for url in (links.confirm_url, links.pause_url, links.unsubscribe_url, links.manage_url):
            assert scanner.get(path_of(url)).status_code == 200
        for action in ("pause", "unsubscribe", "delete"):
            assert scanner.get(path_of(links.manage_url) + f"/{action}").status_code == 405
        [after] = subscribers(services, email)
        assert str(after.status) == status
        assert after.next_send_at == before.next_send_at
        assert after.paused_at is None and after.ended_at is None
        assert consent_of(services, email).confirmed_at == confirmed_at
    assert consent_of(services, ADA).confirmed_at is None
    # The landing pages ask before they act.
    assert "Yes, send me the course" in text_of(
        scanner.get(path_of(links_of(services, ADA).confirm_url))
    )
    assert "Unsubscribe from the course?" in text_of(
        scanner.get(path_of(links_of(services, BOB).unsubscribe_url))
    )


def test_a_head_request_on_the_confirm_link_does_not_confirm(
    app: Flask, client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    confirmation = signed_up(client, services, smtp, ADA)
    scanner = app.test_client()
    assert scanner.head(path_of(confirmation.link("confirm"))).status_code == 200
    assert statuses(services, ADA) == ["pending"]
    assert consent_of(services, ADA).confirmed_at is None


def test_a_pause_post_without_an_action_does_not_claim_a_change(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    step_one = confirmed(client, services, smtp, ADA)
    response = client.post(path_of(step_one.link("pause")))
    assert response.status_code == 200
    assert statuses(services, ADA) == ["active"]
    assert "running again" not in text_of(response)


# --- one-click unsubscribe (RFC 8058) ---------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_one_click_unsubscribe_from_a_cookieless_client(
    app: Flask,
    client: FlaskClient,
    services: Services,
    smtp: SmtpSink,
    clock: FakeClock,
    content_type: str,
) -> None:
    step_one = confirmed(client, services, smtp, ADA)
    url = str(step_one.message["List-Unsubscribe"]).strip().removeprefix("<").removesuffix(">")
    assert url.startswith("https://onward.test/unsubscribe/")
    mailbox_provider = app.test_client()
    assert mailbox_provider.get_cookie("session") is None
    clock.advance(timedelta(minutes=3))

    if content_type == "multipart/form-data":
        response = mailbox_provider.post(
            path_of(url), data={"List-Unsubscribe": "One-Click"}, content_type=content_type
        )
        assert response.request.content_type.startswith("multipart/form-data; boundary=")
    else:
        response = mailbox_provider.post(
            path_of(url), data="List-Unsubscribe=One-Click", content_type=content_type
        )
    assert response.status_code == 200
    assert "Location" not in response.headers
    assert "You're unsubscribed" in text_of(response)
    [subscriber] = subscribers(services, ADA)
    assert subscriber.status == S.UNSUBSCRIBED
    assert subscriber.ended_at == clock.now
    assert subscriber.next_send_at is None

    for _ in range(3):
        clock.advance(services.settings.step_interval)
        deliver(services)
    assert len(smtp.to(ADA)) == 2


# --- the manage page ------------------------------------------------------------------------


def test_the_manage_page_shows_status_and_progress_and_pauses_and_resumes(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one = confirmed(client, services, smtp, ADA)
    manage = path_of(step_one.link("manage"))
    interval = services.settings.step_interval

    page = text_of(client.get(manage))
    assert ADA in page
    assert "Active" in page
    assert "1 of 10 steps received" in page
    assert "Pause the course" in page

    paused = client.post(f"{manage}/pause")
    assert paused.status_code == 303
    assert path_of(paused.headers["Location"]) == manage
    page = text_of(client.get(manage))
    assert "Paused" in page and "Resume the course" in page
    assert statuses(services, ADA) == ["paused"]
    clock.advance(interval * 3)
    deliver(services)
    assert len(smtp.to(ADA)) == 2

    resumed = client.post(f"{manage}/resume")
    assert resumed.status_code == 303
    assert path_of(resumed.headers["Location"]) == manage
    page = text_of(client.get(manage))
    assert "Active" in page and "Pause the course" in page
    [subscriber] = subscribers(services, ADA)
    assert subscriber.status == S.ACTIVE
    assert subscriber.next_send_at == clock.now + interval
    clock.advance(interval)
    deliver(services)
    assert smtp.to(ADA)[-1].subject.startswith("Step 2 of 10:")
    assert "2 of 10 steps received" in text_of(client.get(manage))


def test_an_unknown_manage_action_is_a_404_and_changes_nothing(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    step_one = confirmed(client, services, smtp, ADA)
    response = client.post(path_of(step_one.link("manage")) + "/explode")
    assert_human_error(response, 404, "There is no such action.")
    assert statuses(services, ADA) == ["active"]


def test_the_data_export_has_the_address_consent_and_emails_sent(
    app: Flask, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    browser = client_from(app, "192.0.2.44", "Export-Browser/2.0")
    signed_at = clock.now
    assert form_sign_up(browser, ADA, "Ada").status_code == 200
    run_worker(services)
    clock.advance(timedelta(minutes=5))
    assert browser.post(path_of(smtp.to(ADA)[-1].link("confirm"))).status_code == 200
    run_worker(services)

    response = browser.get(path_of(links_of(services, ADA).manage_url) + "/data.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert "attachment" in response.headers["Content-Disposition"]
    data = json.loads(response.get_data(as_text=True))
    assert data["email"] == ADA
    assert data["first_name"] == "Ada"
    assert data["status"] == "active"
    assert data["steps_received"] == 1
    consent = data["consent"]
    assert consent["source"] == "form"
    assert consent["ip"] == "192.0.2.44"
    assert consent["user_agent"] == "Export-Browser/2.0"
    assert consent["wording"] == COURSE.consent_wording
    assert consent["requested_at"] == signed_at.isoformat()
    assert consent["confirmed_at"] == clock.now.isoformat()
    assert [(e["email"], e["status"]) for e in data["emails"]] == [
        ("confirmation", "sent"),
        ("step-01", "sent"),
    ]
    assert data["emails"][0]["sent_at"] == signed_at.isoformat()
    assert data["emails"][1]["sent_at"] == clock.now.isoformat()


def test_delete_erases_the_subscriber_consent_and_deliveries_only(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    confirmed(client, services, smtp, ADA)
    confirmed(client, services, smtp, BOB)
    [ada] = subscribers(services, ADA)
    [bob] = subscribers(services, BOB)
    assert count(services, Consent) == 2
    assert count(services, Delivery) == 4

    response = client.post(
        path_of(services.links(ada.key).manage_url) + "/delete", data={"confirm": "yes"}
    )
    assert response.status_code == 200
    assert "Your data is deleted" in text_of(response)
    assert subscribers(services, ADA) == []
    with session_scope(services.sessions) as session:
        assert session.scalars(select(Consent).where(Consent.subscriber_id == ada.id)).all() == []
        assert session.scalars(select(Delivery).where(Delivery.subscriber_id == ada.id)).all() == []
        # Bob's subscription is untouched.
        assert session.get_one(Subscriber, bob.id).status == S.ACTIVE
        assert session.scalars(select(Consent).where(Consent.subscriber_id == bob.id)).one()
        bob_deliveries = session.scalars(select(Delivery).where(Delivery.subscriber_id == bob.id))
        assert [(d.kind, d.number) for d in bob_deliveries] == [
            (EmailKind.CONFIRMATION, 1),
            (EmailKind.STEP, 1),
        ]


# --- consent records ---------------------------------------------------------------------------


def test_the_consent_record_keeps_source_ip_user_agent_wording_and_times(
    app: Flask, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    laptop = client_from(app, "192.0.2.10", "Laptop-Browser/1.0")
    phone = client_from(app, "198.51.100.20", "Phone-Browser/9.1")
    signed_at = clock.now
    assert form_sign_up(laptop, ADA, "Ada").status_code == 200
    assert phone.post("/api/subscribe", json={"email": BOB}).status_code == 202
    clock.advance(timedelta(seconds=2))
    run_worker(services)

    ada = consent_of(services, ADA)
    assert (ada.source, ada.ip, ada.user_agent) == ("form", "192.0.2.10", "Laptop-Browser/1.0")
    assert ada.wording == COURSE.consent_wording
    assert ada.requested_at == signed_at
    assert ada.confirmed_at is None
    bob = consent_of(services, BOB)
    assert (bob.source, bob.ip, bob.user_agent) == ("api", "198.51.100.20", "Phone-Browser/9.1")
    assert bob.wording == COURSE.consent_wording

    run_worker(services)
    clock.advance(timedelta(hours=3))
    # Ada confirms on her phone, hours later.
    assert phone.post(path_of(smtp.to(ADA)[-1].link("confirm"))).status_code == 200
    ada = consent_of(services, ADA)
    assert ada.confirmed_at == clock.now
    assert ada.confirmed_ip == "198.51.100.20"
    assert ada.confirmed_user_agent == "Phone-Browser/9.1"
    assert ada.requested_at == signed_at
    assert (ada.source, ada.ip) == ("form", "192.0.2.10")
    assert consent_of(services, BOB).confirmed_at is None
    with session_scope(services.sessions) as session:
        [request] = store.signup_requests_of(session, ADA)
        assert (request.ip, request.user_agent, request.created_at) == (
            "192.0.2.10",
            "Laptop-Browser/1.0",
            signed_at,
        )
        assert request.processed_at == signed_at + timedelta(seconds=2)


# --- outages and abuse ---------------------------------------------------------------------


def test_database_down_gives_a_friendly_503(
    settings: Settings, clock: FakeClock, broken_services: list[Services]
) -> None:
    down = app_with(
        broken_services, settings, clock, database_url="postgresql://nobody@127.0.0.1:1/none"
    )
    visitor = down.test_client()
    response = form_sign_up(visitor, ADA, "Ada")
    assert_human_error(
        response, 503, "Temporarily unavailable", "We can't reach our database right now"
    )

    api = visitor.post("/api/subscribe", json={"email": ADA})
    assert api.status_code == 503
    assert api.get_json()["error"]["code"] == "temporarily_unavailable"
    assert "Traceback" not in api.get_data(as_text=True)

    token = token_of(broken_services[0].links("some-key").manage_url)
    assert_human_error(visitor.get(f"/manage/{token}"), 503, "Temporarily unavailable")


def test_an_unusable_sqlite_path_gives_a_friendly_503(
    settings: Settings, clock: FakeClock, broken_services: list[Services]
) -> None:
    down = app_with(
        broken_services, settings, clock, database_url="sqlite:////dev/null/nowhere/onward.db"
    )
    visitor = down.test_client()
    response = form_sign_up(visitor, ADA, "Ada")
    assert_human_error(response, 503, "Temporarily unavailable")


def test_redis_down_still_takes_the_sign_up_and_the_next_tick_sends_it(
    settings: Settings,
    services: Services,
    smtp: SmtpSink,
    clock: FakeClock,
    broken_services: list[Services],
) -> None:
    down = app_with(broken_services, settings, clock, redis_url="redis://127.0.0.1:1/0")
    visitor = down.test_client()
    response = form_sign_up(visitor, ADA, "Ada")
    assert response.status_code == 200
    assert "Check your inbox" in text_of(response)
    assert visitor.post("/api/subscribe", json={"email": BOB}).status_code == 202

    # The intent is stored, not yet decided, and nothing is sent.
    with session_scope(services.sessions) as session:
        for email in (ADA, BOB):
            [request] = store.signup_requests_of(session, email)
            assert request.processed_at is None
    assert subscribers(services) == []
    assert smtp.messages == []

    # Redis is back: the ordinary tick finds the waiting requests in the database
    # (once the job the web would have queued had its chance) and queues them.
    clock.advance(TICK_GRACE - timedelta(seconds=1))
    tick(services)
    assert services.queue.count == 0
    clock.advance(timedelta(seconds=2))
    tick(services)
    assert services.queue.count == 2
    run_worker(services)
    [confirmation] = smtp.to(ADA)
    assert confirmation.subject == "Confirm your free 10-step course"
    assert "Hi Ada," in confirmation.text
    assert len(smtp.to(BOB)) == 1


def test_too_many_sign_ups_from_one_ip_get_429(
    app: Flask, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limiter counts in wall-clock windows; hold the wall clock still for the test.
    wall = SimpleNamespace(now=1_800_000_000.0)
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: wall.now))
    limit = int(services.settings.hygiene.signup_rate.count)
    flood = client_from(app, "203.0.113.66")

    for n in range(limit):
        assert flood.post("/api/subscribe", json={"email": f"p{n}@example.com"}).status_code == 202
    refused = flood.post("/api/subscribe", json={"email": ADA})
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "too_many_attempts"
    assert_human_error(form_sign_up(flood, ADA), 429, "Too many attempts", "try again")
    run_worker(services)
    assert subscribers(services, ADA) == []
    assert count(services, Subscriber) == limit

    # Another visitor is not held back, and the limit lifts when the window has passed.
    assert (
        client_from(app, "192.0.2.99").post("/api/subscribe", json={"email": BOB}).status_code
        == 202
    )
    wall.now += 3600
    assert flood.post("/api/subscribe", json={"email": ADA}).status_code == 202
    run_worker(services)
    assert statuses(services, ADA) == ["pending"]


def test_pages_behind_links_are_not_cached_framed_or_leaked_by_referer(
    client: FlaskClient, services: Services, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    with session_scope(services.sessions) as session:
        key = session.get_one(Subscriber, subscriber_id).key
    manage = client.get(urlsplit(services.links(key).manage_url).path)
    assert manage.status_code == 200
    assert manage.headers["Cache-Control"] == "no-store"
    assert manage.headers["Referrer-Policy"] == "no-referrer"
    assert manage.headers["X-Frame-Options"] == "DENY"
    front = client.get("/")
    assert front.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" not in front.headers.get("Cache-Control", "")


def test_behind_a_trusted_proxy_the_visitors_address_is_recorded(services: Services) -> None:
    proxied = create_app(services=Services(services.settings.with_changes(trusted_proxies=1)))
    direct = create_app(services=services)
    headers = {"X-Forwarded-For": "203.0.113.9"}
    for app_, email in ((proxied, "behind@example.com"), (direct, "spoofed@example.com")):
        answer = app_.test_client().post("/api/subscribe", json={"email": email}, headers=headers)
        assert answer.status_code == 202
    run_worker(services)
    with session_scope(services.sessions) as session:
        ips = dict(
            session.execute(select(Subscriber.email, Consent.ip).join(Consent.subscriber)).all()
        )
    assert ips["behind@example.com"] == "203.0.113.9"
    assert ips["spoofed@example.com"] != "203.0.113.9", (
        "without a trusted proxy the header is ignored"
    )
    proxied.extensions["onward"].close()
