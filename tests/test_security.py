"""The subscriber's pages under attack and behind an https proxy.

Forms over https behind a trusted proxy, the client IP taken only from trusted proxies,
the sign-up rate limit (what counts, Retry-After), big and deep bodies, the headers
(CSP, HSTS, referrer policy, Server), signing-key rotation and redacted access logs.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.serving import make_server

from app import create_app, ratelimit
from app.config import HygieneSettings, Rate, Settings
from app.db import session_scope
from app.dev.server import QuietRequestHandler
from app.models import Consent, Subscriber
from app.services import Services
from app.tokens import LinkSigner, Purpose
from app.web.guard import parse_ip
from tests.support import csrf_token, free_port, run_worker

HTTPS_PROXY = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
WEEK = timedelta(days=7)
TEMPLATES = Path(__file__).resolve().parent.parent / "app" / "templates"


def app_for(services: Services, **changes: object) -> Flask:
    """An app on the same servers with some settings changed."""
    built = create_app(services=Services(services.settings.with_changes(**changes)))
    built.config["TESTING"] = True
    return built


@pytest.fixture
def proxied(services: Services) -> Iterator[Flask]:
    """The app behind one trusted https proxy, as in production."""
    built = app_for(services, trusted_proxies=1)
    yield built
    built.extensions["onward"].close()


def consent_ips(services: Services) -> dict[str, str | None]:
    """The consent IP of each subscription, once the worker has decided the sign-ups."""
    run_worker(services)
    with session_scope(services.sessions) as session:
        rows = session.execute(select(Subscriber.email, Consent.ip).join(Consent.subscriber))
        return {email: ip for email, ip in rows.all()}


# ------------------------------------------------------------------ forms over https


def https_form_post(client: FlaskClient, email: str, **headers: str) -> str:
    """Open the form and send it as a browser behind the https proxy does."""
    page = client.get("/", headers=HTTPS_PROXY)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert token
    answer = client.post(
        "/subscribe",
        data={"email": email, "csrf_token": token.group(1)},
        headers=HTTPS_PROXY | headers,
    )
    return f"{answer.status_code} {answer.get_data(as_text=True)}"


def test_the_form_works_over_https_behind_a_proxy_with_origin_and_no_referer(
    proxied: Flask, services: Services
) -> None:
    client = proxied.test_client()
    answer = https_form_post(client, "ada@example.com", Origin="https://onward.test")
    assert answer.startswith("200") and "Check your inbox" in answer, answer
    assert [s.email for s in services_subscribers(services)] == ["ada@example.com"]
    # A Referer of our own (same-origin policy) is as good as an Origin.
    answer = https_form_post(client, "bob@example.com", Referer="https://onward.test/")
    assert answer.startswith("200"), answer


def services_subscribers(services: Services) -> list[Subscriber]:
    """Every subscription, once the worker has decided the sign-ups."""
    run_worker(services)
    with session_scope(services.sessions) as session:
        return list(session.scalars(select(Subscriber).order_by(Subscriber.id)))


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/form.html"},
        {"Origin": "http://onward.test"},
    ],
)
def test_a_form_sent_from_another_site_is_refused(
    proxied: Flask, services: Services, headers: dict[str, str]
) -> None:
    answer = https_form_post(proxied.test_client(), "ada@example.com", **headers)
    assert answer.startswith("400") and "Form expired" in answer
    assert services_subscribers(services) == []


def test_the_public_form_keeps_a_same_origin_referrer_and_links_send_none(
    proxied: Flask, services: Services
) -> None:
    client = proxied.test_client()
    front = client.get("/", headers=HTTPS_PROXY)
    assert front.headers["Referrer-Policy"] == "same-origin"
    assert 'content="no-referrer"' not in front.get_data(as_text=True)
    manage_path = "/manage/" + services.signer.sign(Purpose.MANAGE, "nobody")
    assert client.get(manage_path).headers["Referrer-Policy"] == "no-referrer"


# ------------------------------------------------------------------ client IP


@pytest.mark.parametrize(
    ("header", "stored"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("203.0.113.9:51234", "203.0.113.9"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("198.51.100.1, 203.0.113.9", "203.0.113.9"),  # only the last hop is trusted
        ("<script>", "127.0.0.1"),
        ("not-an-ip", "127.0.0.1"),
        ("1" * 46, "127.0.0.1"),
        ("", "127.0.0.1"),
    ],
)
def test_the_visitors_ip_comes_only_from_the_trusted_proxy_and_only_if_it_parses(
    proxied: Flask, services: Services, header: str, stored: str
) -> None:
    client = proxied.test_client()
    answer = client.post(
        "/api/subscribe", json={"email": "ada@example.com"}, headers={"X-Forwarded-For": header}
    )
    assert answer.status_code == 202
    assert consent_ips(services) == {"ada@example.com": stored}


def test_without_trusted_proxies_the_header_is_ignored(
    client: FlaskClient, services: Services
) -> None:
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    answer = client.post("/api/subscribe", json={"email": "ada@example.com"}, headers=headers)
    assert answer.status_code == 202
    assert consent_ips(services) == {"ada@example.com": "127.0.0.1"}
    assert "Strict-Transport-Security" not in answer.headers


def test_parse_ip_reads_the_forms_proxies_write() -> None:
    assert parse_ip(" 192.0.2.1 ") == "192.0.2.1"
    assert parse_ip("[::ffff:192.0.2.1]:80") == "::ffff:c000:201"
    assert parse_ip("[2001:db8::1") is None
    assert parse_ip("999.1.1.1") is None


# ------------------------------------------------------------------ rate limit


@pytest.fixture
def held_clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The limiter's wall clock, 10 minutes into an hour's window."""
    wall = SimpleNamespace(now=1_800_000_000.0 - 1_800_000_000.0 % 3600 + 600)
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: wall.now))
    return wall


