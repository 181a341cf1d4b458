"""The public sign-up pages: the form at / and what it answers."""

from __future__ import annotations

import logging

from flask import Blueprint, render_template, request
from redis.exceptions import RedisError

from app import drip, ratelimit
from app.config import ConfigError
from app.db import session_scope
from app.sending import dispatch
from app.web import TooManyAttempts, services

log = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)

#: What the visitor agrees to; stored with each consent record.
CONSENT_WORDING = (
    "Send me the free course '10 steps to recover from job rejection': a confirmation "
    "email now, then one short email every few days, ten in all. I can pause or "
    "unsubscribe at any time."
)


def client_ip() -> str | None:
    """The visitor's address as this server sees it."""
    return request.remote_addr


def send_soon(subscriber_id: int) -> None:
    """Queue the subscription's due email now rather than at the next tick, if Redis is up."""
    svc = services()
    try:
        dispatch(svc, now=svc.clock(), ids=[subscriber_id])
    except (RedisError, ConfigError) as error:
        # The database has the work: the next tick queues it once Redis is back.
        log.warning("could not queue subscriber %s now: %s", subscriber_id, error)


def within_rate_limit(key: str) -> bool:
    """Count a sign-up attempt against `key`; without Redis configured, allow it."""
    svc = services()
    try:
        redis = svc.redis
    except ConfigError:
        return True
    return ratelimit.allow(redis, key, limit=svc.settings.subscribe_rate_limit, window_seconds=600)


def sign_up(email_input: str, first_name: str, *, source: str) -> str | None:
    """Sign an address up; return an error message for the visitor, or None if accepted.

    The answer is the same whether the address is new, pending or already subscribed.
    """
    svc = services()
    settings = svc.settings
    if not within_rate_limit(f"{settings.queue_name}:ratelimit:subscribe:{client_ip()}"):
        raise TooManyAttempts()
    try:
        email = drip.normalize_email(
            email_input,
            check_deliverability=settings.check_deliverability,
            smtputf8=settings.smtp_utf8,
        )
    except drip.InvalidEmail as error:
        return str(error)
    with session_scope(svc.sessions) as session:
        result = drip.subscribe(
            session,
            email,
            first_name=first_name,
            source=source,
            wording=CONSENT_WORDING,
            ip=client_ip(),
            user_agent=request.user_agent.string,
            policy=svc.policy,
            now=svc.clock(),
        )
    log.info("sign-up from %s: %s", source, result.outcome)
    if result.outcome != drip.SubscribeOutcome.UNCHANGED:
        send_soon(result.subscriber_id)
    return None


@bp.get("/")
def index() -> str:
    return render_template("index.html", wording=CONSENT_WORDING, error=None, form={})


@bp.post("/subscribe")
def subscribe_form() -> tuple[str, int] | str:
    if request.form.get("website"):
        # The honeypot field is hidden from people; only bots fill it in.
        return render_template("check_inbox.html")
    email = request.form.get("email", "")
    error = sign_up(email, request.form.get("first_name", ""), source="form")
    if error:
        form = {"email": email, "first_name": request.form.get("first_name", "")}
        return render_template("index.html", wording=CONSENT_WORDING, error=error, form=form), 400
    return render_template("check_inbox.html")
