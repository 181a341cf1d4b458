"""`/c/<token>`: a tracked link in an email (CLICK_TRACKING on): count it, then lead on."""

from __future__ import annotations

import logging

from flask import Blueprint, redirect
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.wrappers import Response as BaseResponse

from app import clicks
from app.db import session_scope
from app.tokens import InvalidLink, Purpose
from app.web import services

log = logging.getLogger(__name__)
bp = Blueprint("clicks", __name__)


@bp.get("/c/<token>")
def follow(token: str) -> BaseResponse:
    """Count the click and redirect to where the link leads.

    Only a URL we signed is followed, so this is no open redirect. A database outage
    loses the count, never the visit.
    """
    svc = services()
    click = svc.signer.read_click(token)
    if not click.url.startswith(("https://", "http://")):
        raise InvalidLink(Purpose.CLICK)
    try:
        with session_scope(svc.sessions) as session:
            clicks.record(session, click, mode=svc.settings.click_tracking, now=svc.clock())
    except SQLAlchemyError as error:
        log.warning("click not counted (database unavailable): %s", error.__class__.__name__)
    response = redirect(click.url, code=302)
    # The token is in this URL: never send it on, never keep the redirect.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response