def test_only_valid_sign_ups_count_and_a_429_says_when_to_retry(
    services: Services, held_clock: SimpleNamespace
) -> None:
    limited = app_for(services, hygiene=HygieneSettings(signup_rate=Rate(2, 3600)))
    client = limited.test_client()
    # Mistyped addresses, the honeypot and forms without a CSRF token use up nothing.
    for _ in range(5):
        assert client.post("/api/subscribe", json={"email": "not-an-address"}).status_code == 400
        honeypot = {"email": "bot@example.com", "website": "x", "csrf_token": csrf_token(client)}
        assert client.post("/subscribe", data=honeypot).status_code == 200
        assert client.post("/subscribe", data={"email": "ada@example.com"}).status_code == 400
    for email in ("a@example.com", "b@example.com"):
        assert client.post("/api/subscribe", json={"email": email}).status_code == 202
    refused = client.post("/api/subscribe", json={"email": "c@example.com"})
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == str(3600 - 600)
    form = client.post(
        "/subscribe", data={"email": "c@example.com", "csrf_token": csrf_token(client)}
    )
    assert form.status_code == 429 and int(form.headers["Retry-After"]) == 3000
    limited.extensions["onward"].close()


def test_the_limit_counts_an_ipv6_64_as_one_visitor_behind_the_proxy(
    proxied: Flask, held_clock: SimpleNamespace
) -> None:
    client = proxied.test_client()
    limit = 20
    for n in range(limit):
        headers = {"X-Forwarded-For": f"[2001:db8:1:2::{n + 1:x}]:443"}
        answer = client.post("/api/subscribe", json={"email": f"p{n}@example.com"}, headers=headers)
        assert answer.status_code == 202
    late = client.post(
        "/api/subscribe",
        json={"email": "late@example.com"},
        headers={"X-Forwarded-For": "2001:db8:1:2:ffff::1"},
    )
    assert late.status_code == 429 and "Retry-After" in late.headers


# ------------------------------------------------------------------ bodies


