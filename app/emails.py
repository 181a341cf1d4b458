"""The course emails: MJML compiled once, personalised with Jinja2, built as MIME messages."""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path

import idna
import mrml
from jinja2 import Environment, StrictUndefined, Template, TemplateError, meta

from app.clicks import track_links
from app.course import Course
from app.tokens import Links

#: Headers set raw (List-Unsubscribe) are written as they are, never re-folded.
MESSAGE_POLICY = policy.default.clone(refold_source="none")
#: The same, with the line ends SMTP wants.
WIRE_POLICY = MESSAGE_POLICY.clone(linesep="\r\n")
_INCLUDE = re.compile(r'<mj-include\s+path="([^"]+)"\s*/>')
#: Tags after which the plain-text part starts a new paragraph.
_BLOCK_TAGS = {"p", "div", "h1", "h2", "h3", "table", "tr", "ul", "ol"}
_SKIP_TAGS = {"style", "script", "head", "title"}
#: Elements with this class (the brand line, the "Step 3 of 10" eyebrow) are left out of
#: the text part, where the subject line and the heading already say it.
HTML_ONLY = "html-only"
# Written with a literal prefix, which the regex engine searches for far faster than `\n{3,}`.
_BLANK_LINES = re.compile(r"\n\n\n+")
_VOID_TAGS = {"br", "img", "meta", "link", "hr"}
#: The preheader's hidden div, as mrml writes it from <mj-preview>.
_PREHEADER = re.compile(r'(<div style="display:none;[^"]*">)(.*?)(</div>)', re.S)
#: Invisible filler after the preheader text: inbox previews show it instead of
#: running on into the brand line and the heading (Litmus' and Email on Acid's pattern).
PREHEADER_SPACER = "&#847;&zwnj;&nbsp;" * 90
#: A display name made only of these goes out as it is; any other is encoded.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9' -]*")
#: The longest line the stdlib leaves unencoded (7bit), as its default policy says.
_MAX_LINE = 78
#: UTF-8 bytes per encoded word: 45 bytes are 60 base64 characters, under RFC 2047's 75.
_WORD_BYTES = 45
#: Quoted-printable: bytes left as they are mid-line (`=` is escaped on its own, first).
_QP_LITERAL = bytes([9, 10, *range(32, 127)])
#: The longest quoted-printable line before a soft break (`=`), as binascii writes it.
_QP_LINE = 75
#: The pieces of an escaped line between soft breaks: 75 characters, fewer where an
#: escape (`=XX`) would be cut, and the line's last 76 if its last one is not escaped.
_QP_CHUNK = re.compile(rb".{74}(?==)|.{73}(?==)|.{75}(?=..)|.+")


class EmailTemplateError(RuntimeError):
    """An email template could not be compiled; the message names the file."""


@dataclass(frozen=True)
class CompiledEmail:
    """One email, compiled from MJML once: Jinja templates for subject, HTML and text."""

    name: str
    subject: Template
    html: Template
    text: Template
    #: What the course says about this email, the same for every recipient.
    context: Mapping[str, object]
    #: The step this email sends (None: the confirmation).
    step: int | None = None
    #: Every step's action, in order, for the recap links (the last step only).
    actions: tuple[str, ...] = ()
    #: The subject, rendered once, when it names no variable (the same for everyone).
    fixed_subject: str | None = None


