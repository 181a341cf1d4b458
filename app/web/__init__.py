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
    """One visitor tried to sign up too often in a short time."""


def services() -> Services:
    """The services of the running app."""
    svc: Services = current_app.extensions["onward"]
    return svc


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
    def protective_headers(response: Response) -> Response:
        # Signed links sit in URLs: never leak them in a Referer, never cache the
        # pages they open (they show personal data), and never frame our pages.
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
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
    def too_many_attempts(_error_: TooManyAttempts) -> tuple[Response | str, int]:
        return _error(429, "Too many attempts", "Please wait a few minutes and try again.")

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
        return _error(error.code or 500, error.name, error.description or "")

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response | str, int]:
        log.exception("unexpected error on %s", request.path)
        return _error(
            500,
            "Something went wrong",
            "Sorry, something went wrong on our side. Please try again in a few minutes.",
        )
