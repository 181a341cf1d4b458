"""The course emails: templates, MIME messages, headers, escaping and the plain-text part."""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import policy
from email.headerregistry import AddressHeader
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import mrml
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from app import create_app, drip
from app import emails as emails_module
from app.checks import check_emails
from app.config import DEFAULT_EMAILS_DIR, ConfigError, Settings
from app.course import load_course
from app.db import session_scope, utcnow
from app.emails import (
    PREHEADER_SPACER,
    EmailCatalog,
    Recipient,
    RenderedEmail,
    Sender,
    build_message,
    html_to_text,
    render,
)
from app.models import EmailKind, Subscriber
from app.services import Services
from app.tokens import Links, LinkSigner, Purpose
from tests.support import FakeClock, SmtpSink, run_worker
from worker.schedule import tick

COURSE = load_course(DEFAULT_EMAILS_DIR)
STEPS = [step.template for step in COURSE.steps]
NOTICE = COURSE.notice_template
TEMPLATES = [COURSE.confirmation_template, *STEPS, NOTICE]
SUBJECTS = {
    COURSE.confirmation_template: COURSE.confirmation_subject,
    **{step.template: step.subject for step in COURSE.steps},
    NOTICE: COURSE.notice_subject,
}
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ADA = "ada@example.com"
BOB = "bob@example.org"
CY = "cy@example.net"
POSTAL_ADDRESS = "Onward, 1 Test Street, Testville"
SENDER = Sender(
    mail_from="Onward <course@onward.test>",
    postal_address=POSTAL_ADDRESS,
    base_url="https://onward.test",
    confirm_max_age=timedelta(days=7),
    list_title=COURSE.title,
    list_id=COURSE.list_id,
)
SIGNER = LinkSigner("test-secret-key", confirm_max_age=timedelta(days=7))
LINKS = Links.for_key(SIGNER, "https://onward.test", "key-of-ada")
#: A tag in text (a '<' followed by a tag name, '/' or '!').
TAG = re.compile(r"<[A-Za-z/!]")
PREHEADER = re.compile(r'<div style="display:none;[^"]*">(.*?)</div>', re.S)


@pytest.fixture(scope="module")
def catalog() -> EmailCatalog:
    return EmailCatalog(COURSE)


def recipient(first_name: str = "Ada", message_id: str = "<test-1@onward.test>") -> Recipient:
    return Recipient(email=ADA, first_name=first_name, links=LINKS, message_id=message_id)


def rendered_as(catalog: EmailCatalog, name: str, first_name: str = "Ada") -> RenderedEmail:
    return render(catalog.get(name), SENDER, recipient(first_name))


def over_the_wire(message: EmailMessage) -> EmailMessage:
    """The message as an SMTP server receives and parses it (CRLF line ends)."""
    wire = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    parsed = BytesParser(policy=policy.default).parsebytes(wire)
    assert isinstance(parsed, EmailMessage)
    return parsed


def part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    assert body is not None, f"no text/{subtype} part"
    assert body.get_content_type() == f"text/{subtype}"
    # Parsed from the wire, the content keeps its CRLF line ends.
    return str(body.get_content()).replace("\r\n", "\n")


def preview_of(name: str) -> str:
    """The <mj-preview> text written in the template's MJML source."""
    source = (DEFAULT_EMAILS_DIR / f"{name}.mjml").read_text(encoding="utf-8")
    match = re.search(r"<mj-preview>(.*?)</mj-preview>", source, re.S)
    assert match, f"{name}.mjml has no <mj-preview>"
    return html.unescape(match.group(1)).strip()


# --- the templates -----------------------------------------------------------------------------


def test_every_template_compiles_into_the_catalog(catalog: EmailCatalog) -> None:
    assert catalog.names == TEMPLATES
    for name in TEMPLATES:
        compiled = catalog.get(name)
        assert compiled.name == name
        assert len(rendered_as(catalog, name).html) > 1000


