"""Development pages: the outbox of the local mail catcher, and previews of every email.

Served only when DEV_PAGES is on (`make run` turns it on); never in production.
"""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from flask import Blueprint, abort, render_template

from app.db import utcnow
from app.emails import EmailTemplateError, render
from app.web import services

bp = Blueprint("dev", __name__, url_prefix="/dev")
_NAME = re.compile(r"^[0-9]+-[0-9a-f]{8}$")


def _read(path: Path) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert isinstance(message, EmailMessage)
    return message


def _body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    return part.get_content() if part is not None else ""


@bp.get("/outbox/")
def outbox() -> str:
    folder = services().settings.outbox_dir
    paths = sorted(folder.glob("*.eml"), reverse=True)[:200] if folder and folder.exists() else []
    messages = [(path.stem, _read(path)) for path in paths]
    return render_template("outbox.html", messages=messages, catcher=folder is not None)


@bp.get("/outbox/<name>")
def outbox_message(name: str) -> str:
    folder = services().settings.outbox_dir
    path = folder / f"{name}.eml" if folder else None
    if path is None or not _NAME.match(name) or not path.exists():
        abort(404)
    email = _read(path)
    return render_template(
        "email_view.html",
        back="dev.outbox",
        subject=email["Subject"],
        headers=list(email.items()),
        html=_body(email, "html"),
        text=_body(email, "plain"),
    )


@bp.get("/emails/")
def previews() -> str:
    catalog = services().catalog
    return render_template("previews.html", names=catalog.names)


@bp.get("/emails/<name>")
def preview(name: str) -> str:
    svc = services()
    try:
        email = svc.catalog.get(name)
    except EmailTemplateError:
        abort(404)
    recipient = svc.sample_recipient()
    rendered = render(email, svc.sender, recipient)
    size = len(rendered.html.encode())
    return render_template(
        "email_view.html",
        back="dev.previews",
        subject=rendered.subject,
        headers=[
            ("To", f"{recipient.first_name} <{recipient.email}>"),
            ("HTML size", f"{size:,} bytes"),
            ("Rendered", utcnow().strftime("%Y-%m-%d %H:%M UTC")),
        ],
        html=rendered.html,
        text=rendered.text,
    )
