"""The public sign-up pages: the form at /, "check your inbox", and asking for the email again."""

from __future__ import annotations

import logging
import math
from datetime import datetime

from flask import Blueprint, redirect, render_template, request, session, url_for
from redis.exceptions import RedisError
from werkzeug.wrappers import Response as BaseResponse

from app import addresses, drip, ratelimit, timing
from app.config import ConfigError
from app.db import session_scope
from app.sending import dispatch
from app.signups import enqueue_signup
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

    The answer, and the work done before it, are the same whether the address is
    new, pending, subscribed or gone: the request is recorded and a job decides
    it (app/signups.py). `time_zone` must be a known zone (the callers check it);
    None: DEFAULT_TIME_ZONE.
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


#: Where the browser's own session keeps the last sign-up, for "check your inbox".
INBOX = "inbox"


@bp.get("/")
def index() -> str:
    """The form; `?change=1` ("wrong address?") brings back the last sign-up to correct it."""
    last = session.get(INBOX) if request.args.get("change") else None
    form = {"email": last["email"], "first_name": last["first_name"]} if last else {}
    return sign_up_page(error=None, form=form, focus=bool(last))


def sign_up_page(*, error: str | None, form: dict[str, str], focus: bool = False) -> str:
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
        focus=focus or bool(error),
    )


def remember(email: str, first_name: str, time_zone: str | None, *, bot: bool = False) -> None:
    """Keep the sign-up in the browser's session: the resend and "wrong address?" need it.

    A bot (it filled the honeypot) gets the same page and cooldown, and its resend sends nothing.
    """
    session[INBOX] = {
        "email": email,
        "first_name": first_name,
        "time_zone": time_zone,
        "sent_at": services().clock().isoformat(),
        "bot": bot,
    }


def wait_seconds(last: dict[str, str] | None) -> int:
    """Seconds before this browser may ask for the email again (the confirmation cap's)."""
    if not last:
        return 0
    svc = services()
    ready = datetime.fromisoformat(last["sent_at"]) + svc.policy.confirm_resend_after
    return max(0, math.ceil((ready - svc.clock()).total_seconds()))


def check_inbox_page(
    email: str, *, banner: str | None = None, status: int = 200
) -> tuple[str, int]:
    """ "Check your inbox": the address, a likely typo's fix, "wrong address?" and the resend.

    It depends only on what the visitor typed and on this browser's cooldown, never on
    whether the address was known.
    """
    last = session.get(INBOX)
    wait = wait_seconds(last)
    page = render_template(
        "check_inbox.html",
        email=email,
        first_name=last["first_name"] if last else "",
        suggestion=addresses.suggest(email),
        wait_minutes=math.ceil(wait / 60),
        wait_seconds=wait,
        banner=banner,
    )
    return page, status


@bp.post("/subscribe")
def subscribe_form() -> tuple[str, int] | str:
    email = request.form.get("email", "")
    if request.form.get("website"):
        # The honeypot field is hidden from people; only bots fill it in.
        remember(email.strip(), "", None, bot=True)
        return check_inbox_page(email.strip())
    # The browser fills the hidden field; one we do not know (an old browser) falls
    # back to the default zone, since the visitor could not correct it.
    time_zone = request.form.get("time_zone", "").strip()
    error = sign_up(
        email,
        request.form.get("first_name", ""),
        source="form",
        time_zone=time_zone if timing.is_time_zone(time_zone) else None,
    )
    first_name = request.form.get("first_name", "")
    if error:
        return sign_up_page(error=error, form={"email": email, "first_name": first_name}), 400
    remember(email.strip(), first_name, time_zone if timing.is_time_zone(time_zone) else None)
    return check_inbox_page(email.strip())


@bp.get("/check-inbox")
def check_inbox() -> BaseResponse | tuple[str, int]:
    """The "check your inbox" page again (after a reload), for this browser's last sign-up."""
    last = session.get(INBOX)
    if not last:
        return redirect(url_for("pages.index"))
    return check_inbox_page(last["email"])


@bp.post("/resend")
def resend() -> BaseResponse | tuple[str, int]:
    """Send the confirmation again, once the cooldown is over; sign_up applies its own caps."""
    last = session.get(INBOX)
    if not last:
        return redirect(url_for("pages.index"))
    wait = wait_seconds(last)
    if wait:
        minutes = math.ceil(wait / 60)
        when = "a minute" if minutes == 1 else f"{minutes} minutes"
        banner = f"We sent it only a moment ago. You can ask for another in {when}."
        return check_inbox_page(last["email"], banner=banner, status=429)
    if not last.get("bot"):
        error = sign_up(
            last["email"], last["first_name"], source="form", time_zone=last["time_zone"]
        )
        if error:
            return sign_up_page(error=error, form=last), 400
    remember(last["email"], last["first_name"], last["time_zone"], bot=bool(last.get("bot")))
    return check_inbox_page(last["email"], banner="Done: we've sent the email again.")
