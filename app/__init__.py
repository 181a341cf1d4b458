"""Onward: a self-hosted email drip course. `create_app` builds the web app."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from app.config import ConfigError, Settings
from app.logs import RedactingFilter
from app.services import Services

if TYPE_CHECKING:
    from flask import Flask


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> Flask:
    """The Flask app for `settings` (default: read from the environment).

    A setting read from the environment that cannot be used stops the process (the
    flask CLI: `init-db`, `run`, ...) with one line naming it and exit status 2.
    """
    # Imported here: every `app.*` import runs this module, and the worker, which never
    # builds the web app, would otherwise load Flask, Werkzeug, Click and Blinker.
    from flask import Flask

    if services is None:
        if settings is None:
            try:
                settings = Settings.from_env()
            except ConfigError as error:
                print(f"onward: {error}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
        services = Services(settings)
    app = Flask(__name__, instance_path=str(services.settings.instance_dir))
    app.config.update(
        SECRET_KEY=services.settings.secret_key,
        SECRET_KEY_FALLBACKS=list(services.settings.secret_key_fallbacks),
        # Bodies past this answer 413, chunked ones included (read through a limited stream).
        MAX_CONTENT_LENGTH=64 * 1024,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=services.settings.base_url.startswith("https://"),
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.extensions["onward"] = services
    # The development server's access log names every path, signed links included.
    _add_filter_once(logging.getLogger("werkzeug"))

    from app import cli, web
    from app.web import guard

    # Behind N reverse proxies, the visitor's address and scheme come from the headers
    # they set (rate limits and consent records need the real IP).
    guard.init_app(
        app,
        base_url=services.settings.base_url,
        trusted_proxies=services.settings.trusted_proxies,
    )
    web.init_app(app)
    cli.init_app(app)
    return app


def _add_filter_once(logger: logging.Logger) -> None:
    if not any(isinstance(existing, RedactingFilter) for existing in logger.filters):
        logger.addFilter(RedactingFilter())
