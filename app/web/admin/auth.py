"""The console's blueprint and its door: sign-in, sign-out and the session every page needs.

The session is a random token in its own cookie (HttpOnly, SameSite=Strict, Secure
under an https BASE_URL, sent only to /admin); the database keeps its hash and when it
was last used, so it ends after ADMIN_SESSION_IDLE without a request, or at sign-out.
"""

from __future__ import annotations

import hashlib

from flask import (
    Blueprint,
    Response,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from app import operators, ratelimit
from app.config import ConfigError
from app.db import session_scope
from app.models import Operator
from app.web import csrf, services

bp = Blueprint("admin", __name__, url_prefix="/admin")

COOKIE = "onward_admin"
#: Sign-in attempts allowed per address, and per IP, in LOGIN_WINDOW seconds.
LOGIN_LIMIT_PER_ADDRESS = 5
LOGIN_LIMIT_PER_IP = 20
LOGIN_WINDOW = 900
#: The one answer to every refused sign-in: it never says whether the address exists.
REFUSED = "That email address and password do not match an operator."
TOO_MANY = "Too many sign-in attempts. Please wait a few minutes and try again."
#: Pages a visitor without a session may open.
OPEN_ENDPOINTS = frozenset({"admin.login"})


def current_operator() -> Operator:
    """The operator signed in for this request (every console view has one)."""
    operator: Operator = g.operator
    return operator


@bp.before_request
def require_session() -> BaseResponse | None:
    """Send anyone without a live session to the sign-in page; nothing else is served.

    Then every POST must carry the form's CSRF token (the blueprint is exempt from the
    app-wide check only so that this one runs after the session check).
    """
    if request.endpoint in OPEN_ENDPOINTS:
        _check_csrf()
        return None
    token = request.cookies.get(COOKIE)
    operator = None
    if token:
        svc = services()
        with session_scope(svc.sessions) as session:
            operator = operators.session_operator(
                session, token, idle=svc.settings.admin_session_idle, now=svc.clock()
            )
            if operator is not None:
                session.expunge(operator)
    if operator is None:
        response = redirect(url_for("admin.login"))
        if token:
            response.delete_cookie(COOKIE, path=bp.url_prefix)
        return response
    g.operator = operator
    _check_csrf()
    return None


def _check_csrf() -> None:
    """Refuse a POST without the form's CSRF token (answered 400 by the app's handler)."""
    if request.method == "POST":
        csrf.protect()


@bp.after_request
def never_cache(response: Response) -> Response:
    """Console pages show personal data: no cache keeps them.

    Their URLs hold no secrets, and the CSRF check over https wants a same-origin
    Referer: the console sends it to itself, and to no one else.
    """
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _within_limits(email: str) -> bool:
    """Count one sign-in attempt against the visitor's IP and the address tried."""
    svc = services()
    try:
        redis = svc.redis
    except ConfigError:
        return True
    prefix = f"{svc.settings.queue_name}:ratelimit:admin-login"
    # The address is hashed: the rate limiter's keys do not list who tried.
    address = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    by_ip = ratelimit.allow(
        redis,
        f"{prefix}:ip:{request.remote_addr}",
        limit=LOGIN_LIMIT_PER_IP,
        window_seconds=LOGIN_WINDOW,
    )
    by_address = ratelimit.allow(
        redis,
        f"{prefix}:address:{address}",
        limit=LOGIN_LIMIT_PER_ADDRESS,
        window_seconds=LOGIN_WINDOW,
    )
    return by_ip and by_address


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | tuple[str, int] | str:
    """The sign-in form; a right address and password open a session."""
    if request.method == "GET":
        return render_template("admin/login.html", error=None, email="")
    email = request.form.get("email", "")[:320]
    password = request.form.get("password", "")[:1024]
    if not _within_limits(email):
        return render_template("admin/login.html", error=TOO_MANY, email=email), 429
    svc = services()
    now = svc.clock()
    with session_scope(svc.sessions) as session:
        operator = operators.authenticate(session, email, password, now=now)
        token = operators.open_session(session, operator, now=now) if operator else None
    if token is None:
        return render_template("admin/login.html", error=REFUSED, email=email), 401
    response = redirect(url_for("admin.overview"))
    response.set_cookie(
        COOKIE,
        token,
        path=bp.url_prefix,
        httponly=True,
        secure=svc.settings.base_url.startswith("https://"),
        samesite="Strict",
    )
    return response


@bp.post("/logout")
def logout() -> BaseResponse:
    """End the session, here and in the database."""
    svc = services()
    with session_scope(svc.sessions) as session:
        operators.close_session(session, request.cookies.get(COOKIE, ""))
    response = redirect(url_for("admin.login"))
    response.delete_cookie(COOKIE, path=bp.url_prefix)
    return response
