"""The console's pages for other systems: API tokens, and webhook endpoints with their attempts.

Behind `auth.require_session` like every console page; each change is a POST with a
CSRF token and leaves an audit entry naming the operator.
"""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from app import apitokens, operators, outbound
from app.db import session_scope
from app.models import ApiScope, WebhookEndpoint
from app.web import services
from app.web.admin.auth import bp, current_operator


def _tokens_page(new_token: str | None = None, error: str | None = None) -> str:
    svc = services()
    with session_scope(svc.sessions) as session:
        tokens = apitokens.all_tokens(session)
        session.expunge_all()
    return render_template(
        "admin/tokens.html",
        tokens=tokens,
        scopes=list(ApiScope),
        new_token=new_token,
        error=error,
    )


@bp.get("/tokens")
def tokens() -> str:
    """API tokens: label, scope, who made it, when last used; make or revoke one."""
    return _tokens_page()


@bp.post("/tokens")
def create_token() -> tuple[str, int] | str:
    """Make a token and show it once, on this page's answer (never in a cookie or a URL)."""
    svc = services()
    now = svc.clock()
    operator = current_operator()
    try:
        with session_scope(svc.sessions) as session:
            row, token = apitokens.create_token(
                session,
                request.form.get("label", "")[:200],
                request.form.get("scope", ""),
                operator_email=operator.email,
                now=now,
            )
            operators.record(
                session,
                operator,
                "create-token",
                subscriber_id=None,
                detail=f"{row.label} ({row.scope})",
                now=now,
            )
    except apitokens.TokenError as error:
        return _tokens_page(error=f"The token was not made: {error}."), 400
    return _tokens_page(new_token=token)


@bp.post("/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int) -> BaseResponse:
    """Revoke a token for good: calls with it are refused from now on."""
    svc = services()
    now = svc.clock()
    with session_scope(svc.sessions) as session:
        if apitokens.revoke(session, token_id, now=now):
            operators.record(
                session,
                current_operator(),
                "revoke-token",
                subscriber_id=None,
                detail=f"token {token_id}",
                now=now,
            )
            flash("The token was revoked.")
    return redirect(url_for("admin.tokens"))


@bp.get("/webhooks")
def webhooks() -> str:
    """Webhook endpoints, their events and secrets, and any that were disabled."""
    svc = services()
    with session_scope(svc.sessions) as session:
        found = outbound.endpoints(session)
        session.expunge_all()
    return render_template(
        "admin/webhooks.html", endpoints=found, event_types=outbound.EVENT_TYPES, error=None
    )


@bp.post("/webhooks")
def create_webhook() -> BaseResponse | tuple[str, int]:
    """Add an endpoint for the events ticked."""
    svc = services()
    now = svc.clock()
    try:
        with session_scope(svc.sessions) as session:
            made = outbound.create_endpoint(
                session,
                request.form.get("url", "")[:2100],
                request.form.getlist("events"),
                now=now,
            )
            operators.record(
                session,
                current_operator(),
                "create-webhook",
                subscriber_id=None,
                detail=made.url,
                now=now,
            )
            made_id = made.id
    except outbound.EndpointError as error:
        with session_scope(svc.sessions) as session:
            found = outbound.endpoints(session)
            session.expunge_all()
        page = render_template(
            "admin/webhooks.html",
            endpoints=found,
            event_types=outbound.EVENT_TYPES,
            error=f"The endpoint was not added: {error}.",
        )
        return page, 400
    flash("The endpoint was added. Give its signing secret to the receiver.")
    return redirect(url_for("admin.webhook", endpoint_id=made_id))


@bp.get("/webhooks/<int:endpoint_id>")
def webhook(endpoint_id: int) -> str:
    """One endpoint: its secret, and the log of delivery attempts, newest first."""
    svc = services()
    with session_scope(svc.sessions) as session:
        found = session.get(WebhookEndpoint, endpoint_id)
        if found is None:
            abort(404)
        attempts = outbound.recent_attempts(session, endpoint_id)
        session.expunge_all()
    return render_template("admin/webhook.html", endpoint=found, attempts=attempts)


@bp.post("/webhooks/<int:endpoint_id>/<action>")
def webhook_action(endpoint_id: int, action: str) -> BaseResponse:
    """Enable a disabled endpoint again, or delete one."""
    if action not in ("enable", "delete"):
        abort(404)
    svc = services()
    now = svc.clock()
    with session_scope(svc.sessions) as session:
        found = session.get(WebhookEndpoint, endpoint_id)
        if found is None:
            abort(404)
        if action == "delete":
            session.delete(found)
        else:
            outbound.enable(session, endpoint_id)
        operators.record(
            session,
            current_operator(),
            f"{action}-webhook",
            subscriber_id=None,
            detail=found.url,
            now=now,
        )
    if action == "delete":
        flash("The endpoint was deleted.")
        return redirect(url_for("admin.webhooks"))
    flash("The endpoint is enabled; its waiting events go out at the next tick.")
    return redirect(url_for("admin.webhook", endpoint_id=endpoint_id))
