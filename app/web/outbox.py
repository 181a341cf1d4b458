"""The dev outbox: every email the local catcher received, as HTML, text and headers."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from flask import Blueprint, abort, render_template

from app.web import services

bp = Blueprint("outbox", __name__, url_prefix="/dev/outbox")
_NAME = re.compile(r"^[0-9]+-[0-9a-f]{8}$")


def _folder() -> Path:
    folder = services().settings.outbox_dir
    assert folder is not None  # the blueprint is only registered when it is set
    return folder


def _read(path: Path) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert isinstance(message, EmailMessage)
    return message


def _body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    return part.get_content() if part is not None else ""


@bp.get("/")
def inbox() -> str:
    folder = _folder()
    paths = sorted(folder.glob("*.eml"), reverse=True)[:200] if folder.exists() else []
    messages = [(path.stem, _read(path)) for path in paths]
    return render_template("outbox.html", messages=messages)


@bp.get("/<name>")
def message(name: str) -> str:
    path = _folder() / f"{name}.eml"
    if not _NAME.match(name) or not path.exists():
        abort(404)
    email = _read(path)
    return render_template(
        "outbox_message.html",
        name=name,
        email=email,
        html=_body(email, "html"),
        text=_body(email, "plain"),
    )
