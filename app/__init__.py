"""Onward: a self-hosted email drip course. `create_app` builds the web app."""

from __future__ import annotations

from flask import Flask

from app.config import Settings
from app.services import Services


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> Flask:
    """The Flask app for `settings` (default: read from the environment)."""
    if services is None:
        services = Services(settings or Settings.from_env())
    app = Flask(__name__, instance_path=str(services.settings.instance_dir))
    app.config.update(
        SECRET_KEY=services.settings.secret_key,
        MAX_CONTENT_LENGTH=64 * 1024,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=services.settings.base_url.startswith("https://"),
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.extensions["onward"] = services

    from app import cli, web

    web.init_app(app)
    cli.init_app(app)
    return app
