"""Bounce mail: a VERP return path on every email, DSNs in the shapes Postfix, Exchange and
Gmail send, an ARF abuse report, read from an mbox, a Maildir and a real IMAP socket."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path
from string import Template

import pytest
from flask import Flask
from sqlalchemy import func, select

import worker.bounces
from app.config import HygieneSettings, Settings
from app.db import session_scope
from app.dsn import verp_token
from app.models import MailEvent, Subscriber, SubscriberStatus, Suppression
from app.services import Services
from tests.imap_server import ImapServer, Mailbox
from tests.support import FakeClock, SmtpSink, active_subscriber, free_port, run_worker
from worker.schedule import tick

S = SubscriberStatus
FIXTURES = Path(__file__).with_name("bounce_mail")
RETURN_PATH = "bounces+{token}@onward.test"
RECIPIENT = "ada@example.com"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_changes(hygiene=HygieneSettings(return_path=RETURN_PATH))


@pytest.fixture
def sent(services: Services, smtp: SmtpSink, clock: FakeClock) -> str:
    """Step 1 went to ada@example.com: its Message-ID."""
    active_subscriber(services, RECIPIENT, clock.now)
    tick(services)
    run_worker(services)
    (message,) = smtp.to(RECIPIENT)
    return str(message.message["Message-ID"])


def letter(name: str, message_id: str, recipient: str = RECIPIENT) -> bytes:
    """A fixture with this email's VERP address, Message-ID and recipient filled in."""
    verp = RETURN_PATH.replace("{token}", verp_token(message_id))
    text = Template((FIXTURES / name).read_text()).substitute(
        verp=verp, message_id=message_id, recipient=recipient
    )
    return text.replace("\n", "\r\n").encode()


def write_mbox(path: Path, letters: list[bytes]) -> Path:
    box = mailbox.mbox(path)
    for raw in letters:
        box.add(raw)
    box.close()
    return path


def status(services: Services) -> tuple[S, int]:
    """The subscription's status and how many mailboxes are suppressed."""
    with session_scope(services.sessions) as session:
        subscriber = session.scalars(select(Subscriber).where(Subscriber.email == RECIPIENT)).one()
        return subscriber.status, session.scalar(select(func.count()).select_from(Suppression)) or 0