class HtmlToText(HTMLParser):
    """Turns compiled email HTML into a plain-text body: paragraphs kept, links written out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skip_depth = 0
        self._links: list[tuple[str, int]] = []
        self._written_urls: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        style = (attributes.get("style") or "").replace(" ", "").lower()
        hidden = "display:none" in style or HTML_ONLY in (attributes.get("class") or "").split()
        if self._skip_depth or tag in _SKIP_TAGS or hidden:
            # Hidden content (the preheader), HTML-only repeats and styles have no place in text.
            if tag not in _VOID_TAGS:
                self._skip_depth += 1
            return
        if tag in _BLOCK_TAGS:
            self._parts.append("\n\n")
        elif tag == "br":
            self._parts.append("\n")
        elif tag == "li":
            self._parts.append("\n- ")
        elif tag == "a":
            self._links.append((attributes.get("href") or "", len(self._parts)))

    def handle_endtag(self, tag: str) -> None:
        if self._skip_depth:
            if tag not in _VOID_TAGS:
                self._skip_depth -= 1
            return
        if tag in _BLOCK_TAGS:
            self._parts.append("\n\n")
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = "".join(self._parts[start:]).strip()
            # Each URL is written out once: a reader of the text part copies it from there.
            if href and href not in self._written_urls:
                self._written_urls.add(href)
                if href != label:
                    self._parts.append(f" ({href})" if label else href)

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self._parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        """The text gathered so far, with tidy line breaks."""
        lines = [line.strip() for line in "".join(self._parts).splitlines()]
        return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip() + "\n"


def html_to_text(markup: str) -> str:
    """A readable plain-text version of an email's HTML."""
    parser = HtmlToText()
    parser.feed(markup)
    parser.close()
    return parser.text()


def resolve_includes(path: Path) -> str:
    """The MJML of `path` with each `<mj-include path="...">` replaced by that file's text.

    mrml's own include loader drops the body's 600px width from included sections
    (the reference compiler keeps it): pasting the parts in first gives both the
    same document.
    """
    source = path.read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda match: (path.parent / match[1]).read_text(encoding="utf-8"), source)


def add_preheader_spacer(markup: str) -> str:
    """The compiled HTML with the invisible spacer after the preheader text."""
    return _PREHEADER.sub(lambda m: f"{m[1]}{m[2]}{PREHEADER_SPACER}{m[3]}", markup, count=1)


def compile_mjml(path: Path) -> mrml.Output:
    """Compile one MJML file (its includes resolved from its folder) to HTML."""
    try:
        # No web fonts: the system font stack needs no request to a font host.
        return mrml.to_html(resolve_includes(path), render_options=mrml.RenderOptions(fonts={}))
    except (OSError, ValueError) as error:
        raise EmailTemplateError(f"{path.name}: {error}") from error


class EmailCatalog:
    """Every email of a course, compiled from MJML once and kept as Jinja templates."""

    def __init__(self, course: Course) -> None:
        self.course = course
        self._html_env = Environment(undefined=StrictUndefined, autoescape=True)
        self._text_env = Environment(undefined=StrictUndefined, autoescape=False)
        self._emails: dict[str, CompiledEmail] = {}
        common = {
            "course_title": course.title,
            "sender_name": course.sender_name,
            "credit": course.credit,
            "step_count": course.step_count,
        }
        self._add(course.confirmation_template, course.confirmation_subject, common)
        for step in course.steps:
            context = {
                **common,
                "step": step.number,
                "closer": step.closer,
                # The last step has nothing left to pause; the confirmation nothing yet.
                "pausable": step.number < course.step_count,
            }
            # The last step recaps every step's action, each linked to its browser page.
            actions = (
                tuple(s.action for s in course.steps) if step.number == course.step_count else ()
            )
            self._add(step.template, step.subject, context, step=step.number, actions=actions)
        self._add(course.notice_template, course.notice_subject, common)

    def _add(
        self,
        name: str,
        subject: str,
        context: dict[str, object],
        *,
        step: int | None = None,
        actions: tuple[str, ...] = (),
    ) -> None:
        path = self.course.folder / f"{name}.mjml"
        if not path.is_file():
            raise EmailTemplateError(f"{name}.mjml: the course names it but there is no such file")
        markup = add_preheader_spacer(compile_mjml(path).content)
        try:
            subject_template = self._text_env.from_string(subject)
            fixed = not meta.find_undeclared_variables(self._text_env.parse(subject))
            self._emails[name] = CompiledEmail(
                name=name,
                subject=subject_template,
                html=self._html_env.from_string(markup),
                text=self._text_env.from_string(html_to_text(markup)),
                context=context,
                step=step,
                actions=actions,
                fixed_subject=subject_template.render(context).strip() if fixed else None,
            )
        except TemplateError as error:
            raise EmailTemplateError(f"{name}.mjml: {error}") from None

    @property
    def names(self) -> list[str]:
        """The names of every email: the confirmation, the steps in order, then the notice."""
        return list(self._emails)

    def get(self, name: str) -> CompiledEmail:
        """The compiled email called `name` (like `step-03`)."""
        try:
            return self._emails[name]
        except KeyError:
            raise EmailTemplateError(f"no email template called {name!r}") from None


