"""The operator's console: its door (sign-in, sessions, CSRF), its figures and its actions."""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from app import console, drip, operators
from app.config import Rate
from app.db import session_scope
from app.models import (
    AuditEntry,
    Consent,
    Delivery,
    DeliveryStatus,
    EmailKind,
    MailEventKind,
    OperatorSession,
    Subscriber,
    SubscriberStatus,
)
from app.sending import dispatch
from app.services import Services
from app.web.admin import auth
from tests.admin_support import (
    HTTPS,
    OPERATOR,
    PASSWORD,
    add_operator,
    form_token,
    log_in,
    post_action,
    referer,
    seed_course,
    signed_in,
)
from tests.support import TOTAL_STEPS, FakeClock, SmtpSink, active_subscriber, run_worker

S = SubscriberStatus

#: The course's size, from the course file.


def sample_url(rule: Any) -> str:
    """A URL for `rule` with a plausible value for each of its arguments."""
    values = {
        "subscriber_id": 1,
        "action": "pause",
        "name": "step-01",
        "token_id": 1,
        "endpoint_id": 1,
        "import_id": "0123abcd",
    }
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: str(values[m.group(1)]), rule.rule)


def admin_rules(app: Flask) -> list[Any]:
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("admin.")]
    assert len(rules) >= 10, "the console's pages were not found in the url map"
    return rules


# --------------------------------------------------------------------------- the door


def test_no_admin_page_answers_without_a_session(
    app: Flask, client: FlaskClient, services: Services, clock: FakeClock
) -> None:
    add_operator(services)
    with session_scope(services.sessions) as session:
        seed_course(session, 6, now=clock.now)
    tried = 0
    for rule in admin_rules(app):
        if rule.endpoint in auth.OPEN_ENDPOINTS:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for cookie in (None, "made-up-token"):
                visitor = app.test_client()
                if cookie:
                    visitor.set_cookie(auth.COOKIE, cookie, domain="onward.test", path="/admin")
                response = visitor.open(sample_url(rule), method=method, base_url=HTTPS)
                assert response.status_code == 302, (rule.rule, method)
                assert response.headers["Location"].endswith("/admin/login"), rule.rule
                assert "person" not in response.get_data(as_text=True)
                tried += 1
    assert tried >= 20
    # And nothing changed: the POST actions were refused before acting.
    with session_scope(services.sessions) as session:
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 0
        assert session.get_one(Subscriber, 1).status == S.PENDING


def test_sign_in_opens_the_console_and_sign_out_closes_it(app: Flask, services: Services) -> None:
    client = signed_in(app, services)
    overview = client.get("/admin/", base_url=HTTPS)
    assert overview.status_code == 200
    assert "Subscriptions" in overview.get_data(as_text=True)
    assert overview.headers["Cache-Control"] == "no-store"
    cookie = client.get_cookie(auth.COOKIE, domain="onward.test", path="/admin")
    assert cookie is not None
    assert cookie.secure and cookie.http_only and cookie.same_site == "Strict"
    token = cookie.value

    out = client.post(
        "/admin/logout",
        data={"csrf_token": form_token(client, "/admin/")},
        base_url=HTTPS,
        headers=referer("/admin/"),
    )
    assert out.status_code == 302 and out.headers["Location"].endswith("/admin/login")
    assert client.get("/admin/", base_url=HTTPS).status_code == 302
    # The old token is dead in the database, not only gone from the browser.
    replay = app.test_client()
    replay.set_cookie(auth.COOKIE, token, domain="onward.test", path="/admin")
    assert replay.get("/admin/", base_url=HTTPS).status_code == 302
    with session_scope(services.sessions) as session:
        assert session.scalar(select(func.count()).select_from(OperatorSession)) == 0


def test_the_database_keeps_only_a_hash_of_the_password_and_the_token(
    app: Flask, services: Services
) -> None:
    client = signed_in(app, services)
    cookie = client.get_cookie(auth.COOKIE, domain="onward.test", path="/admin")
    assert cookie is not None
    with session_scope(services.sessions) as session:
        stored = session.scalars(select(OperatorSession.token_hash)).one()
        operator_hash = session.scalars(select(operators.Operator.password_hash)).one()
    assert cookie.value not in stored
    assert operator_hash.startswith("$argon2id$") and PASSWORD not in operator_hash


