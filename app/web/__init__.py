"""The web side: public pages, signed-link pages, the JSON API and the dev pages."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, jsonify, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from app.services import Services
from app.tokens import ExpiredLink, InvalidLink

log = logging.getLogger(__name__)
csrf = CSRFProtect()


class TooManyAttempts(Exception):
    """One visitor tried to sign up too often in a short time; `retry_after` in seconds."""

    def __init__(self, retry_after: int = 60) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def services() -> Services:
    """The services of the running app."""
    svc: Services = current_app.extensions["onward"]
    return svc


#: What a visitor reads for the errors whose stock wording would otherwise show.
FRIENDLY = {
    404: (
        "Page not found",
        "We couldn't find that page. If you followed a link from one of our emails, "
        "please check it was copied whole, or start again from the home page.",
    ),
    405: (
        "That didn't work from here",
        "This page can't be used that way. Please go back and use the button on the page.",
    ),
}


def _wants_json() -> bool:
    return request.path.startswith(("/api/", "/webhooks/"))


def _error(status: int, title: str, message: str) -> tuple[Response | str, int]:
    if _wants_json():
        return jsonify(error={"code": title.lower().replace(" ", "_"), "message": message}), status
    return render_template("message.html", title=title, message=message), status


def init_app(app: Flask) -> None:
    """Register blueprints and the error pages."""
    from app.web import (
        admin,
        api,
        apiv1,
        clicks,
        dev,
        health,
        links,
        metrics,
        openapi,
        pages,
        reading,
        webhooks,
    )

    csrf.init_app(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(links.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(apiv1.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(reading.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(clicks.bp)
    # Signed links carry their own proof, and the API takes JSON only (which a
    # cross-site form cannot send): neither needs a CSRF token.
    csrf.exempt(links.bp)
    csrf.exempt(api.bp)
    csrf.exempt(apiv1.bp)  # bearer tokens, never cookies: nothing for a forged form to ride
    csrf.exempt(webhooks.bp)  # relays prove themselves by signature or basic auth
    # The console checks CSRF itself, after its session check (app/web/admin/auth.py).
    csrf.exempt(admin.bp)
    openapi.init_app(app)
    if app.extensions["onward"].settings.dev_pages:
        app.register_blueprint(dev.bp)

    @app.context_processor
    def the_course() -> dict[str, object]:
        # Every page names the course (its title, its number of steps) from the course file.
        return {"course": services().course}

    @app.after_request
    def no_store_behind_links(response: Response) -> Response:
        # The pages signed links open show personal data: never cache them.
        # (Referrer policy, CSP and the other headers: app/web/guard.py.)
        if request.blueprint == "links":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(ExpiredLink)
    def expired_link(_error_: ExpiredLink) -> tuple[Response | str, int]:
        return _error(
            410,
            "Link expired",
            "This link is too old to use. Sign up again and we'll send you a fresh one.",
        )

    @app.errorhandler(InvalidLink)
    def invalid_link(_error_: InvalidLink) -> tuple[Response | str, int]:
        return _error(
            400,
            "Link not valid",
            "This link isn't complete or isn't valid. Please use the link exactly as it "
            "appears in your email.",
        )

    @app.errorhandler(TooManyAttempts)
    def too_many_attempts(error: TooManyAttempts) -> tuple[Response, int]:
        body, status = _error(429, "Too many attempts", "Please wait a few minutes and try again.")
        response = current_app.make_response(body)
        response.headers["Retry-After"] = str(error.retry_after)
        return response, status

    @app.errorhandler(CSRFError)
    def csrf_failed(_error_: CSRFError) -> tuple[Response | str, int]:
        return _error(
            400,
            "Form expired",
            "The form was open too long or cookies are blocked. Please reload and try again.",
        )

    @app.errorhandler(SQLAlchemyError)
    def database_down(error: SQLAlchemyError) -> tuple[Response | str, int]:
        log.error("database error: %s", error.__class__.__name__, exc_info=True)
        return _error(
            503,
            "Temporarily unavailable",
            "We can't reach our database right now. Nothing was changed; please try "
            "again in a few minutes.",
        )

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response | str, int]:
        code = error.code or 500
        stock = error.description == type(error).description
        if code in FRIENDLY and stock and not _wants_json():
            # Werkzeug's stock wording is for developers; our own descriptions stay.
            return _error(code, *FRIENDLY[code])
        return _error(code, error.name, error.description or "")

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response | str, int]:
        log.exception("unexpected error on %s", request.path)
        return _error(
            500,
            "Something went wrong",
            "Sorry, something went wrong on our side. Please try again in a few minutes.",
        )