@dataclass(frozen=True)
class Sender:
    """Who the emails come from, and what every email's footer needs."""

    mail_from: str
    postal_address: str
    base_url: str
    confirm_max_age: timedelta
    #: Where replies go (REPLY_TO); None: no Reply-To header and no invitation to reply.
    reply_to: str | None = None
    #: The List-Id header's title and id (RFC 2919), from the course file; "": no List-Id.
    list_title: str = ""
    list_id: str = ""
    #: How often steps come and when, in words ("every 2 days"): from STEP_INTERVAL and the window.
    cadence: str = "every 2 days"

    @property
    def domain(self) -> str:
        """The domain of the From address (for Message-IDs)."""
        return parseaddr(self.mail_from)[1].rpartition("@")[2] or "localhost"


@dataclass(frozen=True)
class Recipient:
    """Who one email goes to, and which email it is."""

    email: str
    first_name: str
    links: Links
    message_id: str
    #: When the next step arrives, in words ("on Tuesday morning"); "soon" where no
    #: schedule applies (previews, checks).
    next_step_when: str = "soon"
    #: With CLICK_TRACKING on: (email name, link name, URL) -> the URL that counts a
    #: click on it (app/clicks.py). None: links go straight where they lead.
    track: Callable[[str, str, str], str] | None = None
    #: The course is finished (a notice offers to start again rather than to manage it).
    finished: bool = False


@dataclass(frozen=True)
class RenderedEmail:
    """One personalised email, before MIME assembly."""

    subject: str
    html: str
    text: str


def render(
    email: CompiledEmail, sender: Sender, recipient: Recipient, *, in_browser: bool = False
) -> RenderedEmail:
    """Personalise a compiled email for one recipient.

    `in_browser`: for the "read in your browser" page, which needs no link to itself.
    """
    links = recipient.links
    context = {
        **email.context,
        "first_name": recipient.first_name,
        "confirm_url": links.confirm_url,
        "pause_url": links.pause_url if email.context.get("pausable") else "",
        "unsubscribe_url": links.unsubscribe_url,
        "manage_url": links.manage_url,
        "confirm_days": sender.confirm_max_age.days,
        "postal_address": sender.postal_address,
        "base_url": sender.base_url,
        "reply_to": bool(sender.reply_to),
        "read_url": "",
        "recap": [],
        "next_step_when": recipient.next_step_when,
        "cadence": sender.cadence,
        "finished": recipient.finished,
    }
    if email.step is not None:
        context["read_url"] = "" if in_browser else links.step_url(email.step)
        context["recap"] = [
            (links.step_url(number), action) for number, action in enumerate(email.actions, 1)
        ]
    subject = email.fixed_subject
    if subject is None:
        subject = email.subject.render(context).strip()
    context["subject"] = subject
    # Paragraphs left out by a condition ({% if reply_to %}) leave blank lines behind.
    text = _BLANK_LINES.sub("\n\n", email.text.render(context))
    rendered = RenderedEmail(subject=subject, html=email.html.render(context), text=text)
    track = recipient.track
    if track is None or in_browser:
        return rendered
    # The links that act on the subscription are never tracked, only content links.
    actions = {links.confirm_url, links.pause_url, links.unsubscribe_url, links.manage_url}
    return track_links(
        rendered, track=lambda link, url: track(email.name, link, url), never=actions
    )


