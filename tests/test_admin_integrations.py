"""The console's API tokens and webhooks pages, and `flask admin token`."""

from __future__ import annotations

import re

from flask import Flask
from sqlalchemy import select

from app import apitokens, outbound
from app.db import session_scope
from app.models import ApiToken, AuditEntry, WebhookEndpoint
from app.services import Services
from tests.admin_support import (
    HTTPS,
    OPERATOR,
    add_operator,
    form_token,
    log_in,
    referer,
    signed_in,
)
from tests.support import FakeClock, sign_up


def post(client: object, path: str, page: str, data: dict[str, object]) -> object:
    token = form_token(client, page)  # type: ignore[arg-type]
    return client.post(  # type: ignore[attr-defined]
        path, data={**data, "csrf_token": token}, base_url=HTTPS, headers=referer(page)
    )


def test_a_token_made_in_the_console_is_shown_once_used_and_revoked(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    client = signed_in(app, services)
    answer = post(client, "/admin/tokens", "/admin/tokens", {"label": "CRM", "scope": "write"})
    page = answer.get_data(as_text=True)  # type: ignore[attr-defined]
    token = re.search(r'<code id="new-token" class="mono">([^<]+)</code>', page)
    assert token, page
    api = app.test_client()
    headers = {"Authorization": f"Bearer {token.group(1)}"}
    assert api.get("/api/v1/stats", headers=headers).status_code == 200
    listing = client.get("/admin/tokens", base_url=HTTPS).get_data(as_text=True)
    assert token.group(1) not in listing
    assert clock.now.strftime("%Y-%m-%d %H:%M UTC") in listing  # last used
    with session_scope(services.sessions) as session:
        row = session.scalars(select(ApiToken)).one()
        assert row.token_hash == apitokens.digest(token.group(1))
        row_id = row.id
    post(client, f"/admin/tokens/{row_id}/revoke", "/admin/tokens", {})
    assert api.get("/api/v1/stats", headers=headers).status_code == 401
    with session_scope(services.sessions) as session:
        actions = session.scalars(select(AuditEntry.action)).all()
    assert actions == ["create-token", "revoke-token"]
    refused = post(client, "/admin/tokens", "/admin/tokens", {"label": "", "scope": "write"})
    assert refused.status_code == 400  # type: ignore[attr-defined]


def test_the_cli_prints_a_token_once(app: Flask, services: Services) -> None:
    add_operator(services)
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["admin", "token", "nightly export", "--operator", OPERATOR, "--scope", "read"]
    )
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert token.startswith(apitokens.PREFIX)
    client = app.test_client()
    assert (
        client.get("/api/v1/stats", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )
    unknown = runner.invoke(args=["admin", "token", "x", "--operator", "nobody@onward.test"])
    assert unknown.exit_code != 0 and "no operator" in unknown.output


def test_webhook_endpoints_their_attempt_log_and_the_disabled_notice(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    client = signed_in(app, services)
    answer = post(
        client,
        "/admin/webhooks",
        "/admin/webhooks",
        {"url": "http://127.0.0.1:9/hooks", "events": ["subscribed", "paused"]},
    )
    assert answer.status_code == 302  # type: ignore[attr-defined]
    with session_scope(services.sessions) as session:
        endpoint = session.scalars(select(WebhookEndpoint)).one()
        assert endpoint.event_types == ["subscribed", "paused"]
        endpoint_id, secret = endpoint.id, endpoint.secret
        sign_up(session, services, "ada@example.com", clock.now)
    page = client.get(f"/admin/webhooks/{endpoint_id}", base_url=HTTPS).get_data(as_text=True)
    assert secret in page and "No attempts yet." in page
    # Port 9 (discard) refuses: every try fails until the endpoint is disabled.
    for wait in (clock.now - clock.now, *outbound.BACKOFF):
        clock.advance(wait)
        outbound.deliver_due(services.sessions, clock=services.clock)
    assert log_in(client) == 302  # a day passed: the console session idled out
    page = client.get(f"/admin/webhooks/{endpoint_id}", base_url=HTTPS).get_data(as_text=True)
    assert page.count("<td>ConnectionRefusedError") == outbound.MAX_ATTEMPTS
    assert "This endpoint is disabled" in page
    listing = client.get("/admin/webhooks", base_url=HTTPS).get_data(as_text=True)
    assert "is disabled" in listing
    post(client, f"/admin/webhooks/{endpoint_id}/enable", f"/admin/webhooks/{endpoint_id}", {})
    page = client.get(f"/admin/webhooks/{endpoint_id}", base_url=HTTPS).get_data(as_text=True)
    assert "This endpoint is disabled" not in page
    bad = post(
        client, "/admin/webhooks", "/admin/webhooks", {"url": "ftp://x", "events": ["paused"]}
    )
    assert bad.status_code == 400  # type: ignore[attr-defined]