def test_deep_json_answers_400_not_500(client: FlaskClient, services: Services) -> None:
    for depth in (100, 20_000):
        body = "[" * depth + "]" * depth
        answer = client.post(
            "/api/subscribe", data=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, depth
        assert answer.get_json()["error"]["code"] == "invalid_json"
    nested_string = json.dumps({"email": "ada@example.com", "first_name": "[" * 200})
    answer = client.post(
        "/api/subscribe", data=nested_string, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 202, "brackets inside strings are not nesting"


@pytest.fixture
def live(app: Flask) -> Iterator[int]:
    """The app on a real HTTP server (the development server's handler), its port."""
    server = make_server(
        "127.0.0.1", free_port(), app, threaded=True, request_handler=QuietRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join()


def test_big_bodies_answer_413_chunked_or_not(live: int) -> None:
    big = b'{"email": "' + b"a" * 100_000 + b'@example.com"}'
    for chunked in (False, True):
        connection = http.client.HTTPConnection("127.0.0.1", live, timeout=10)
        body = iter([big[i : i + 8192] for i in range(0, len(big), 8192)]) if chunked else big
        connection.request(
            "POST",
            "/api/subscribe",
            body=body,
            headers={"Content-Type": "application/json"},
            encode_chunked=chunked,
        )
        answer = connection.getresponse()
        assert answer.status == 413, chunked
        connection.close()
    # A small chunked body is read whole.
    connection = http.client.HTTPConnection("127.0.0.1", live, timeout=10)
    small = [b'{"email": ', b'"ada@example.com"}']
    connection.request(
        "POST",
        "/api/subscribe",
        body=iter(small),
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    assert connection.getresponse().status == 202
    connection.close()


def test_the_development_server_names_no_version(live: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", live, timeout=10)
    connection.request("GET", "/healthz")
    answer = connection.getresponse()
    assert answer.status == 200
    assert answer.getheader("Server") == "Onward"


# ------------------------------------------------------------------ headers


def test_every_page_has_a_csp_without_inline_script_and_hsts_under_https(
    proxied: Flask,
) -> None:
    client = proxied.test_client()
    front = client.get("/", headers=HTTPS_PROXY)
    policy = dict(
        part.strip().split(" ", 1) for part in front.headers["Content-Security-Policy"].split(";")
    )
    assert policy["script-src"] == "'self'"
    assert "'unsafe-inline'" not in policy["default-src"]
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
    assert front.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "Strict-Transport-Security" not in client.get("/").headers


def test_no_template_holds_inline_script_or_event_handlers() -> None:
    for template in TEMPLATES.rglob("*.html"):
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag, f"{template.name}: inline script {tag}"
        assert not re.search(r"\son[a-z]+\s*=", text), f"{template.name}: event handler"
        assert "javascript:" not in text, template.name


# ------------------------------------------------------------------ keys and logs


def test_a_rotated_key_still_reads_links_signed_with_the_old_one() -> None:
    old = LinkSigner("old-key", confirm_max_age=WEEK)
    token = old.sign(Purpose.UNSUBSCRIBE, "key-1")
    rotated = LinkSigner("new-key", confirm_max_age=WEEK, fallbacks=["old-key"])
    assert rotated.read(Purpose.UNSUBSCRIBE, token) == "key-1"
    fresh = rotated.sign(Purpose.UNSUBSCRIBE, "key-1")
    assert (
        LinkSigner("new-key", confirm_max_age=WEEK).read(Purpose.UNSUBSCRIBE, fresh) == "key-1"
    ), "the newest key signs"
    settings = Settings.from_env({"SECRET_KEY": "new-key", "SECRET_KEY_FALLBACKS": "a, old-key"})
    assert settings.secret_key_fallbacks == ("a", "old-key")
    assert Services(settings).signer.read(Purpose.UNSUBSCRIBE, token) == "key-1"


def test_the_web_servers_access_log_holds_no_full_token(
    app: Flask, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    token = services.signer.sign(Purpose.MANAGE, "some-subscriber")
    read = services.signer.sign(Purpose.READ, "some-subscriber")
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        logging.getLogger("werkzeug").info('127.0.0.1 - - "GET /manage/%s HTTP/1.1" 200 -', token)
        logging.getLogger("werkzeug").info('"GET /read/%s/3?token=%s HTTP/1.1" 200 -', read, token)
    assert token not in caplog.text and read not in caplog.text
    assert "/manage/" + token[:6] in caplog.text and "/3?token=" in caplog.text