def envelope_address(address: str) -> str:
    """The address as it goes on the wire: the domain in IDNA (punycode), the local part kept.

    Raises UnicodeError if the domain cannot be encoded.
    """
    local, _, domain = address.rpartition("@")
    if domain.isascii():
        return address
    return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"


def format_to(name: str, address: str) -> str:
    """A To value that names `address` and only it, whatever the name holds.

    A plain name goes out as it is; any other is RFC 2047-encoded as a whole,
    so quotes, commas, angle brackets and encoded-word look-alikes stay text.
    """
    if any(char in address for char in '\r\n<>,"') or " " in address:
        raise ValueError(f"unsafe recipient address: {address!r}")
    name = " ".join(name.split())
    if not name:
        return address
    if _PLAIN_NAME.fullmatch(name):
        return f"{name} <{address}>"
    words: list[str] = []
    chunk = ""
    for char in name:
        if len((chunk + char).encode()) > _WORD_BYTES:
            words.append(chunk)
            chunk = ""
        chunk += char
    words.append(chunk)
    encoded = "\n ".join(
        f"=?utf-8?b?{base64.b64encode(word.encode()).decode('ascii')}?=" for word in words
    )
    return f"{encoded} <{address}>"


def build_message(
    rendered: RenderedEmail, sender: Sender, recipient: Recipient, *, now: datetime
) -> EmailMessage:
    """The MIME message: text and HTML parts, and the headers mailbox providers expect."""
    message = EmailMessage(policy=MESSAGE_POLICY)
    message["Subject"] = rendered.subject
    message["From"] = sender.mail_from
    # Written by hand: the stdlib decodes an encoded word found inside a display
    # name and writes it out raw, so a name could add or hide recipients.
    message.set_raw("To", format_to(recipient.first_name, envelope_address(recipient.email)))
    message["Date"] = format_datetime(now)
    message["Message-ID"] = recipient.message_id
    if sender.reply_to:
        message["Reply-To"] = sender.reply_to
    if sender.list_id:
        message["List-Id"] = f"{sender.list_title} <{sender.list_id}.{sender.domain}>"
    unsubscribe_url = recipient.links.unsubscribe_url
    if any(char in unsubscribe_url for char in "\r\n <>"):
        # A setting (BASE_URL), not the recipient: the same for every email.
        raise EmailTemplateError(f"unsafe unsubscribe URL (check BASE_URL): {unsubscribe_url!r}")
    # A header object would fold this long URL into RFC 2047 encoded words, which
    # mailbox providers do not decode: the raw value goes out on one line instead.
    message.set_raw("List-Unsubscribe", f"<{unsubscribe_url}>")
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


def wire_message(
    rendered: RenderedEmail, sender: Sender, recipient: Recipient, *, now: datetime
) -> bytes:
    """`build_message`'s message as it goes on the wire (CRLF), assembled directly.

    What is the same for every email of a sender or a subject is written once by
    the stdlib and kept; per email only the recipient's headers are written and
    the two bodies encoded (one C call each). Parsed back with the `email`
    package it reads as `build_message`'s does: the same headers and parts.
    Raises ValueError for a CR or LF in a header value, as the stdlib does.
    """
    unsubscribe_url = recipient.links.unsubscribe_url
    if any(char in unsubscribe_url for char in "\r\n <>"):
        raise EmailTemplateError(f"unsafe unsubscribe URL (check BASE_URL): {unsubscribe_url!r}")
    message_id = recipient.message_id
    if "\r" in message_id or "\n" in message_id:
        raise ValueError(f"unsafe Message-ID: {message_id!r}")
    to = format_to(recipient.first_name, envelope_address(recipient.email))
    boundary = f"=_{secrets.token_hex(12)}"
    head = (
        _subject_line(rendered.subject)
        + _sender_lines(sender)[0]
        + f"To: {to}\r\nDate: {format_datetime(now)}\r\nMessage-ID: {message_id}\r\n".replace(
            "\n ", "\r\n "
        ).encode("utf-8")
        + _sender_lines(sender)[1]
        + f"List-Unsubscribe: <{unsubscribe_url}>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="{boundary}"\r\n'
        "\r\n".encode("ascii")
    )
    separator = f"--{boundary}\r\n".encode("ascii")
    return b"".join(
        (
            head,
            separator,
            _text_part("plain", rendered.text),
            separator,
            _text_part("html", rendered.html),
            f"--{boundary}--\r\n".encode("ascii"),
        )
    )