@pytest.mark.parametrize("name", TEMPLATES)
def test_subjects_are_short_and_say_which_step(catalog: EmailCatalog, name: str) -> None:
    subject = rendered_as(catalog, name).subject
    assert len(subject) < 50
    assert subject == subject.strip() and "\n" not in subject
    assert html.unescape(subject) == subject, "an HTML entity was left in the subject"
    assert "{" not in subject
    assert subject == SUBJECTS[name]
    if name in STEPS:
        number = STEPS.index(name) + 1
        assert re.fullmatch(rf"Step {number} of {len(STEPS)}: \S.+", subject), subject


@pytest.mark.parametrize("name", TEMPLATES)
def test_each_email_is_a_complete_message(catalog: EmailCatalog, name: str) -> None:
    rendered = rendered_as(catalog, name)
    message = over_the_wire(build_message(rendered, SENDER, recipient(), now=NOW))

    for header in ("Date", "Message-ID", "From", "To", "Subject", "List-Unsubscribe"):
        assert len(message.get_all(header) or []) == 1, header
    assert parsedate_to_datetime(str(message["Date"])) == NOW
    assert message["Message-ID"] == "<test-1@onward.test>"
    assert message["From"] == "Onward <course@onward.test>"
    to = message["To"]
    assert isinstance(to, AddressHeader)
    assert [address.addr_spec for address in to.addresses] == [ADA]
    assert message["Subject"] == rendered.subject
    unsubscribe = str(message["List-Unsubscribe"])
    assert re.fullmatch(r"<https://[^<>\s]+>", unsubscribe), unsubscribe
    assert unsubscribe == f"<{LINKS.unsubscribe_url}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    html_part = part(message, "html")
    assert len(html_part.encode("utf-8")) < 102 * 1024
    assert part(message, "plain").strip()


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_text_part_is_clean_and_writes_the_links_out(catalog: EmailCatalog, name: str) -> None:
    message = over_the_wire(build_message(rendered_as(catalog, name), SENDER, recipient(), now=NOW))
    text = part(message, "plain")
    assert not TAG.search(text), TAG.search(text)
    for leftover in ("{{", "}}", "{%", "%}", "{#", "&nbsp;", "&amp;", "&#"):
        assert leftover not in text, leftover
    assert "Hi Ada," in text
    assert LINKS.unsubscribe_url in text
    assert LINKS.manage_url in text
    assert POSTAL_ADDRESS in text
    if name == "confirmation":
        assert LINKS.confirm_url in text
        assert "/pause/" not in text  # nothing to pause before the course starts
    elif name in (STEPS[-1], NOTICE):
        assert "/pause/" not in text  # nothing left to pause; a notice pauses nothing
    else:
        assert LINKS.pause_url in text
    if name != "confirmation":
        assert "/confirm/" not in text
    # Paragraphs stay paragraphs.
    assert "\n\n" in text
    assert max(len(paragraph) for paragraph in text.split("\n\n")) < 2000


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_html_part_has_lang_preheader_links_and_footer(
    catalog: EmailCatalog, name: str
) -> None:
    message = over_the_wire(build_message(rendered_as(catalog, name), SENDER, recipient(), now=NOW))
    markup = part(message, "html")
    assert re.search(r'<html[^>]*\blang="en"', markup)
    preheaders = PREHEADER.findall(markup)
    assert preheaders, "no hidden preheader div"
    preheader, spacer, rest = preheaders[0].partition(PREHEADER_SPACER)
    assert spacer and rest == "", "the spacer ends the preheader"
    assert html.unescape(preheader).strip() == preview_of(name)
    assert preview_of(name) not in part(message, "plain"), "the preheader leaked into the text"
    assert POSTAL_ADDRESS in html.unescape(markup)
    assert f'href="{LINKS.unsubscribe_url}"' in markup
    assert f'href="{LINKS.manage_url}"' in markup
    assert (f'href="{LINKS.pause_url}"' in markup) == (
        name not in {"confirmation", STEPS[-1], NOTICE}
    )
    assert "{{" not in markup and "{%" not in markup


