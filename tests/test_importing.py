"""Getting subscribers in and out: `flask subscribers import/export` and the console's forms."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from flask import Flask
from sqlalchemy import func, select

from app import outbound, store
from app.db import session_scope
from app.importing import COLUMNS
from app.models import Consent, Subscriber, SubscriberStatus, SuppressionReason, WebhookEvent
from app.sending import dispatch
from app.services import Services
from tests.admin_support import HTTPS, form_token, referer, seed_course, signed_in
from tests.support import SmtpSink, run_worker

S = SubscriberStatus


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as target:
        writer = csv.writer(target)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def run(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result.output


def subscriptions(services: Services) -> list[tuple[object, ...]]:
    """Every subscription and its consent, as comparable tuples (ids and keys left out)."""
    with session_scope(services.sessions) as session:
        rows = session.execute(
            select(Subscriber, Consent).join(Consent).order_by(Subscriber.email, Subscriber.status)
        )
        return [
            (
                s.email,
                s.first_name,
                s.time_zone,
                s.status,
                s.next_step,
                s.created_at,
                c.source,
                c.ip,
                c.requested_at,
                c.confirmed_at,
            )
            for s, c in rows
        ]


def count(services: Services) -> int:
    with session_scope(services.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(Subscriber)) or 0)


def test_round_trip_export_then_import_into_a_fresh_database(
    app: Flask, services: Services, tmp_path: Path
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 40, now=services.clock())
        session.execute(
            Subscriber.__table__.update()
            .where(Subscriber.id % 3 == 0)
            .values(first_name='Zoë, "the" one', time_zone="Europe/Paris")
        )
    before = subscriptions(services)
    exported = tmp_path / "out.csv"
    run(app, "subscribers", "export", "--output", str(exported))
    header = exported.read_text().splitlines()[0]
    assert header.split(",") == list(COLUMNS)

    with session_scope(services.sessions) as session:
        session.execute(Subscriber.__table__.delete())
    assert count(services) == 0
    output = run(app, "subscribers", "import", str(exported), "--consent", "moved from Onward")

    assert "40 imported" in output
    assert subscriptions(services) == before
    with session_scope(services.sessions) as session:
        wordings = set(session.scalars(select(Consent.wording)))
    assert wordings == {"seeded\nmoved from Onward"}


def test_a_second_import_changes_nothing(app: Flask, services: Services, tmp_path: Path) -> None:
    file = write_csv(
        tmp_path / "people.csv",
        ["time_zone", "email", "first_name"],
        [["Europe/London", f"Person{n}@Example.com", f"P{n}"] for n in range(25)],
    )
    first = run(app, "subscribers", "import", str(file))
    assert "25 imported (25 pending)" in first
    before = subscriptions(services)
    second = run(app, "subscribers", "import", str(file))
    assert "0 imported" in second
    assert "25 already subscribed" in second
    assert subscriptions(services) == before
    assert before[0][0] == "person0@example.com"


def test_dry_run_reports_each_problem_with_its_line(
    app: Flask, services: Services, tmp_path: Path
) -> None:
    with session_scope(services.sessions) as session:
        store.suppress(
            session,
            services.mailbox_keys.hash("gone@example.com"),
            SuppressionReason.COMPLAINED,
            now=services.clock(),
        )
    file = write_csv(
        tmp_path / "people.csv",
        ["email", "time_zone"],
        [
            ["fine@example.com", ""],  # line 2
            ["not an address", ""],  # line 3
            ["FINE@example.com", ""],  # line 4
            ["Gone+news@example.com", ""],  # line 5: another spelling of a suppressed mailbox
            ["zone@example.com", "Mars/Olympus"],  # line 6
        ],
    )
    output = run(app, "subscribers", "import", "--dry-run", str(file))

    assert "line 3: invalid address" in output
    assert "line 4: duplicate: fine@example.com" in output
    assert "line 5: suppressed: gone+news@example.com" in output
    assert "line 6: unknown time zone: zone@example.com: 'Mars/Olympus'" in output
    assert "1 would be imported (1 pending)" in output
    assert count(services) == 0


def test_suppressed_addresses_are_never_imported_as_active(
    app: Flask, services: Services, tmp_path: Path
) -> None:
    with session_scope(services.sessions) as session:
        store.suppress(
            session,
            services.mailbox_keys.hash("gone@example.com"),
            SuppressionReason.UNSUBSCRIBED,
            now=services.clock(),
        )
    file = write_csv(
        tmp_path / "people.csv",
        ["email", "status", "step"],
        [["gone@example.com", "active", "3"], ["kept@example.com", "active", "3"]],
    )
    output = run(app, "subscribers", "import", str(file), "--consent", "at the conference")
    assert "line 2: suppressed" in output
    with session_scope(services.sessions) as session:
        found = session.execute(select(Subscriber.email, Subscriber.status)).all()
    assert found == [("kept@example.com", S.ACTIVE)]


def test_pending_imports_get_the_confirmation_email(
    app: Flask, services: Services, smtp: SmtpSink, tmp_path: Path
) -> None:
    file = write_csv(
        tmp_path / "people.csv",
        ["email", "first_name", "status"],
        [["ada@example.com", "Ada", "active"], ["grace@example.com", "Grace", ""]],
    )
    run(app, "subscribers", "import", str(file))
    assert dispatch(services, now=services.clock()) == 2
    run_worker(services)

    assert sorted(m.envelope_to[0] for m in smtp.messages) == [
        "ada@example.com",
        "grace@example.com",
    ]
    confirm_link = smtp.to("ada@example.com")[0].link("confirm")
    assert confirm_link.startswith("https://onward.test/confirm/")
    with session_scope(services.sessions) as session:
        statuses = set(session.scalars(select(Subscriber.status)))
        consent = session.scalars(select(Consent)).first()
    assert statuses == {S.PENDING}
    assert consent is not None and consent.source == "import" and consent.confirmed_at is None


def test_consent_is_recorded_and_the_files_status_and_step_apply(
    app: Flask, services: Services, smtp: SmtpSink, tmp_path: Path
) -> None:
    file = write_csv(
        tmp_path / "people.csv",
        ["email", "status", "step"],
        [["ada@example.com", "", ""], ["grace@example.com", "paused", "4"]],
    )
    run(app, "subscribers", "import", str(file), "--consent", "paper form, London meetup")
    with session_scope(services.sessions) as session:
        rows = session.execute(
            select(Subscriber.email, Subscriber.status, Subscriber.next_step, Consent.wording)
            .join(Consent)
            .order_by(Subscriber.email)
        ).all()
    assert rows == [
        ("ada@example.com", S.ACTIVE, 1, "paper form, London meetup"),
        ("grace@example.com", S.PAUSED, 4, "paper form, London meetup"),
    ]
    dispatch(services, now=services.clock())
    run_worker(services)
    # Ada agreed already: no confirmation, step 1 at once.
    [step_one] = smtp.to("ada@example.com")
    assert step_one.subject == services.course.steps[0].subject
    assert "/confirm/" not in step_one.text
    assert smtp.to("grace@example.com") == []


def test_export_filters_by_status_and_step(app: Flask, services: Services) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 30, now=services.clock())
    output = run(app, "subscribers", "export", "--status", "active", "--step", "1")
    rows = list(csv.DictReader(io.StringIO(output)))
    with session_scope(services.sessions) as session:
        expected = session.scalars(
            select(Subscriber.email)
            .where(Subscriber.status == S.ACTIVE, Subscriber.next_step == 1)
            .order_by(Subscriber.id)
        ).all()
    assert [row["email"] for row in rows] == expected
    assert {row["status"] for row in rows} <= {"active"}


def test_a_file_without_an_email_column_is_refused(
    app: Flask, services: Services, tmp_path: Path
) -> None:
    file = write_csv(tmp_path / "people.csv", ["mail", "name"], [["a@example.com", "A"]])
    result = app.test_cli_runner().invoke(args=["subscribers", "import", str(file)])
    assert result.exit_code == 1
    assert "Unknown column 'mail'" in result.output
    assert count(services) == 0


def test_console_upload_progress_page_and_export(
    app: Flask, services: Services, smtp: SmtpSink
) -> None:
    client = signed_in(app, services)
    data = "email,first_name\nada@example.com,Ada\nnot-an-address,X\n"
    response = client.post(
        "/admin/imports",
        data={
            "csrf_token": form_token(client, "/admin/imports"),
            "file": (io.BytesIO(data.encode()), "people.csv"),
            "consent": "",
        },
        content_type="multipart/form-data",
        base_url=HTTPS,
        headers=referer("/admin/imports"),
    )
    assert response.status_code == 303
    progress_url = response.headers["Location"]
    waiting = client.get(progress_url, base_url=HTTPS).get_data(as_text=True)
    assert '<meta http-equiv="refresh"' in waiting
    assert "<script" not in waiting

    run_worker(services)
    done = client.get(progress_url, base_url=HTTPS).get_data(as_text=True)
    assert 'http-equiv="refresh"' not in done
    assert "1 imported (1 pending)" in done
    assert "line 3: invalid address" in done
    with session_scope(services.sessions) as session:
        assert session.scalars(select(Subscriber.email)).all() == ["ada@example.com"]

    exported = client.get("/admin/export?status=pending", base_url=HTTPS)
    assert exported.status_code == 200
    assert exported.mimetype == "text/csv"
    assert "attachment" in exported.headers["Content-Disposition"]
    lines = exported.get_data(as_text=True).splitlines()
    assert lines[0] == ",".join(COLUMNS) and lines[1].startswith("ada@example.com,Ada,")


def test_console_import_and_export_need_a_session(app: Flask, services: Services) -> None:
    client = app.test_client()
    for path in ("/admin/imports", "/admin/export", "/admin/imports/abc"):
        response = client.get(path, base_url=HTTPS)
        assert response.status_code == 302
        assert "/admin/login" in response.headers["Location"]
    refused = client.post(
        "/admin/imports",
        data={"file": (io.BytesIO(b"email\na@example.com\n"), "a.csv")},
        content_type="multipart/form-data",
        base_url=HTTPS,
    )
    assert refused.status_code in (302, 400)
    assert count(services) == 0


def test_imported_people_reach_webhook_endpoints_as_subscribed(
    app: Flask, services: Services, tmp_path: Path
) -> None:
    with session_scope(services.sessions) as session:
        outbound.create_endpoint(
            session, "https://crm.example/hook", ["subscribed"], now=services.clock()
        )
    people = write_csv(
        tmp_path / "people.csv", ["email"], [["ada@example.com"], ["bo@example.com"]]
    )
    run(app, "subscribers", "import", str(people))
    with session_scope(services.sessions) as session:
        events = session.scalars(select(WebhookEvent).order_by(WebhookEvent.id)).all()
        bodies = [json.loads(event.payload) for event in events]
        ids = {
            email: subscriber_id
            for email, subscriber_id in session.execute(select(Subscriber.email, Subscriber.id))
        }
    assert [(b["type"], b["data"]["email"], b["data"]["status"]) for b in bodies] == [
        ("subscribed", "ada@example.com", "pending"),
        ("subscribed", "bo@example.com", "pending"),
    ]
    assert [b["data"]["subscriber_id"] for b in bodies] == [
        ids["ada@example.com"],
        ids["bo@example.com"],
    ]
    # A second import adds nobody, and so tells nobody.
    run(app, "subscribers", "import", str(people))
    assert count_events(services) == 2


def count_events(services: Services) -> int:
    with session_scope(services.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(WebhookEvent)) or 0)
