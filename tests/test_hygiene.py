"""The suppression list and the per-mailbox confirmation cap, end to end over real SMTP."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text

from app import drip, ratelimit
from app.config import ConfigError, Rate, Settings
from app.db import session_scope
from app.mailbox import MailboxKeys, canonical_mailbox
from app.models import MailEvent, MailEventKind, Subscriber, SubscriberStatus, Suppression
from app.services import Services
from tests.support import FakeClock, SmtpSink, active_subscriber, run_worker, sign_up
from worker.schedule import tick

S = SubscriberStatus


@pytest.mark.parametrize(
    ("spelling", "mailbox"),
    [
        ("Victim@Example.com", "victim@example.com"),
        ("victim+1@example.com", "victim@example.com"),
        ("victim+a+b@example.com", "victim@example.com"),
        ("v.i.c.t.i.m@gmail.com", "victim@gmail.com"),
        ("Vic.Tim+news@GoogleMail.com", "victim@gmail.com"),
        # Most providers do not ignore dots: these are different people.
        ("v.ictim@example.com", "v.ictim@example.com"),
    ],
)
def test_spellings_of_one_mailbox_normalise_to_it(spelling: str, mailbox: str) -> None:
    assert canonical_mailbox(spelling) == mailbox


def test_mailbox_hashes_are_keyed_by_the_secret() -> None:
    one, other = MailboxKeys("secret-one"), MailboxKeys("secret-two")
    assert one.hash("a.da+x@gmail.com") == one.hash("ada@googlemail.com")
    assert one.hash("ada@gmail.com") != other.hash("ada@gmail.com")
    assert "ada" not in one.hash("ada@gmail.com")


def deliver(services: Services) -> None:
    tick(services)
    run_worker(services)


def sign_up_many(services: Services, addresses: list[str], clock: FakeClock) -> None:
    for address in addresses:
        with session_scope(services.sessions) as session:
            sign_up(session, services, address, clock.now)


def test_plus_tags_share_one_daily_cap(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    cap = services.policy.confirmations_per_day
    sign_up_many(services, [f"victim+{n}@example.com" for n in range(1, 21)], clock)
    deliver(services)
    assert len(smtp.messages) == cap
    # Tomorrow the same spellings may ask again: at most `cap` more.
    clock.advance(timedelta(days=1))
    sign_up_many(services, [f"victim+{n}@example.com" for n in range(21, 41)], clock)
    deliver(services)
    assert len(smtp.messages) == 2 * cap


def test_dots_count_as_one_mailbox_where_the_provider_ignores_them(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    gmail = [
        "victim@gmail.com",
        "v.ictim@gmail.com",
        "vi.ctim@googlemail.com",
        "V.I.C.T.I.M@gmail.com",
    ]
    elsewhere = ["victim@example.org", "v.ictim@example.org"]
    sign_up_many(services, gmail + elsewhere, clock)
    deliver(services)
    received = sorted(m.envelope_to[0] for m in smtp.messages)
    assert sum(address.endswith(("gmail.com", "googlemail.com")) for address in received) == 3
    assert [a for a in received if a.endswith("example.org")] == sorted(elsewhere)


def test_the_cap_is_a_setting(services: Services, smtp: SmtpSink, clock: FakeClock) -> None:
    services.policy = replace(services.policy, confirmations_per_day=1)  # type: ignore[misc]
    sign_up_many(services, ["ada+1@example.com", "ada+2@example.com"], clock)
    deliver(services)
    assert len(smtp.messages) == 1


def manage_path(services: Services, email: str) -> str:
    with session_scope(services.sessions) as session:
        subscriber = session.scalars(
            select(Subscriber).where(Subscriber.email == email).order_by(Subscriber.id.desc())
        ).first()
        assert subscriber is not None
        return urlsplit(services.links(subscriber.key).manage_url).path


@pytest.mark.parametrize("action", ["unsubscribe", "delete"])
def test_unsubscribing_or_erasing_resets_no_cap(
    services: Services, client: FlaskClient, smtp: SmtpSink, clock: FakeClock, action: str
) -> None:
    cap = services.policy.confirmations_per_day
    sign_up_many(services, [f"victim+{n}@example.com" for n in range(cap)], clock)
    deliver(services)
    assert len(smtp.messages) == cap
    for n in range(cap):
        response = client.post(f"{manage_path(services, f'victim+{n}@example.com')}/{action}")
        assert response.status_code in {200, 303}
    clock.advance(timedelta(hours=1))
    sign_up_many(services, [f"victim+{n}@example.com" for n in range(cap)], clock)
    deliver(services)
    assert len(smtp.messages) == cap


def status_of(services: Services, email: str) -> S:
    with session_scope(services.sessions) as session:
        subscriber = session.scalars(
            select(Subscriber).where(Subscriber.email == email).order_by(Subscriber.id.desc())
        ).first()
        assert subscriber is not None
        return subscriber.status


def complain_about(services: Services, email: str, clock: FakeClock, event_id: str) -> str:
    with session_scope(services.sessions) as session:
        return drip.apply_report(
            session,
            drip.Report(
                source="arf",
                event_id=event_id,
                kind=MailEventKind.COMPLAINT,
                occurred_at=clock.now,
                recipient=email,
            ),
            keys=services.mailbox_keys,
            policy=services.policy,
            now=clock.now,
        )


def test_a_suppressed_mailbox_gets_no_step_under_any_spelling(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    other_spelling = active_subscriber(services, "a.da+news@gmail.com", clock.now)
    clock.advance(timedelta(minutes=1))
    complain_about(services, "ada@gmail.com", clock, "fbl-1")
    deliver(services)
    assert smtp.messages == []
    with session_scope(services.sessions) as session:
        blocked = session.get_one(Subscriber, other_spelling)
        assert blocked.status == S.UNSUBSCRIBED
        assert blocked.next_send_at is None


def test_signing_up_and_confirming_again_lifts_a_suppression(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    first = active_subscriber(services, "ada@example.com", clock.now)
    with session_scope(services.sessions) as session:
        drip.unsubscribe(
            session, session.get_one(Subscriber, first), keys=services.mailbox_keys, now=clock.now
        )
    clock.advance(timedelta(days=2))
    with session_scope(services.sessions) as session:
        again = sign_up(session, services, "ada@example.com", clock.now).subscriber_id
    deliver(services)
    assert [m.subject for m in smtp.messages if "onfirm" in m.subject]  # the way back
    clock.advance(timedelta(minutes=5))
    with session_scope(services.sessions) as session:
        subscriber = session.get_one(Subscriber, again)
        assert drip.confirm(
            session,
            subscriber,
            ip=None,
            user_agent=None,
            now=clock.now,
            total_steps=services.policy.total_steps,
        )
    deliver(services)
    assert len(smtp.to("ada@example.com")) == 2
    assert status_of(services, "ada@example.com") == S.ACTIVE


def every_value_in_the_database(services: Services) -> str:
    """All the text in every table, to look for an address that should be gone."""
    found = []
    with services.engine.connect() as connection:
        for table in ("subscriber", "consent", "delivery", "suppression", "mail_event"):
            for row in connection.execute(text(f"SELECT * FROM {table}")):
                found.extend(str(value) for value in row)
    return "\n".join(found)


def test_an_erased_address_stays_suppressed_and_is_kept_only_as_a_hash(
    services: Services, client: FlaskClient, smtp: SmtpSink, clock: FakeClock
) -> None:
    # Two spellings of one mailbox, both confirmed; the person erases one.
    kept = active_subscriber(services, "grace+old@example.com", clock.now)
    active_subscriber(services, "grace@example.com", clock.now)
    clock.advance(timedelta(minutes=1))
    response = client.post(
        f"{manage_path(services, 'grace@example.com')}/delete", data={"confirm": "yes"}
    )
    assert response.status_code == 200
    assert "grace@example.com" not in every_value_in_the_database(services)
    with session_scope(services.sessions) as session:
        entry = session.scalars(select(Suppression)).one()
        assert entry.mailbox_hash == services.mailbox_keys.hash("grace@example.com")
    deliver(services)
    assert smtp.messages == []
    with session_scope(services.sessions) as session:
        assert session.get_one(Subscriber, kept).status == S.UNSUBSCRIBED
    # A bounce reported later about the erased address still finds its mailbox.
    with session_scope(services.sessions) as session:
        line = drip.apply_report(
            session,
            drip.Report(
                source="dsn",
                event_id="late-bounce",
                kind=MailEventKind.HARD_BOUNCE,
                occurred_at=clock.now,
                recipient="grace@example.com",
            ),
            keys=services.mailbox_keys,
            policy=services.policy,
            now=clock.now,
        )
    assert "suppressed" in line
    assert "grace@example.com" not in every_value_in_the_database(services)


def test_soft_bounces_suppress_only_when_several_fall_within_the_window(
    services: Services, clock: FakeClock
) -> None:
    active_subscriber(services, "flaky@example.com", clock.now)
    limit = services.policy.soft_bounce_limit

    def soft(n: int) -> str:
        with session_scope(services.sessions) as session:
            return drip.apply_report(
                session,
                drip.Report(
                    source="dsn",
                    event_id=f"soft-{n}",
                    kind=MailEventKind.SOFT_BOUNCE,
                    occurred_at=clock.now,
                    recipient="flaky@example.com",
                ),
                keys=services.mailbox_keys,
                policy=services.policy,
                now=clock.now,
            )

    for n in range(limit - 1):
        assert soft(n).endswith("counted")
        clock.advance(services.policy.soft_bounce_window)  # each falls out of the window
    assert soft(limit).endswith("counted")
    assert status_of(services, "flaky@example.com") == S.ACTIVE
    for n in range(limit - 1):
        soft(100 + n)
    assert status_of(services, "flaky@example.com") == S.BOUNCED


def test_a_refusal_at_send_time_takes_the_same_bounce_path(
    app: Flask, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    """A recipient-permanent answer (issue 7's failure classes) suppresses like a report."""
    active_subscriber(services, "gone@gmail.com", clock.now)
    smtp.refuse["gone@gmail.com"] = (550, "5.1.1 The email account does not exist")
    deliver(services)
    assert status_of(services, "gone@gmail.com") == S.BOUNCED
    with session_scope(services.sessions) as session:
        (entry,) = session.scalars(select(Suppression))
        assert entry.mailbox_hash == services.mailbox_keys.hash("gone@gmail.com")
        (event,) = session.scalars(select(MailEvent))
        assert (event.source, event.kind, event.template) == ("smtp", "hard_bounce", "step-01")
    stats = app.test_cli_runner().invoke(args=["stats"]).output
    assert re.search(r"step-01\s+1\s+0\s+0\s+0", stats), stats
    # Another spelling of the same mailbox, confirmed before the bounce, gets nothing.
    other = active_subscriber(services, "g.one+x@gmail.com", clock.now - timedelta(hours=1))
    deliver(services)
    assert smtp.to("g.one+x@gmail.com") == []
    with session_scope(services.sessions) as session:
        assert session.get_one(Subscriber, other).status == S.UNSUBSCRIBED


def test_a_temporary_refusal_at_send_time_suppresses_nobody(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    active_subscriber(services, "full@example.com", clock.now)
    smtp.refuse["full@example.com"] = (452, "4.2.2 Mailbox full")
    deliver(services)
    assert status_of(services, "full@example.com") == S.ACTIVE
    with session_scope(services.sessions) as session:
        assert session.scalars(select(Suppression)).all() == []


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("not an address", "not an address"),
    ],
)
def test_per_ip_limits_count_ipv6_by_its_64(ip: str, key: str) -> None:
    assert ratelimit.ip_network_key(ip) == key