# --- personalisation -----------------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_first_name_is_escaped_in_html_and_the_greeting_has_a_fallback(
    catalog: EmailCatalog, name: str
) -> None:
    hostile = rendered_as(catalog, name, "<b>x</b>")
    assert "Hi &lt;b&gt;x&lt;/b&gt;," in hostile.html
    assert "<b>x</b>" not in hostile.html
    assert "Hi <b>x</b>," in hostile.text  # plain text shows the name as typed

    nameless = rendered_as(catalog, name, "")
    for body in (nameless.text, html.unescape(nameless.html)):
        assert "Hi there," in body
        assert "Hi ," not in body

    named = rendered_as(catalog, name, "Zoë")
    assert "Hi Zoë," in named.text and "Hi Zoë," in html.unescape(named.html)
    assert "Hi there," not in named.text


def test_a_first_name_with_commas_and_quotes_stays_one_recipient(catalog: EmailCatalog) -> None:
    name = 'O"Brien, Ann <ann@evil.example>'
    message = over_the_wire(
        build_message(rendered_as(catalog, "step-01", name), SENDER, recipient(name), now=NOW)
    )
    to = message["To"]
    assert isinstance(to, AddressHeader)
    assert [address.addr_spec for address in to.addresses] == [ADA]
    assert to.addresses[0].display_name == name


@pytest.mark.parametrize("first_name", ["Ada\r\nBcc: x@y", "Ada\nBcc: x@y", "Ada\rBcc: x@y"])
def test_a_line_break_in_the_first_name_cannot_add_a_header(
    catalog: EmailCatalog, first_name: str
) -> None:
    rendered = rendered_as(catalog, "confirmation", first_name)
    assert "Bcc" not in rendered.subject
    # The name is flattened to one line and encoded: it stays inside To.
    message = build_message(rendered, SENDER, recipient(first_name), now=NOW)
    parsed = BytesParser(policy=policy.default).parsebytes(message.as_bytes())
    assert parsed["Bcc"] is None
    assert [address.addr_spec for address in parsed["To"].addresses] == [ADA]


