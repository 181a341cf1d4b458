"""The public sign-up pages: the form at / and what it answers."""

from __future__ import annotations

import logging

from flask import Blueprint, render_template, request
from redis.exceptions import RedisError

from app import drip, ratelimit, timing
from app.config import ConfigError
from app.db import session_scope
from app.sending import dispatch
from app.web import TooManyAttempts, services

log = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)


def client_ip() -> str | None:
    """The visitor's IP address: the socket's peer, or what trusted proxies say (web/guard.py)."""
    return request.remote_addr


def send_soon(subscriber_id: int) -> None:
    """Queue the subscription's due email now rather than at the next tick, if Redis is up."""
    svc = services()
    try:
        dispatch(svc, now=svc.clock(), ids=[subscriber_id])
    except (RedisError, ConfigError) as error:
        # The database has the work: the next tick queues it once Redis is back.
        log.warning("could not queue subscriber %s now: %s", subscriber_id, error)


def check_rate_limit() -> None:
    """Count a valid sign-up against the visitor's IP (IPv6: /64); TooManyAttempts past SIGNUP_RATE.

    Without Redis configured, allow it.
    """
    svc = services()
    try:
        redis = svc.redis
    except ConfigError:
        return
    rate = svc.settings.hygiene.signup_rate
    network = ratelimit.ip_network_key(client_ip())
    wait = ratelimit.wait_needed(
        redis,
        f"{svc.settings.queue_name}:ratelimit:subscribe:{network}",
        limit=int(rate.count),
        window_seconds=int(rate.period),
    )
    if wait is not None:
        raise TooManyAttempts(wait)


def sign_up(
    email_input: str, first_name: str, *, source: str, time_zone: str | None = None
) -> str | None:
    """Sign an address up; return an error message for the visitor, or None if accepted.

    The answer is the same whether the address is new, pending or already subscribed.
    `time_zone` must be a known zone (the callers check it); None: DEFAULT_TIME_ZONE.
    """
    svc = services()
    settings = svc.settings
    try:
        email = drip.normalize_email(
            email_input,
            check_deliverability=settings.check_deliverability,
            smtputf8=settings.smtp_utf8,
        )
    except drip.InvalidEmail as error:
        return str(error)
    # Counted only once the address is valid: a typo does not use up the visitor's tries.
    check_rate_limit()
    with session_scope(svc.sessions) as session:
        result = drip.subscribe(
            session,
            email,
            first_name=first_name,
            time_zone=time_zone,
            source=source,
            wording=svc.course.consent_wording,
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
