"""Onward: a self-hosted email drip course. `create_app` builds the web app."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

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
    if services.settings.trusted_proxies:
        # Behind N reverse proxies, take the visitor's address and scheme from the
        # headers they set (rate limits and consent records need the real IP).
        hops = services.settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]

    from app import cli, web

    web.init_app(app)
    cli.init_app(app)
    return app