def test_a_first_name_with_a_line_break_neither_blocks_the_batch_nor_adds_a_header(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        for email, first_name in ((BOB, "Bob"), (ADA, "Ada\r\nBcc: x@y"), (CY, "Cy")):
            drip.subscribe(
                session,
                email,
                first_name=first_name,
                source="api",
                wording="test wording",
                ip=None,
                user_agent=None,
                policy=services.policy,
                now=clock.now,
            )
    assert tick(services) == 3  # one batch of three
    run_worker(services)
    assert sorted(r.envelope_to[0] for r in smtp.messages) == sorted([ADA, BOB, CY])
    assert all(r.envelope_to == [r.envelope_to[0]] for r in smtp.messages)
    assert all("Bcc" not in r.message for r in smtp.messages)


# --- Message-IDs ------------------------------------------------------------------------------


def test_the_message_id_is_deterministic_and_distinct() -> None:
    message_id = drip.message_id_for("key-1", EmailKind.STEP, 3, "onward.test")
    assert message_id == drip.message_id_for("key-1", EmailKind.STEP, 3, "onward.test")
    assert re.fullmatch(r"<[^<>@\s]+@onward\.test>", message_id), message_id
    others = {
        drip.message_id_for("key-2", EmailKind.STEP, 3, "onward.test"),
        drip.message_id_for("key-1", EmailKind.STEP, 4, "onward.test"),
        drip.message_id_for("key-1", EmailKind.CONFIRMATION, 3, "onward.test"),
        drip.message_id_for("key-1", EmailKind.STEP, 3, "other.test"),
    }
    assert message_id not in others
    assert len(others) == 4
    every_email = {
        drip.message_id_for(key, kind, number, "onward.test")
        for key in ("key-1", "key-2")
        for kind in EmailKind
        for number in range(1, COURSE.step_count + 1)
    }
    assert len(every_email) == 2 * len(EmailKind) * COURSE.step_count


def test_the_relay_receives_the_headers_the_ledger_promises(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    assert (
        client.post("/api/subscribe", json={"email": ADA, "first_name": "Ada"}).status_code == 202
    )
    run_worker(services)
    [confirmation] = smtp.to(ADA)
    confirm_path = confirmation.link("confirm").removeprefix("https://onward.test")
    clock.advance(timedelta(minutes=5))
    assert client.post(confirm_path).status_code == 200
    run_worker(services)
    confirmation, step_one = smtp.to(ADA)

    with session_scope(services.sessions) as session:
        [key] = session.scalars(select(Subscriber.key)).all()
    domain = services.sender.domain
    assert domain == "onward.test"

    def reads_back(url: str, purpose: Purpose) -> bool:
        base = f"https://onward.test/{purpose}/"
        return url.startswith(base) and services.signer.read(purpose, url.removeprefix(base)) == key

    for received, kind, number, sent_at in (
        (confirmation, EmailKind.CONFIRMATION, 1, clock.now - timedelta(minutes=5)),
        (step_one, EmailKind.STEP, 1, clock.now),
    ):
        message = received.message
        assert received.envelope_to == [ADA]
        assert received.envelope_from == "course@onward.test"
        assert message["Message-ID"] == drip.message_id_for(key, kind, number, domain)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert parsedate_to_datetime(str(message["Date"])) == sent_at
        header = str(message["List-Unsubscribe"])
        assert header.startswith("<") and header.endswith(">")
        assert header[1:-1] == received.link("unsubscribe")
        assert reads_back(header[1:-1], Purpose.UNSUBSCRIBE)
        assert reads_back(received.link("manage"), Purpose.MANAGE)
        assert POSTAL_ADDRESS in received.text
    assert reads_back(confirmation.link("confirm"), Purpose.CONFIRM)
    assert reads_back(step_one.link("pause"), Purpose.PAUSE)


# --- compile once ---------------------------------------------------------------------------


def test_mjml_is_compiled_when_the_catalog_is_built_and_never_when_sending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    original: Callable[..., Any] = mrml.to_html

    def counting_to_html(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0])[:40])
        return original(*args, **kwargs)

    # app.emails calls `mrml.to_html` through the module, so patch it there.
    assert emails_module.mrml is mrml  # type: ignore[attr-defined]
    monkeypatch.setattr(mrml, "to_html", counting_to_html)
    catalog = EmailCatalog(COURSE)
    assert len(calls) == len(TEMPLATES), "the counter must see the catalog compile"

    calls.clear()
    for n in range(20):
        name = TEMPLATES[n % len(TEMPLATES)]
        who = recipient(f"Reader {n}", message_id=f"<test-{n}@onward.test>")
        message = build_message(render(catalog.get(name), SENDER, who), SENDER, who, now=NOW)
        assert f"Hi Reader {n}," in part(message, "plain")
    assert calls == []

    # One catalog per process: the services build it once and keep it.
    services = Services(Settings())
    assert services.catalog is services.catalog
    assert len(calls) == len(TEMPLATES)


# --- html_to_text -----------------------------------------------------------------------------


def test_html_to_text_keeps_paragraphs_and_writes_links_out() -> None:
    markup = """<html><head><title>Subject</title>
    <style>p { color: red; } .hidden { display: none }</style></head><body>
    <div style="display: none; font-size: 1px">The hidden preheader</div>
    <h1>Hello   there</h1>
    <p>First paragraph,
       wrapped in the source.</p>
    <p>Read <a href="https://onward.test/guide">the guide</a> today.</p>
    <p><a href="https://onward.test/plain">https://onward.test/plain</a></p>
    <p>Line one<br>Line two</p>
    <ul><li>alpha</li><li>beta</li></ul>
    <p>&ldquo;Quoted&rdquo; &amp; done</p>
    </body></html>"""
    assert html_to_text(markup) == (
        "Hello there\n"
        "\n"
        "First paragraph, wrapped in the source.\n"
        "\n"
        "Read the guide (https://onward.test/guide) today.\n"
        "\n"
        "https://onward.test/plain\n"
        "\n"
        "Line one\n"
        "Line two\n"
        "\n"
        "- alpha\n"
        "- beta\n"
        "\n"
        "\u201cQuoted\u201d & done\n"
    )