def _text_part(subtype: str, content: str) -> bytes:
    """One text part, encoded as the stdlib would choose: 7bit if it can be, else QP."""
    if "\r" in content:
        content = content.replace("\r\n", "\n").replace("\r", "\n")
    if not content.endswith("\n"):
        content += "\n"
    data = content.encode("utf-8")
    if data.isascii() and max(map(len, data.split(b"\n"))) <= _MAX_LINE:
        encoding, body = "7bit", data.replace(b"\n", b"\r\n")
    else:
        encoding, body = "quoted-printable", quoted_printable(data)
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode("ascii")
        + body
        + b"\r\n"
    )


def quoted_printable(data: bytes) -> bytes:
    """`binascii.b2a_qp(data, istext=True)`, byte for byte, with CRLF line ends.

    binascii looks at every byte in C, twice; escaping whole byte values with
    `bytes.replace` and then breaking only the long lines does the same work in
    about half the time for an email's HTML. `data` must use LF line ends (no CR)
    and end with one, as `_text_part` makes it.
    """
    data = data.replace(b"=", b"=3D")
    # Any other byte to escape (UTF-8 lead and continuation bytes, controls): each
    # value once. The escapes written are ASCII letters and digits, never escaped again.
    for byte in set(data.translate(None, _QP_LITERAL)):
        data = data.replace(bytes((byte,)), b"=%02X" % byte)
    lines = data.split(b"\n")
    for index, line in enumerate(lines):
        if not line:
            continue
        # A line that is only a dot (or a dot and a NUL) has its dot escaped.
        if line[0] == 46 and (len(line) == 1 or line.startswith(b".=00")):
            line = b"=2E" + line[1:]
        if len(line) > _QP_LINE:
            line = b"=\r\n".join(_QP_CHUNK.findall(line))
        # Whitespace ending a line is escaped (after the breaks, as binascii does).
        if line[-1] in b" \t":
            line = line[:-1] + b"=%02X" % line[-1]
        lines[index] = line
    return b"\r\n".join(lines)


@lru_cache(maxsize=256)
def _subject_line(subject: str) -> bytes:
    """The Subject header as the stdlib folds and encodes it (kept: subjects repeat)."""
    message = EmailMessage(policy=MESSAGE_POLICY)
    message["Subject"] = subject
    return message.as_bytes(policy=WIRE_POLICY).rstrip(b"\r\n") + b"\r\n"


@lru_cache(maxsize=16)
def _sender_lines(sender: Sender) -> tuple[bytes, bytes]:
    """From, then Reply-To and List-Id, as the stdlib writes them: the same for every email."""
    first = EmailMessage(policy=MESSAGE_POLICY)
    first["From"] = sender.mail_from
    rest = EmailMessage(policy=MESSAGE_POLICY)
    if sender.reply_to:
        rest["Reply-To"] = sender.reply_to
    if sender.list_id:
        rest["List-Id"] = f"{sender.list_title} <{sender.list_id}.{sender.domain}>"
    lines = tuple(
        message.as_bytes(policy=WIRE_POLICY).rstrip(b"\r\n") + b"\r\n" if len(message) else b""
        for message in (first, rest)
    )
    return lines[0], lines[1]