def visitor(app: Flask, ip: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = ip
    return client


def test_sign_ups_from_one_ipv6_64_share_one_hourly_limit(
    app: Flask, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall = SimpleNamespace(now=1_800_000_000.0)
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: wall.now))
    limit = int(services.settings.hygiene.signup_rate.count)
    for n in range(limit):
        # A new address in the same /64 for every attempt, as an attacker would rotate.
        response = visitor(app, f"2001:db8:aa:bb::{n + 1:x}").post(
            "/api/subscribe", json={"email": f"p{n}@example.com"}
        )
        assert response.status_code == 202
    refused = visitor(app, "2001:db8:aa:bb:ffff::9").post(
        "/api/subscribe", json={"email": "late@example.com"}
    )
    assert refused.status_code == 429
    # The next /64 is someone else; an hour later the first may sign up again.
    other = visitor(app, "2001:db8:aa:bc::1")
    assert other.post("/api/subscribe", json={"email": "next@example.com"}).status_code == 202
    wall.now += 3600
    again = visitor(app, "2001:db8:aa:bb::1")
    assert again.post("/api/subscribe", json={"email": "late@example.com"}).status_code == 202


def test_the_per_ip_limit_is_a_setting() -> None:
    assert Settings.from_env({}).hygiene.signup_rate == Rate(20, 3600)
    assert Settings.from_env({"SIGNUP_RATE": "5/m"}).hygiene.signup_rate == Rate(5, 60)
    # The older name still reads, as a count per hour; SIGNUP_RATE wins over it.
    assert Settings.from_env({"SIGNUPS_PER_IP_PER_HOUR": "5"}).hygiene.signup_rate == Rate(5, 3600)
    both = {"SIGNUPS_PER_IP_PER_HOUR": "5", "SIGNUP_RATE": "7/d"}
    assert Settings.from_env(both).hygiene.signup_rate == Rate(7, 86400)
    with pytest.raises(ConfigError, match="SIGNUPS_PER_IP_PER_HOUR"):
        Settings.from_env({"SIGNUPS_PER_IP_PER_HOUR": "0"})
    for bad in ("20", "20/week", "0/h", "2.5/h"):
        with pytest.raises(ConfigError, match=r"SIGNUP_RATE.*20/h"):
            Settings.from_env({"SIGNUP_RATE": bad})