def read(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=["bounces", "read", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_every_email_goes_out_with_its_own_verp_return_path(smtp: SmtpSink, sent: str) -> None:
    (message,) = smtp.to(RECIPIENT)
    assert message.envelope_from == f"bounces+{verp_token(sent)}@onward.test"
    assert str(message.message["From"]) == "Onward <course@onward.test>"


@pytest.mark.parametrize("shape", ["postfix_hard.eml", "exchange_hard.eml", "gmail_hard.eml"])
def test_a_hard_bounce_dsn_bounces_and_suppresses_once(
    app: Flask, services: Services, sent: str, tmp_path: Path, shape: str
) -> None:
    mbox = write_mbox(tmp_path / "bounces.mbox", [letter(shape, sent)])
    output = read(app, "--mbox", str(mbox))
    assert "hard_bounce" in output and "bounced and suppressed" in output
    assert status(services) == (S.BOUNCED, 1)
    with session_scope(services.sessions) as session:
        event = session.scalars(select(MailEvent)).one()
        assert (event.source, event.template) == ("dsn", "step-01")
    assert "already applied" in read(app, "--mbox", str(mbox))
    with session_scope(services.sessions) as session:
        assert session.scalar(select(func.count()).select_from(MailEvent)) == 1


def test_a_delay_notice_counts_as_a_soft_bounce_only(
    app: Flask, services: Services, sent: str, tmp_path: Path
) -> None:
    mbox = write_mbox(tmp_path / "bounces.mbox", [letter("postfix_delayed.eml", sent)])
    assert "soft_bounce" in read(app, "--mbox", str(mbox))
    assert status(services) == (S.ACTIVE, 0)


def test_the_verp_address_finds_the_email_when_the_recipient_was_forwarded(
    app: Flask, services: Services, sent: str, tmp_path: Path
) -> None:
    # ada@example.com forwards to an address we never knew, which bounced; the DSN
    # names only that address and quotes a made-up Message-ID: only VERP says whose it is.
    raw = letter("postfix_hard.eml", "<unrelated@elsewhere.example>", "ada@forward.example")
    raw = raw.replace(b"bounces+unrelated", f"bounces+{verp_token(sent)}".encode())
    mbox = write_mbox(tmp_path / "bounces.mbox", [raw])
    output = read(app, "--mbox", str(mbox))
    assert "bounced and suppressed" in output
    assert status(services) == (S.BOUNCED, 1)


def test_an_arf_abuse_report_unsubscribes_and_suppresses(
    app: Flask, services: Services, sent: str, tmp_path: Path
) -> None:
    mbox = write_mbox(tmp_path / "fbl.mbox", [letter("arf_abuse.eml", sent)])
    assert "complaint" in read(app, "--mbox", str(mbox))
    assert status(services) == (S.UNSUBSCRIBED, 1)
    stats = app.test_cli_runner().invoke(args=["stats"]).output
    assert "step-01" in stats
    assert "complaint rate 100.00% (1 of 1 sent): OVER Gmail's 0.3% limit" in stats


def test_mail_that_reports_nothing_is_left_alone(
    app: Flask, services: Services, sent: str, tmp_path: Path
) -> None:
    mbox = write_mbox(tmp_path / "inbox.mbox", [letter("not_a_report.eml", sent)])
    assert "not a bounce or complaint report" in read(app, "--mbox", str(mbox))
    assert status(services) == (S.ACTIVE, 0)


def test_a_maildir_is_read_too(app: Flask, services: Services, sent: str, tmp_path: Path) -> None:
    box = mailbox.Maildir(tmp_path / "Maildir")
    box.add(letter("gmail_hard.eml", sent))
    box.add(letter("not_a_report.eml", sent))
    box.close()
    output = read(app, "--maildir", str(tmp_path / "Maildir"))
    assert "2 messages and reports read" in output
    assert status(services) == (S.BOUNCED, 1)


def test_the_command_wants_exactly_one_source_and_says_what_is_wrong(
    app: Flask, services: Services, tmp_path: Path
) -> None:
    runner = app.test_cli_runner()
    both = runner.invoke(args=["bounces", "read", "--mbox", "a", "--maildir", "b"])
    assert both.exit_code == 2 and "exactly one" in both.output
    missing = runner.invoke(args=["bounces", "read", "--maildir", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "is not a Maildir" in missing.output
    assert "Traceback" not in missing.output


@pytest.fixture
def imap() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox("onward", "s3cret pass")
    server = ImapServer(box, free_port())
    server.start()
    try:
        yield box, server.server_address[1]
    finally:
        server.stop()


def test_imap_unseen_mail_is_applied_once_and_marked_seen(
    app: Flask, services: Services, sent: str, imap: tuple[Mailbox, int]
) -> None:
    box, port = imap
    box.add(letter("exchange_hard.eml", sent))
    box.add(letter("not_a_report.eml", sent))
    url = f"imap://onward:s3cret%20pass@127.0.0.1:{port}/INBOX"
    output = read(app, "--imap", url)
    assert "bounced and suppressed" in output
    assert status(services) == (S.BOUNCED, 1)
    assert all(message.seen for message in box.messages)
    assert "0 messages and reports read" in read(app, "--imap", url)


def test_imap_with_a_wrong_password_is_a_clear_error(
    app: Flask, services: Services, imap: tuple[Mailbox, int]
) -> None:
    _box, port = imap
    result = app.test_cli_runner().invoke(
        args=["bounces", "read", "--imap", f"imap://onward:wrong@127.0.0.1:{port}/INBOX"]
    )
    assert result.exit_code == 1
    assert "IMAP error" in result.output and "Traceback" not in result.output


def test_the_poller_reads_the_configured_mailbox(
    services: Services,
    sent: str,
    imap: tuple[Mailbox, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    box, port = imap
    box.add(letter("arf_abuse.eml", sent))
    settings = services.settings
    for name, value in {
        "DATABASE_URL": settings.database_url,
        "SECRET_KEY": settings.secret_key,
        "MAIL_FROM": settings.mail_from,
        "RETURN_PATH": RETURN_PATH,
        "BOUNCE_IMAP_URL": f"imap://onward:s3cret%20pass@127.0.0.1:{port}/INBOX",
    }.items():
        monkeypatch.setenv(name, value)
    assert worker.bounces.main(["--once"]) == 0
    assert status(services) == (S.UNSUBSCRIBED, 1)
    assert all(message.seen for message in box.messages)


def test_the_poller_without_a_mailbox_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("BOUNCE_IMAP_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    assert worker.bounces.main(["--once"]) == 2
    assert "BOUNCE_IMAP_URL is not set" in capsys.readouterr().err


def test_a_dsn_about_our_sending_bounces_nobody(
    app: Flask, services: Services, sent: str, tmp_path: Path
) -> None:
    # A blocklist refusal is about our sending (issue 7's table: 5.7.x), not the address.
    raw = letter("postfix_hard.eml", sent)
    raw = raw.replace(b"Status: 5.1.1", b"Status: 5.7.1").replace(
        b"smtp; 550 5.1.1", b"smtp; 554 5.7.1 Service unavailable; client host blocked;"
    )
    mbox = write_mbox(tmp_path / "bounces.mbox", [raw])
    output = read(app, "--mbox", str(mbox))
    assert "blocked" in output and "nobody bounced" in output
    assert status(services) == (S.ACTIVE, 0)
    with session_scope(services.sessions) as session:
        event = session.scalars(select(MailEvent)).one()
        assert (event.kind, event.template) == ("blocked", "step-01")