def test_html_to_text_drops_hidden_content_styles_and_scripts() -> None:
    markup = (
        "<style>body { margin: 0 }</style>"
        '<div style="DISPLAY: NONE">secret <b>preheader</b> <br> text</div>'
        "<script>alert('x')</script>"
        "<p>Visible</p>"
    )
    text = html_to_text(markup)
    assert text == "Visible\n"


def test_html_to_text_of_a_real_email_has_blank_lines_between_paragraphs(
    catalog: EmailCatalog,
) -> None:
    text = rendered_as(catalog, "step-01").text
    assert "\n\nHi Ada,\n\n" in text
    assert "\n\n\n" not in text
    assert f"Unsubscribe ({LINKS.unsubscribe_url})" in text
    assert f"Manage your subscription ({LINKS.manage_url})" in text
    assert f"Pause the course ({LINKS.pause_url})" in text
    assert "margin" not in text and "font-size" not in text  # no CSS from <style>
    assert preview_of("step-01") not in text


def test_the_unsubscribe_header_carries_the_url_itself_never_encoded_words() -> None:
    # A long base URL plus a real-length token exceeds 78 characters: a folded
    # header would turn the URL into =?utf-8?q?...?= words mailbox providers ignore.
    services = Services(Settings(base_url="https://course.a-rather-long-domain-name.example.com"))
    links = services.links("xO2bW3Zy0aQ8vO-bKe_gFw")
    recipient = Recipient(
        email="ada@example.com", first_name="Ada", links=links, message_id="<id@onward.example>"
    )
    for name in ("confirmation", "step-01"):
        rendered = render(services.catalog.get(name), services.sender, recipient)
        message = build_message(rendered, services.sender, recipient, now=utcnow())
        wire = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        [line] = [x for x in wire.split(b"\r\n") if x.startswith(b"List-Unsubscribe:")]
        assert line == f"List-Unsubscribe: <{links.unsubscribe_url}>".encode()
        assert len(line) < 998


# --- the course file, Reply-To, List-Id and a tidy text part ---------------------------------


def test_the_list_id_names_the_course_from_the_course_file(catalog: EmailCatalog) -> None:
    message = over_the_wire(
        build_message(rendered_as(catalog, "step-02"), SENDER, recipient(), now=NOW)
    )
    assert message["List-Id"] == f"{COURSE.title} <{COURSE.list_id}.onward.test>"


@pytest.mark.parametrize("name", TEMPLATES)
def test_reply_to_and_the_invitation_to_reply_come_together(
    catalog: EmailCatalog, name: str
) -> None:
    without = over_the_wire(build_message(rendered_as(catalog, name), SENDER, recipient(), now=NOW))
    assert without["Reply-To"] is None
    assert "a person reads these" not in part(without, "plain")

    sender = replace(SENDER, reply_to="Sam <sam@onward.test>")
    rendered = render(catalog.get(name), sender, recipient())
    message = over_the_wire(build_message(rendered, sender, recipient(), now=NOW))
    reply_to = message["Reply-To"]
    assert isinstance(reply_to, AddressHeader)
    assert [address.addr_spec for address in reply_to.addresses] == ["sam@onward.test"]
    assert "just reply: a person reads these." in part(message, "plain")
    assert "a person reads these" in html.unescape(part(message, "html"))


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_text_part_says_the_subject_once_and_each_url_once(
    catalog: EmailCatalog, name: str
) -> None:
    rendered = render(catalog.get(name), replace(SENDER, reply_to="sam@onward.test"), recipient())
    text = rendered.text
    headline = rendered.subject.rpartition(": ")[2]
    assert text.count(headline) <= 1, headline
    assert not re.search(r"Step \d+ of \d+", text), "the step eyebrow repeats the subject"
    assert "Onward \u00b7" not in text, "the brand line repeats the From name"
    urls = re.findall(r"https://onward\.test/\S+?(?=[)\s])", text)
    assert urls, "the text part writes its links out"
    assert len(urls) == len(set(urls)), [u for u in urls if urls.count(u) > 1]
    assert "\n\n\n" not in text


