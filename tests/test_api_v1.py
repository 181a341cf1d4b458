"""The admin API at /api/v1: tokens (hashed, scoped, revocable), subscribers, actions, figures."""

from __future__ import annotations

import base64
from datetime import timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app import apitokens
from app.db import session_scope
from app.models import ApiToken, AuditEntry, Subscriber, SubscriberStatus
from app.services import Services
from tests.admin_support import OPERATOR, TOTAL_STEPS, add_operator, seed_course
from tests.support import FakeClock, SmtpSink, run_worker

S = SubscriberStatus


def make_token(services: Services, scope: str = "write", label: str = "crm") -> str:
    with session_scope(services.sessions) as session:
        _row, token = apitokens.create_token(
            session, label, scope, operator_email=OPERATOR, now=services.clock()
        )
    return token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: object, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)  # type: ignore[attr-defined]
    body = response.get_json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_tokens_are_stored_hashed_and_marked_when_used(
    client: FlaskClient, services: Services, clock: FakeClock
) -> None:
    token = make_token(services, "read")
    with session_scope(services.sessions) as session:
        row = session.scalars(select(ApiToken)).one()
        assert row.token_hash == apitokens.digest(token)
        assert token not in (row.token_hash, row.label)
        assert row.last_used_at is None
    clock.advance(timedelta(minutes=5))
    assert client.get("/api/v1/stats", headers=auth(token)).status_code == 200
    with session_scope(services.sessions) as session:
        assert session.scalars(select(ApiToken)).one().last_used_at == clock.now


