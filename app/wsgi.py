"""The production web entry point: `gunicorn --preload app.wsgi:application`.

Reads the settings, sets up logging, runs the startup checks and builds the app;
a setting that would be unsafe stops the server with one line saying what to fix
(with --preload, before any worker starts; without it, each worker refuses to boot).
"""

from __future__ import annotations

import sys

from app import create_app
from app.checks import check_emails, check_production
from app.config import ConfigError, Settings
from app.logs import configure_logging
from app.services import Services

try:
    _settings = Settings.from_env()
    configure_logging(_settings.log_format, process="web")
    _services = Services(_settings)
    check_production(_services)
    check_emails(_services)
    # Under `gunicorn --preload` the checks run once, before the workers fork:
    # none of them may inherit the database connection the check opened.
    _services.close()
except ConfigError as error:
    print(f"onward web: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None

application = create_app(services=_services)