def test_the_notice_links_to_the_manage_page_and_offers_a_finished_course_again(
    catalog: EmailCatalog,
) -> None:
    running = rendered_as(catalog, NOTICE)
    finished = render(catalog.get(NOTICE), SENDER, replace(recipient(), finished=True))
    for rendered in (running, finished):
        assert f'href="{LINKS.manage_url}"' in rendered.html
        assert LINKS.manage_url in rendered.text
        assert "/confirm/" not in rendered.text
        assert "ignore this message" in rendered.text
    assert "already under way" in running.text
    assert "Start again from step 1" not in running.text
    assert f"you've already received all {len(STEPS)} steps" in finished.text
    assert "Start again from step 1" in finished.text


def test_each_step_links_to_its_page_in_the_browser(catalog: EmailCatalog) -> None:
    for number, name in enumerate(STEPS, start=1):
        rendered = rendered_as(catalog, name)
        assert f'href="{LINKS.step_url(number)}"' in rendered.html, name
        assert LINKS.step_url(number) in rendered.text, name
    assert "/read/" not in rendered_as(catalog, "confirmation").text


def test_the_last_step_recaps_every_step_with_its_link_and_offers_no_pause(
    catalog: EmailCatalog,
) -> None:
    last = render(catalog.get(STEPS[-1]), replace(SENDER, reply_to="sam@onward.test"), recipient())
    for step in COURSE.steps:
        assert f"{step.action} ({LINKS.step_url(step.number)})" in last.text
    assert "whichever of them you tried" in last.text
    assert "Pause" not in last.text and LINKS.pause_url not in last.html
    questions = [s for s in re.split(r"(?<=[.?])\s+", last.text) if s.endswith("?")]
    assert len(questions) == 1, questions
    # Without a Reply-To, nobody could answer the question: it is left out.
    assert "?" not in rendered_as(catalog, STEPS[-1]).text.split("Your step for today")[1]


def test_the_preheader_spacer_hides_the_rest_from_the_inbox_preview(catalog: EmailCatalog) -> None:
    markup = rendered_as(catalog, "step-01").html
    [preheader] = PREHEADER.findall(markup)
    assert preheader.endswith(PREHEADER_SPACER)
    # About 270 invisible characters: more than any inbox shows after the preheader.
    assert len(html.unescape(PREHEADER_SPACER)) >= 250
    assert PREHEADER_SPACER not in rendered_as(catalog, "step-01").text


def copy_course(tmp_path: Path) -> Path:
    folder = tmp_path / "emails"
    shutil.copytree(DEFAULT_EMAILS_DIR, folder)
    return folder


def edit(path: Path, old: str, new: str) -> None:
    source = path.read_text(encoding="utf-8")
    assert old in source, old
    path.write_text(source.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (("course.toml", 'template = "step-04"', 'template = "step-44"'), "step-44.mjml"),
        (("course.toml", 'list_id = "course"', 'list_id = "Course Two"'), "list_id"),
        (("course.toml", "[[steps]]", "[[steps]\n"), "course.toml"),
        (
            (
                "course.toml",
                "Step 3 of 10: Give yourself some credit",
                "Step 2 of 10: Let your people in",
            ),
            "used twice",
        ),
        (
            ("course.toml", "Step 3 of 10: Give yourself some credit", "Step 3 of 10: " + "x" * 40),
            "under 50",
        ),
        (("course.toml", 'steps = ["step-03"]', 'steps = ["step-33"]'), "unknown emails"),
        (("course.toml", 'sender_name = "Sam"', 'sender_name = ""'), "sender_name"),
        (
            (
                "step-05.mjml",
                '<mj-text css-class="action">',
                '<mj-text css-class="action">{{ nope }}',
            ),
            "step-05.mjml: 'nope' is undefined",
        ),
        (("step-06.mjml", "{% if first_name %}", "{% if first_name %"), "step-06.mjml"),
    ],
)
def test_a_broken_course_stops_the_process_at_start_naming_the_problem(
    tmp_path: Path, change: tuple[str, str, str], error: str
) -> None:
    folder = copy_course(tmp_path)
    file, old, new = change
    edit(folder / file, old, new)
    services = Services(Settings(emails_dir=folder))
    with pytest.raises(ConfigError, match=re.escape(error)):
        check_emails(services)


