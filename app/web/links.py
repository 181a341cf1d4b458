"""Pages behind the signed links in emails: confirm, pause and resume, unsubscribe, manage.

The token in the URL is the proof: these views need no cookie and no CSRF token,
which RFC 8058 one-click unsubscribe requires. A GET never changes anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Response, redirect, render_template, request, url_for
from sqlalchemy.orm import Session
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response as BaseResponse

from app import drip, store
from app.db import session_scope
from app.models import Subscriber, SubscriberStatus
from app.tokens import Purpose
from app.web import services
from app.web.pacing import PACING_ACTIONS, SEND_AT_ONCE, in_words, pace, pacing_context
from app.web.pages import check_inbox_page, client_ip, remember, send_soon, sign_up

bp = Blueprint("links", __name__)
S = SubscriberStatus


@contextmanager
def subscriber_from(purpose: Purpose, token: str) -> Iterator[tuple[Session, Subscriber]]:
    """The subscription a signed link points at, in a session that commits on success."""
    key = services().signer.read(purpose, token)
    with session_scope(services().sessions) as session:
        subscriber = drip.find_by_key(session, key)
        if subscriber is None:
            raise NotFound(
                "We couldn't find this subscription. It may have been deleted at your request."
            )
        yield session, subscriber


#: What a subscriber can do to their subscription from a link or the manage page.
ACTIONS = ("pause", "resume", "unsubscribe", "delete", *PACING_ACTIONS)


def take_action(action: str, session: Session, subscriber: Subscriber) -> bool:
    """Do one of ACTIONS to the subscription; say whether it changed anything.

    A pacing action with bad input raises InvalidPause or InvalidTimeZone.
    """
    svc = services()
    now = svc.clock()
    if action in PACING_ACTIONS:
        return pace(action, session, subscriber, request.form)
    if action == "pause":
        return drip.pause(session, subscriber, now=now)
    if action == "resume":
        return drip.resume(session, subscriber, policy=svc.policy, now=now)
    if action == "unsubscribe":
        return drip.unsubscribe(session, subscriber, keys=svc.mailbox_keys, now=now)
    drip.forget(session, subscriber, keys=svc.mailbox_keys, now=now)
    return True


@bp.route("/confirm/<token>", methods=["GET", "POST"])
def confirm(token: str) -> str:
    with subscriber_from(Purpose.CONFIRM, token) as (session, subscriber):
        if request.method != "POST" or subscriber.status != S.PENDING:
            # Only the button (a POST) confirms: mail scanners GET and HEAD links too.
            return render_template("confirm.html", subscriber=subscriber, token=token)
        svc = services()
        now = svc.clock()
        drip.confirm(
            session,
            subscriber,
            ip=client_ip(),
            user_agent=request.user_agent.string,
            now=now,
            total_steps=svc.policy.total_steps,
        )
        subscriber_id = subscriber.id
        manage_url = svc.links(subscriber.key).manage_url
        # Step 1 goes now; step 2 one interval later, in the subscriber's window.
        step_two = in_words(drip.next_step_at(subscriber, svc.policy, now=now), subscriber)
    send_soon(subscriber_id)
    return render_template("confirmed.html", manage_url=manage_url, step_two=step_two)


@bp.route("/pause/<token>", methods=["GET", "POST"])
def pause(token: str) -> str:
    svc = services()
    with subscriber_from(Purpose.PAUSE, token) as (session, subscriber):
        action = request.form.get("action") if request.method == "POST" else None
        changed = action in {"pause", "resume"} and take_action(action, session, subscriber)
        return render_template(
            "pause.html",
            subscriber=subscriber,
            token=token,
            resumed=changed and action == "resume",
            next_when=in_words(subscriber.next_send_at, subscriber),
            manage_url=svc.links(subscriber.key).manage_url,
        )


@bp.route("/unsubscribe/<token>", methods=["GET", "POST"])
def unsubscribe(token: str) -> str:
    """GET shows one button; POST (the button, or RFC 8058 one-click) unsubscribes at once."""
    svc = services()
    with subscriber_from(Purpose.UNSUBSCRIBE, token) as (session, subscriber):
        if request.method == "POST":
            drip.unsubscribe(session, subscriber, keys=svc.mailbox_keys, now=svc.clock())
        return render_template(
            "unsubscribe.html",
            subscriber=subscriber,
            token=token,
            manage_url=svc.links(subscriber.key).manage_url,
        )


#: The banner after each manage action (post/redirect/get with `?done=<action>`).
DONE = {
    "pause": "Done: your course is paused. We won't send anything until you resume.",
    "resume": "Done: your course is running again.",
    "unsubscribe": "Done: you're unsubscribed. We won't send you any more emails.",
    "pause-week": "Done: your course is paused for a week.",
    "pause-until": "Done: your course is paused until the day you chose.",
    "send-now": "Done: your next step is on its way now.",
    "start-again": "Done: you're starting again from step 1. It's on its way now.",
    "time-zone": "Done: your time zone is changed.",
    "unchanged": "Nothing needed changing: your subscription was already like that.",
}


@bp.post("/resubscribe/<token>")
def resubscribe(token: str) -> tuple[str, int] | str:
    """Sign the address up again: a new confirmation, then the course continues where it
    left off (the button on the unsubscribed page)."""
    with subscriber_from(Purpose.UNSUBSCRIBE, token) as (_session, subscriber):
        email, first_name, time_zone = subscriber.email, subscriber.first_name, subscriber.time_zone
    error = sign_up(email, first_name, source="resubscribe", time_zone=time_zone)
    if error:
        return render_template("message.html", title="We couldn't sign you up", message=error), 400
    remember(email, first_name, time_zone)
    return check_inbox_page(email)


@bp.get("/manage/<token>")
def manage(token: str) -> str:
    with subscriber_from(Purpose.MANAGE, token) as (session, subscriber):
        return manage_page(
            session, subscriber, token, banner=DONE.get(request.args.get("done", ""))
        )


def manage_page(
    session: Session,
    subscriber: Subscriber,
    token: str,
    *,
    error: str | None = None,
    banner: str | None = None,
) -> str:
    """The manage page: status, steps received (each readable again), pacing actions."""
    svc = services()
    total = svc.course.step_count
    received = drip.progress(subscriber, total)
    links = svc.links(subscriber.key)
    return render_template(
        "manage.html",
        subscriber=subscriber,
        token=token,
        received=received,
        total=total,
        # Each step received, linked to its "read in your browser" page.
        read_urls=[
            (step.number, step.subject, links.step_url(step.number))
            for step in svc.course.steps[:received]
        ],
        pacing=pacing_context(session, subscriber, error=error),
        banner=banner,
    )


@bp.post("/manage/<token>/<action>")
def manage_action(token: str, action: str) -> BaseResponse | tuple[str, int] | str:
    with subscriber_from(Purpose.MANAGE, token) as (session, subscriber):
        if action not in ACTIONS:
            raise NotFound("There is no such action.")
        if action == "delete" and request.form.get("confirm") != "yes":
            # Erasing cannot be undone: the first press only asks.
            return render_template("delete.html", subscriber=subscriber, token=token)
        try:
            changed = take_action(action, session, subscriber)
        except (drip.InvalidPause, drip.InvalidTimeZone) as error:
            session.rollback()
            return manage_page(session, subscriber, token, error=str(error)), 400
        subscriber_id = subscriber.id
    if changed and action in SEND_AT_ONCE:
        send_soon(subscriber_id)
    if action == "delete":
        return render_template(
            "message.html",
            title="Your data is deleted",
            message="We have erased your address and everything we kept about your "
            "subscription. You won't hear from us again.",
        )
    done = action if changed else "unchanged"
    return redirect(url_for("links.manage", token=token, done=done), code=303)


@bp.get("/manage/<token>/data.json")
def export(token: str) -> Response:
    """Everything kept about the address, as a JSON download."""
    with subscriber_from(Purpose.MANAGE, token) as (session, subscriber):
        data = address_data(session, subscriber)
    return Response(
        json.dumps(data, indent=2),
        mimetype="application/json",
        headers={"Content-Disposition": "attachment; filename=onward-my-data.json"},
    )


def _when(value: object) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else None


def address_data(session: Session, subscriber: Subscriber) -> dict[str, object]:
    """Every record of the subscription's address, as plain data: the subscription, each
    earlier one, each with its consent record and ledger, and each sign-up request."""
    email = subscriber.email
    earlier = [s for s in store.subscriptions_of(session, email) if s.id != subscriber.id]
    return {
        **subscriber_data(subscriber),
        "earlier_subscriptions": [subscriber_data(s) for s in earlier],
        "signup_requests": [
            {
                "first_name": r.first_name,
                "time_zone": r.time_zone,
                "source": r.source,
                "wording": r.wording,
                "ip": r.ip,
                "user_agent": r.user_agent,
                "created_at": _when(r.created_at),
                "processed_at": _when(r.processed_at),
                "outcome": r.outcome,
            }
            for r in store.signup_requests_of(session, email)
        ],
    }


def subscriber_data(subscriber: Subscriber) -> dict[str, object]:
    """One subscription, its consent record and its ledger, as plain data."""
    consent = subscriber.consent
    return {
        "email": subscriber.email,
        "first_name": subscriber.first_name,
        "status": str(subscriber.status),
        "steps_received": drip.progress(subscriber, services().course.step_count),
        "next_step": subscriber.next_step,
        "course_round": subscriber.course_round,
        "signed_up_at": _when(subscriber.created_at),
        "confirmations_requested": subscriber.confirmations_requested,
        "confirmation_requested_at": _when(subscriber.confirmation_requested_at),
        "next_email_at": _when(subscriber.next_send_at),
        "paused_at": _when(subscriber.paused_at),
        "paused_until": _when(subscriber.resume_at),
        "ended_at": _when(subscriber.ended_at),
        "time_zone": subscriber.time_zone,
        "last_error": subscriber.last_error,
        "consent": {
            "source": consent.source,
            "wording": consent.wording,
            "ip": consent.ip,
            "user_agent": consent.user_agent,
            "requested_at": _when(consent.requested_at),
            "confirmed_at": _when(consent.confirmed_at),
            "confirmed_ip": consent.confirmed_ip,
            "confirmed_user_agent": consent.confirmed_user_agent,
        },
        "emails": [
            {
                "email": delivery.template,
                "message_id": delivery.message_id,
                "status": str(delivery.status),
                "attempts": delivery.attempts,
                "started_at": _when(delivery.started_at),
                "sent_at": _when(delivery.sent_at),
                "delivered_at": _when(delivery.delivered_at),
                "error": delivery.error,
            }
            for delivery in subscriber.deliveries
        ],
        # Kept only with CLICK_TRACKING=per-person.
        "links_followed": [
            {"email": click.template, "link": click.link, "at": _when(click.at)}
            for click in subscriber.clicks
        ],
    }