def test_a_refused_sign_in_never_says_whether_the_address_exists(
    app: Flask, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_operator(services)
    verified: list[str] = []

    class CountingHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            verified.append(str(hash))
            return super().verify(hash, password)

    monkeypatch.setattr(operators, "_hasher", CountingHasher())

    def attempt(email: str) -> tuple[int, str]:
        client = app.test_client()
        response = client.post(
            "/admin/login",
            data={"email": email, "password": "not the password", "csrf_token": form_token(client)},
            base_url=HTTPS,
            headers=referer("/admin/login"),
        )
        body = re.sub(r'name="csrf_token" value="[^"]+"', "", response.get_data(as_text=True))
        return response.status_code, body.replace(email, "EMAIL")

    known = attempt(OPERATOR)
    unknown = attempt("nobody@onward.test")
    assert known[0] == unknown[0] == 401
    assert known[1] == unknown[1]
    assert auth.REFUSED in known[1]
    # The same argon2 work both times: the timing does not tell either.
    assert len(verified) == 2
    assert verified[0].startswith("$argon2id$") and verified[1].startswith("$argon2id$")


def test_sign_in_is_rate_limited_per_address_whether_it_exists_or_not(
    app: Flask, services: Services
) -> None:
    add_operator(services)
    for email in (OPERATOR, "nobody@onward.test"):
        client = app.test_client()
        for _ in range(auth.LOGIN_LIMIT_PER_ADDRESS):
            assert log_in(client, email, "wrong password!!") == 401
        # Past the limit even the right password is refused, and the page says why.
        assert log_in(client, email, PASSWORD) == 429
    # Another address is still let in.
    add_operator(services, "second@onward.test")
    assert log_in(app.test_client(), "second@onward.test", PASSWORD) == 302


def test_a_session_ends_after_the_idle_time_and_use_keeps_it_alive(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    client = signed_in(app, services)
    idle = services.settings.admin_session_idle
    assert idle == timedelta(minutes=30)
    clock.advance(idle - timedelta(minutes=1))
    assert client.get("/admin/", base_url=HTTPS).status_code == 200
    clock.advance(idle - timedelta(minutes=1))
    assert client.get("/admin/funnel", base_url=HTTPS).status_code == 200
    clock.advance(idle + timedelta(seconds=1))
    expired = client.get("/admin/", base_url=HTTPS)
    assert expired.status_code == 302 and expired.headers["Location"].endswith("/admin/login")
    with session_scope(services.sessions) as session:
        assert session.scalar(select(func.count()).select_from(OperatorSession)) == 0


def test_actions_need_a_csrf_token(app: Flask, services: Services, clock: FakeClock) -> None:
    client = signed_in(app, services)
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    for data in ({}, {"csrf_token": "forged"}):
        response = client.post(
            f"/admin/subscribers/{subscriber_id}/unsubscribe",
            data=data,
            base_url=HTTPS,
            headers=referer(f"/admin/subscribers/{subscriber_id}"),
        )
        assert response.status_code == 400
    with session_scope(services.sessions) as session:
        assert session.get_one(Subscriber, subscriber_id).status == S.ACTIVE
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 0


# --------------------------------------------------------------------------- actions


def test_each_action_goes_through_the_course_rules_and_is_audited(
    app: Flask, services: Services, clock: FakeClock, smtp: SmtpSink
) -> None:
    client = signed_in(app, services)
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    with session_scope(services.sessions) as session:
        # Step 1 went out yesterday: step 2 is due tomorrow.
        subscriber = session.get_one(Subscriber, subscriber_id)
        subscriber.next_step = 2
        subscriber.next_send_at = clock.now + timedelta(days=1)

    assert post_action(client, subscriber_id, "send-now") == 302
    run_worker(services)
    assert [m.subject for m in smtp.to("ada@example.com")], "step 2 was not sent"
    assert post_action(client, subscriber_id, "pause") == 302
    assert post_action(client, subscriber_id, "pause") == 302  # a second time: no change
    assert post_action(client, subscriber_id, "resume") == 302
    assert post_action(client, subscriber_id, "unsubscribe") == 302

    page = client.get(f"/admin/subscribers/{subscriber_id}", base_url=HTTPS).get_data(as_text=True)
    assert "unsubscribed" in page and "ops@onward.test, pause" in page
    with session_scope(services.sessions) as session:
        subscriber = session.get_one(Subscriber, subscriber_id)
        assert subscriber.status == S.UNSUBSCRIBED and subscriber.next_step == 3
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [e.action for e in entries] == [
            "send-now",
            "pause",
            "pause",
            "resume",
            "unsubscribe",
        ]
        assert {e.operator_email for e in entries} == {OPERATOR}
        assert entries[2].detail.startswith("no change")

    assert post_action(client, subscriber_id, "erase") == 302
    with session_scope(services.sessions) as session:
        assert session.get(Subscriber, subscriber_id) is None
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
        erase = session.scalars(select(AuditEntry).where(AuditEntry.action == "erase")).one()
        assert erase.subscriber_id == subscriber_id and erase.operator_email == OPERATOR
        assert "ada@example.com" not in erase.detail
    assert client.get(f"/admin/subscribers/{subscriber_id}", base_url=HTTPS).status_code == 404


def test_an_unknown_action_or_subscriber_is_a_404(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    client = signed_in(app, services)
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    token = form_token(client, "/admin/")
    for path in (
        f"/admin/subscribers/{subscriber_id}/delete-everything",
        "/admin/subscribers/999/pause",
    ):
        answer = client.post(
            path, data={"csrf_token": token}, base_url=HTTPS, headers=referer("/admin/")
        )
        assert answer.status_code == 404


# --------------------------------------------------------------------------- figures


def expected_funnel(services: Services) -> dict[str, Any]:
    """The funnel counted the slow way: one subscription at a time."""
    reached: Counter[int] = Counter()
    paused: Counter[int] = Counter()
    unsubscribed: Counter[int] = Counter()
    bounced: Counter[int] = Counter()
    completed = confirmed = 0
    with session_scope(services.sessions) as session:
        for subscriber in session.scalars(select(Subscriber)):
            received = (
                TOTAL_STEPS
                if subscriber.status == S.COMPLETED
                else max(0, min(subscriber.next_step - 1, TOTAL_STEPS))
            )
            for number in range(1, received + 1):
                reached[number] += 1
            if subscriber.status == S.PAUSED:
                paused[received] += 1
            if subscriber.status == S.UNSUBSCRIBED:
                unsubscribed[received] += 1
            completed += subscriber.status == S.COMPLETED
            confirmed += subscriber.consent.confirmed_at is not None
        for delivery in session.scalars(
            select(Delivery).where(Delivery.status == DeliveryStatus.FAILED)
        ):
            bounced[delivery.number if delivery.kind == EmailKind.STEP else 0] += 1
    return {
        "reached": reached,
        "paused": paused,
        "unsubscribed": unsubscribed,
        "bounced": bounced,
        "completed": completed,
        "confirmed": confirmed,
    }


def test_the_funnel_equals_what_the_database_holds(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 1000, now=clock.now)
    expected = expected_funnel(services)
    with session_scope(services.sessions) as session:
        funnel = console.funnel(session, services.course.step_count)
        statuses = console.status_counts(session)
    assert funnel.signed_up == 1000 == sum(statuses.values())
    assert all(count > 0 for count in statuses.values()), "seed every status"
    assert funnel.confirmed == expected["confirmed"]
    assert funnel.completed == expected["completed"] == statuses[S.COMPLETED]
    assert funnel.unsubscribed_before_step_1 == expected["unsubscribed"][0]
    assert funnel.bounced_at_confirmation == expected["bounced"][0]
    for step in funnel.steps:
        n = step.number
        assert step.reached == expected["reached"][n], f"reached step {n}"
        assert step.paused_after == expected["paused"][n], f"paused after {n}"
        assert step.unsubscribed_after == expected["unsubscribed"][n], f"unsubscribed after {n}"
        assert step.bounced_at == expected["bounced"][n], f"bounced at {n}"
    assert sum(s.bounced_at for s in funnel.steps) > 0 and funnel.bounced_at_confirmation > 0
    assert funnel.completion_rate == pytest.approx(expected["completed"] / expected["reached"][1])

    # The page shows the same numbers, in its table.
    client = signed_in(app, services)
    page = client.get("/admin/funnel", base_url=HTTPS).get_data(as_text=True)
    rows = re.findall(
        r"Step (\d+)</a></th>\s*" + r"\s*".join([r'<td class="num">([\d,]+)</td>'] * 4), page
    )
    assert len(rows) == TOTAL_STEPS
    for number, reached, paused, unsubscribed, bounced in rows:
        n = int(number)
        assert [int(x.replace(",", "")) for x in (reached, paused, unsubscribed, bounced)] == [
            expected["reached"][n],
            expected["paused"][n],
            expected["unsubscribed"][n],
            expected["bounced"][n],
        ]
    assert "<svg" in page and "<title id=" in page


def test_the_overview_counts_by_status_per_day_and_what_is_due(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 300, now=clock.now)
    now = clock.now
    with session_scope(services.sessions) as session:
        per_day = dict(console.sent_per_day(session, now=now))
        sent = session.scalars(
            select(Delivery.sent_at).where(Delivery.status == DeliveryStatus.SENT)
        ).all()
        due = console.due(session, now=now)
        waiting = session.scalars(
            select(Subscriber.next_send_at).where(
                Subscriber.status.in_((S.ACTIVE, S.PENDING)), Subscriber.next_send_at.is_not(None)
            )
        ).all()
        deliveries = console.delivery_counts(session)
    first = (now - timedelta(days=29)).date()
    counted = Counter(at.date() for at in sent if at is not None and at.date() >= first)
    assert len(per_day) == 30 and min(per_day) == first and max(per_day) == now.date()
    assert per_day == {day: counted.get(day, 0) for day in per_day}
    assert sum(per_day.values()) > 0
    assert due.overdue == sum(1 for at in waiting if at <= now)
    assert due.next_24h == sum(1 for at in waiting if now < at <= now + timedelta(days=1))
    assert deliveries[DeliveryStatus.FAILED] > 0 and deliveries[DeliveryStatus.DEFERRED] > 0

    client = signed_in(app, services)
    page = client.get("/admin/", base_url=HTTPS).get_data(as_text=True)
    assert (
        f'<th scope="row">{now.date().isoformat()}</th><td class="num">{per_day[now.date()]}'
        in page
    )
    assert "<dd>Closed: sending</dd>" in page
    assert "Unlimited (SEND_RATE is not set)" in page
    assert "<dt>Complaints, last 7 days</dt><dd>0 (0.00 % of emails sent)</dd>" in page

    # A feedback-loop report: counted on the overview against the emails sent.
    with session_scope(services.sessions) as session:
        address = session.scalars(
            select(Subscriber.email).where(Subscriber.status == S.ACTIVE)
        ).first()
        assert address is not None
        report = drip.Report(
            source="arf",
            event_id="complaint-1",
            kind=MailEventKind.COMPLAINT,
            occurred_at=now,
            recipient=address,
        )
        drip.apply_report(
            session, report, keys=services.mailbox_keys, policy=services.policy, now=now
        )
        figures = drip.hygiene_counts(session, now=now)
    assert figures.complaints == 1 and figures.sent > 0
    # The overview shows its counted copy until CONSOLE_CACHE has passed...
    page = client.get("/admin/", base_url=HTTPS).get_data(as_text=True)
    assert "<dt>Complaints, last 7 days</dt><dd>0 (0.00 % of emails sent)</dd>" in page
    # ...then counts again.
    clock.advance(services.settings.console_cache)
    page = client.get("/admin/", base_url=HTTPS).get_data(as_text=True)
    rate = "%.2f" % (100 / figures.sent)
    assert f"<dt>Complaints, last 7 days</dt><dd>1 ({rate} % of emails sent" in page


def test_search_finds_addresses_and_pages_by_status(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 120, now=clock.now)
    client = signed_in(app, services)
    exact = client.get("/admin/subscribers?q=Person7@example.com", base_url=HTTPS)
    assert ">person7@example.com</a>" in exact.get_data(as_text=True)
    assert "1 subscription " in exact.get_data(as_text=True)
    fragment = client.get("/admin/subscribers?q=person11", base_url=HTTPS).get_data(as_text=True)
    assert set(re.findall(r">(person\d+)@example.com</a>", fragment)) == {
        "person11",
        *(f"person11{d}" for d in range(10)),
    }
    # Wildcards are literal: "%" finds nothing.
    assert "0 subscriptions" in client.get("/admin/subscribers?q=%25", base_url=HTTPS).get_data(
        as_text=True
    )
    active = client.get("/admin/subscribers?status=active", base_url=HTTPS).get_data(as_text=True)
    assert "20 subscriptions (active)" in active
    everyone = client.get("/admin/subscribers?page=3", base_url=HTTPS).get_data(as_text=True)
    assert "Page 3 of 3" in everyone and len(re.findall(r"@example.com</a>", everyone)) == 20


def test_the_timeline_shows_consent_and_every_email(
    app: Flask, services: Services, clock: FakeClock, smtp: SmtpSink
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    smtp.refuse["ada@example.com"] = (450, "4.2.1 mailbox busy")
    from app.sending import dispatch

    dispatch(services, now=clock.now)
    run_worker(services)
    client = signed_in(app, services)
    page = client.get(f"/admin/subscribers/{subscriber_id}", base_url=HTTPS).get_data(as_text=True)
    with session_scope(services.sessions) as session:
        delivery = session.scalars(select(Delivery)).one()
        consent = session.scalars(select(Consent)).one()
    assert consent.wording in page and "192.0.2.1" in page
    assert delivery.message_id.replace("<", "&lt;").replace(">", "&gt;") in page
    assert "deferred" in page and "4.2.1 mailbox busy (recipient temporary)" in page


def test_problems_group_errors_and_name_templates_that_fail_to_render(
    app: Flask, services: Services, clock: FakeClock, tmp_path: Path
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 60, now=clock.now)
    client = signed_in(app, services)
    page = client.get("/admin/problems", base_url=HTTPS).get_data(as_text=True)
    with session_scope(services.sessions) as session:
        failed = session.scalar(
            select(func.count()).where(Delivery.status == DeliveryStatus.FAILED)
        )
    error = "recipient refused: 550 5.1.1 no"
    assert (
        f'<td>failed</td><td>recipient permanent</td><td>{error}</td><td class="num">{failed}</td>'
        in page
    )
    assert "Every email renders." in page

    # A template that refers to a value no email has fails at render time.
    emails = tmp_path / "emails"
    emails.mkdir()
    for source in services.settings.emails_dir.iterdir():  # course.toml and the templates
        if not source.is_file():
            continue
        text = source.read_text()
        if source.name == "step-03.mjml":
            text = text.replace("</mj-text>", "{{ no_such_value }}</mj-text>", 1)
        (emails / source.name).write_text(text)
    services.settings = services.settings.with_changes(emails_dir=emails)
    for cached in ("catalog", "course"):
        services.__dict__.pop(cached, None)
    page = client.get("/admin/problems", base_url=HTTPS).get_data(as_text=True)
    assert "<strong>step-03</strong>: UndefinedError" in page


def test_the_emails_page_shows_each_step_with_its_figures(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 60, now=clock.now)
        sent_step_1 = session.scalar(
            select(func.count()).where(
                Delivery.kind == EmailKind.STEP,
                Delivery.number == 1,
                Delivery.status == DeliveryStatus.SENT,
            )
        )
    client = signed_in(app, services)
    listing = client.get("/admin/emails", base_url=HTTPS).get_data(as_text=True)
    assert all(f">step-{n:02d}</a>" in listing for n in range(1, TOTAL_STEPS + 1))
    page = client.get("/admin/emails/step-01", base_url=HTTPS).get_data(as_text=True)
    assert f"<dt>Sent</dt><dd>{sent_step_1}</dd>" in page
    assert "Ada" in page  # the text part, as the sample subscriber gets it
    html = client.get("/admin/emails/step-01/html", base_url=HTTPS)
    assert html.status_code == 200 and "<html" in html.get_data(as_text=True)
    assert "sandbox" in html.headers["Content-Security-Policy"]
    assert client.get("/admin/emails/no-such", base_url=HTTPS).status_code == 404


def test_an_open_breaker_and_classified_failures_show_on_the_overview_problems_and_metrics(
    app: Flask, services: Services, clock: FakeClock, smtp: SmtpSink
) -> None:
    services.settings = services.settings.with_changes(
        send_rate=Rate(20, 1), metrics_token="s3cret-token"
    )
    gone = active_subscriber(services, "gone@example.com", clock.now)
    smtp.refuse["gone@example.com"] = (550, "5.1.1 no such mailbox")
    dispatch(services, now=clock.now)
    run_worker(services)
    # Then the relay refuses our sender: the breaker opens and nobody bounces.
    smtp.answers["data"] = "554 5.7.1 Message rejected: Email address is not verified"
    waiting = [active_subscriber(services, f"p{n}@example.com", clock.now) for n in range(3)]
    dispatch(services, now=clock.now)
    run_worker(services)
    with session_scope(services.sessions) as session:
        assert session.get_one(Subscriber, gone).status == S.BOUNCED
        assert {session.get_one(Subscriber, i).status for i in waiting} == {S.ACTIVE}
    assert services.breaker.state().open

    client = signed_in(app, services)
    overview = client.get("/admin/", base_url=HTTPS).get_data(as_text=True)
    assert "<strong>Open: sending stopped</strong>" in overview and "not verified" in overview
    assert "20 emails/s of SEND_RATE 20/s" in overview
    problems = client.get("/admin/problems", base_url=HTTPS).get_data(as_text=True)
    assert "<strong>Sending is stopped</strong>" in problems
    assert (
        "<td>failed</td><td>recipient permanent</td>"
        "<td>recipient refused: 550 5.1.1 no such mailbox</td>" in problems
    )
    # The refusal comes after DATA: the three emails of the wave in flight (one per
    # SMTP connection) are each refused, and wait.
    assert (
        "<td>deferred</td><td>sender</td><td>message refused: 554 5.7.1 Message rejected: "
        'Email address is not verified</td><td class="num">3</td>' in problems
    )
    assert f'href="/admin/subscribers/{gone}">#{gone}</a>' in problems

    response = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    assert families["onward_relay_breaker_open"].samples[0].value == 1
    assert families["onward_send_rate_limit_per_second"].samples[0].value == 20
    assert families["onward_send_rate_factor"].samples[0].value == 1
    assert families["onward_send_rate_per_second"].samples[0].value == 0  # none accepted
    by_class = {
        (s.labels["status"], s.labels["failure_class"]): s.value
        for s in families["onward_problem_emails"].samples
    }
    assert by_class == {("failed", "recipient_permanent"): 1, ("deferred", "sender"): 3}


# --------------------------------------------------------------------------- CLI and metrics


def test_flask_admin_create_makes_an_operator_who_can_sign_in(
    app: Flask, services: Services
) -> None:
    runner = app.test_cli_runner()
    made = runner.invoke(
        args=["admin", "create", "Boss@Onward.test", "--password-stdin"], input=PASSWORD + "\n"
    )
    assert made.exit_code == 0, made.output
    assert "operator boss@onward.test created" in made.output
    again = runner.invoke(
        args=["admin", "create", "boss@onward.test", "--password-stdin"], input=PASSWORD + "\n"
    )
    assert again.exit_code == 1 and "already exists" in again.output
    short = runner.invoke(
        args=["admin", "create", "x@onward.test", "--password-stdin"], input="short\n"
    )
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    prompted = runner.invoke(
        args=["admin", "create", "third@onward.test"], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert prompted.exit_code == 0, prompted.output
    assert log_in(app.test_client(), "boss@onward.test", PASSWORD) == 302


def test_metrics_are_off_without_a_token_and_refuse_a_wrong_one(
    app: Flask, services: Services
) -> None:
    client = app.test_client()
    assert client.get("/metrics").status_code == 404
    services.settings = services.settings.with_changes(metrics_token="s3cret-token")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_metrics_parse_with_the_prometheus_parser_and_match_the_database(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 90, now=clock.now)
        statuses = console.status_counts(session)
        ledger = dict(
            session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
        )
    from app.ticks import record_tick

    record_tick(services, 0.25)
    services.settings = services.settings.with_changes(metrics_token="s3cret-token")
    response = app.test_client().get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    subscriptions = {s.labels["status"]: s.value for s in families["onward_subscriptions"].samples}
    assert subscriptions == {str(k): float(v) for k, v in statuses.items()}
    emails = {s.labels["outcome"]: s.value for s in families["onward_emails"].samples}
    assert emails == {str(k): float(ledger.get(k, 0)) for k in DeliveryStatus}
    assert sum(emails.values()) > 0
    assert families["onward_queue_depth"].samples[0].value == 0
    assert families["onward_tick_duration_seconds"].samples[0].value == 0.25