def test_the_step_count_follows_from_the_course_file(tmp_path: Path) -> None:
    folder = copy_course(tmp_path)
    source = (folder / "course.toml").read_text(encoding="utf-8")
    head, _, rest = source.partition("[[steps]]")
    steps = rest.split("[[sources]]")[0].split("[[steps]]")
    # Keep the first three steps; the third becomes the last (so it closes no further step).
    three = "[[steps]]".join(["", *steps[:2]]) + "[[steps]]" + steps[2].split("closer =")[0]
    (folder / "course.toml").write_text(head + three, encoding="utf-8")
    services = Services(Settings(emails_dir=folder))
    check_emails(services)
    assert services.course.step_count == 3
    assert services.policy.total_steps == 3
    assert services.catalog.names == ["confirmation", "step-01", "step-02", "step-03", "notice"]
    third = rendered_as(services.catalog, "step-03")
    assert "Pause the course" not in third.text
    # The sign-up page reads the same file: the title and the number of steps.
    edit(folder / "course.toml", f'title = "{COURSE.title}"', 'title = "Three small steps"')
    page = create_app(services=Services(Settings(emails_dir=folder))).test_client().get("/")
    text = html.unescape(page.get_data(as_text=True))
    assert "<h1>Three small steps</h1>" in text and "<title>Three small steps" in text
    assert "3 short emails" in text and f"<h1>{COURSE.title}" not in text


def test_reply_to_is_read_from_the_environment_and_a_bad_one_refused() -> None:
    assert Settings.from_env({}).reply_to is None
    assert Settings.from_env({"REPLY_TO": " "}).reply_to is None
    assert Settings.from_env({"REPLY_TO": "Sam <sam@example.com>"}).reply_to == (
        "Sam <sam@example.com>"
    )
    services = Services(Settings.from_env({"REPLY_TO": "sam@example.com"}))
    assert services.sender.reply_to == "sam@example.com"
    assert Settings.from_env({"REPLY_TO": "sam@bücher.example"}).reply_to == (
        "sam@xn--bcher-kva.example"
    )
    for bad in (
        "sam",
        "sam@localhost",
        "sam@example.com\r\nBcc: x@example.com",
        "sam@example.com, eve@example.org",
        "Sam Smith, Jr. <sam@example.com>",
        "sämi@example.com",
    ):
        with pytest.raises(ConfigError, match="REPLY_TO"):
            Settings.from_env({"REPLY_TO": bad})


def test_the_course_file_may_name_the_reply_address_and_reply_to_overrides_it(
    tmp_path: Path,
) -> None:
    folder = copy_course(tmp_path)
    edit(
        folder / "course.toml",
        '# reply_to = "Sam <sam@example.com>"',
        'reply_to = "Sam <sam@course.example>"',
    )
    assert Services(Settings(emails_dir=folder)).sender.reply_to == "Sam <sam@course.example>"
    overridden = Services(Settings(emails_dir=folder, reply_to="help@deploy.example"))
    assert overridden.sender.reply_to == "help@deploy.example"
    edit(
        folder / "course.toml",
        'reply_to = "Sam <sam@course.example>"',
        'reply_to = "a@b.example, c@d.example"',
    )
    with pytest.raises(
        ConfigError, match=re.escape("course.toml: `reply_to` must be one email address")
    ):
        check_emails(Services(Settings(emails_dir=folder)))
