"""The public sign-up pages: the form at / and what it answers."""

from __future__ import annotations

import logging

from flask import Blueprint, render_template, request
from redis.exceptions import RedisError

from app import drip, ratelimit, timing
from app.config import ConfigError
from app.db import session_scope
from app.sending import dispatch
from app.signups import enqueue_signup
from app.web import TooManyAttempts, services

log = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)


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
    limit = svc.settings.hygiene.signups_per_ip_per_hour
    return ratelimit.allow(redis, key, limit=limit, window_seconds=3600)


def sign_up(
    email_input: str, first_name: str, *, source: str, time_zone: str | None = None
) -> str | None:
    """Sign an address up; return an error message for the visitor, or None if accepted.

    The answer, and the work done before it, are the same whether the address is
    new, pending, subscribed or gone: the request is recorded and a job decides
    it (app/signups.py). `time_zone` must be a known zone (the callers check it);
    None: DEFAULT_TIME_ZONE.
    """
    svc = services()
    settings = svc.settings
    network = ratelimit.ip_network_key(client_ip())
    if not within_rate_limit(f"{settings.queue_name}:ratelimit:subscribe:{network}"):
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
        request_id = drip.record_signup(
            session,
            email,
            first_name=first_name,
            time_zone=time_zone,
            source=source,
            wording=svc.course.consent_wording,
            ip=client_ip(),
            user_agent=request.user_agent.string,
            now=svc.clock(),
        )
    try:
        enqueue_signup(svc, request_id)
    except (RedisError, ConfigError) as error:
        # The request is recorded: the scheduler's next tick queues it.
        log.warning("could not queue sign-up request %s now: %s", request_id, error)
    log.info("sign-up request %s from %s", request_id, source)
    return None


@bp.get("/")
def index() -> str:
    return sign_up_page(error=None, form={})


def sign_up_page(*, error: str | None, form: dict[str, str]) -> str:
    """The sign-up page, with how often the steps come (from STEP_INTERVAL)."""
    course = services().course
    every = timing.every(services().settings.step_interval)
    return render_template(
        "index.html",
        wording=course.consent_wording,
        credit=course.credit,
        error=error,
        form=form,
        every=every,
    )


@bp.post("/subscribe")
def subscribe_form() -> tuple[str, int] | str:
    if request.form.get("website"):
        # The honeypot field is hidden from people; only bots fill it in.
        return render_template("check_inbox.html")
    email = request.form.get("email", "")
    # The browser fills the hidden field; one we do not know (an old browser) falls
    # back to the default zone, since the visitor could not correct it.
    time_zone = request.form.get("time_zone", "").strip()
    error = sign_up(
        email,
        request.form.get("first_name", ""),
        source="form",
        time_zone=time_zone if timing.is_time_zone(time_zone) else None,
    )
    if error:
        form = {"email": email, "first_name": request.form.get("first_name", "")}
        return sign_up_page(error=error, form=form), 400
    return render_template("check_inbox.html")