def test_no_token_a_bad_token_or_a_revoked_one_is_refused(
    client: FlaskClient, services: Services
) -> None:
    token = make_token(services)
    for headers in ({}, {"Authorization": "Basic abc"}, auth("onw_wrong")):
        response = client.get("/api/v1/subscribers", headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/api/v1/subscribers", headers=auth(token)).status_code == 200
    with session_scope(services.sessions) as session:
        row_id = session.scalars(select(ApiToken.id)).one()
        assert apitokens.revoke(session, row_id, now=services.clock())
    assert_error(client.get("/api/v1/subscribers", headers=auth(token)), 401, "unauthorized")


def test_a_read_token_cannot_change_anything(
    client: FlaskClient, services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 6, now=clock.now)
    token = make_token(services, "read")
    assert client.get("/api/v1/subscribers/1", headers=auth(token)).status_code == 200
    for method, path in (
        ("post", "/api/v1/subscribers/1/pause"),
        ("delete", "/api/v1/subscribers/1"),
        ("post", "/api/v1/subscribers"),
    ):
        response = getattr(client, method)(path, headers=auth(token), json={"email": "a@b.test"})
        assert_error(response, 403, "forbidden")


def test_lists_page_with_opaque_cursors_and_search(
    client: FlaskClient, services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 12, now=clock.now)
    token = make_token(services, "read")
    seen: list[int] = []
    cursor = None
    while True:
        query = {"limit": "5", **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/v1/subscribers", query_string=query, headers=auth(token)).get_json()
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(range(1, 13), reverse=True)
    found = client.get(
        "/api/v1/subscribers",
        query_string={"q": "person1", "status": "active"},
        headers=auth(token),
    ).get_json()["items"]
    assert found and all("person1" in i["email"] and i["status"] == "active" for i in found)
    bad = base64.urlsafe_b64encode(b"nonsense").decode()
    for cursor in (bad, "!!!", "aWQ6OTk5OTk5OTk5OTk5"):
        response = client.get(
            "/api/v1/subscribers", query_string={"cursor": cursor}, headers=auth(token)
        )
        assert_error(response, 400, "invalid_cursor")
    assert_error(
        client.get("/api/v1/subscribers", query_string={"limit": "0"}, headers=auth(token)),
        400,
        "invalid_request",
    )


def test_reading_one_shows_the_timeline(
    client: FlaskClient, services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 6, now=clock.now)
        wanted = session.scalars(select(Subscriber).where(Subscriber.status == S.COMPLETED)).first()
        assert wanted is not None
        wanted_id, rows = wanted.id, len(wanted.deliveries)
    token = make_token(services, "read")
    body = client.get(f"/api/v1/subscribers/{wanted_id}", headers=auth(token)).get_json()
    assert body["status"] == "completed"
    assert body["consent"]["source"] == "form" and body["consent"]["confirmed_at"]
    assert len(body["deliveries"]) == rows > 1
    assert body["deliveries"][0]["email"] == "confirmation"
    for missing in (9999, 2**40):
        assert_error(
            client.get(f"/api/v1/subscribers/{missing}", headers=auth(token)), 404, "not_found"
        )


def test_creating_a_pending_subscriber_sends_the_confirmation(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    token = make_token(services)
    response = client.post(
        "/api/v1/subscribers", json={"email": "New@Example.com"}, headers=auth(token)
    )
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "pending" and body["email"] == "new@example.com"
    assert body["consent"]["source"] == "api" and body["consent"]["confirmed_at"] is None
    run_worker(services)
    assert [m.envelope_to for m in smtp.messages] == [["new@example.com"]]
    again = client.post(
        "/api/v1/subscribers", json={"email": "new@example.com"}, headers=auth(token)
    )
    assert again.status_code == 200 and again.get_json()["id"] == body["id"]


def test_importing_with_consent_starts_the_course(
    client: FlaskClient, services: Services, clock: FakeClock
) -> None:
    token = make_token(services)
    response = client.post(
        "/api/v1/subscribers",
        json={
            "email": "imported@example.com",
            "first_name": "Ada",
            "consent": {"given": True, "source": "crm", "at": "2026-01-05T10:00:00Z"},
        },
        headers=auth(token),
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "active" and body["next_step"] == 1
    assert body["consent"]["confirmed_at"].startswith("2026-01-05T10:00:00")
    refused = client.post(
        "/api/v1/subscribers",
        json={"email": "x@example.com", "consent": {"given": False}},
        headers=auth(token),
    )
    assert_error(refused, 400, "consent_required")
    assert_error(
        client.post("/api/v1/subscribers", json={"email": "not an address"}, headers=auth(token)),
        400,
        "invalid_email",
    )
    assert_error(
        client.post("/api/v1/subscribers", json={"mail": "x@example.com"}, headers=auth(token)),
        400,
        "invalid_request",
    )


def test_actions_are_audited_under_the_token(
    client: FlaskClient, services: Services, clock: FakeClock
) -> None:
    add_operator(services)
    token = make_token(services, label="support desk")
    with session_scope(services.sessions) as session:
        seed_course(session, 6, now=clock.now)
        active = session.scalars(select(Subscriber.id).where(Subscriber.status == S.ACTIVE)).first()
    path = f"/api/v1/subscribers/{active}"
    paused = client.post(path + "/pause", headers=auth(token)).get_json()
    assert paused == {"changed": True, "subscriber": paused["subscriber"]}
    assert paused["subscriber"]["status"] == "paused"
    assert client.post(path + "/pause", headers=auth(token)).get_json()["changed"] is False
    assert client.post(path + "/resume", headers=auth(token)).get_json()["changed"] is True
    unsubscribed = client.post(path + "/unsubscribe", headers=auth(token)).get_json()
    assert unsubscribed["subscriber"]["status"] == "unsubscribed"
    erased = client.delete(path, headers=auth(token))
    assert erased.status_code == 204 and erased.get_data() == b""
    assert_error(client.get(path, headers=auth(token)), 404, "not_found")
    with session_scope(services.sessions) as session:
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [e.action for e in entries] == ["pause", "pause", "resume", "unsubscribe", "erase"]
        assert {e.operator_email for e in entries} == {f'{OPERATOR} (API token "support desk")'}
        assert entries[1].detail.startswith("no change")


def test_stats_and_funnel(client: FlaskClient, services: Services, clock: FakeClock) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 24, now=clock.now)
    token = make_token(services, "read")
    stats = client.get("/api/v1/stats", headers=auth(token)).get_json()
    assert stats["total"] == 24 == sum(stats["subscribers"].values())
    assert stats["subscribers"]["active"] == 4
    funnel = client.get("/api/v1/funnel", headers=auth(token)).get_json()
    assert funnel["signed_up"] == 24
    assert funnel["completed"] == 4
    assert [step["number"] for step in funnel["steps"]] == list(range(1, TOTAL_STEPS + 1))


def test_the_public_sign_up_keeps_its_answers(client: FlaskClient, app: Flask) -> None:
    assert_error(client.post("/api/subscribe", data="x"), 415, "unsupported_media_type")
    assert_error(client.post("/api/subscribe", json=[1]), 400, "invalid_json")
    assert_error(client.post("/api/subscribe", json={"email": 3}), 400, "invalid_field")
    accepted = client.post("/api/subscribe", json={"email": "someone@example.com"})
    assert accepted.status_code == 202
    assert accepted.get_json()["status"] == "accepted"
