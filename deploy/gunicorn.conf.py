"""Gunicorn settings for the Onward web container.

    gunicorn --config deploy/gunicorn.conf.py app.wsgi:application

The master imports the app once (preload), so the startup checks run once, before
any worker forks: with ONWARD_ENV=production an unsafe setting stops gunicorn at once,
with one line saying what to fix (without preload, gunicorn would start and lose the
failing workers over and over). app.wsgi closes the check's database connection first.

Every log line, gunicorn's own and the access log included, goes through Onward's
logging (app.wsgi configures it): text or JSON as LOG_FORMAT says, with signed link
tokens and URL passwords redacted (the access log would otherwise print /confirm/<token>).
"""

from __future__ import annotations

import os

#: The container's port (the Dockerfile EXPOSEs it; compose publishes it).
bind = "0.0.0.0:8000"
#: Load the app in the master, before forking (see above).
preload_app = True
#: Worker processes; each opens its own database and Redis connections when first needed.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
#: Seconds a request may take before its worker is restarted.
timeout = 30
#: Seconds the workers get to finish their requests after SIGTERM; below compose's
#: stop_grace_period for web (30 s), so Docker never has to kill a worker mid-request.
graceful_timeout = 25
#: Behind a reverse proxy that keeps connections open.
keepalive = 5
#: Worker heartbeat files in memory, not on the container's overlay filesystem.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
#: No runtime control socket (gunicorn 25.1+): nothing in the container uses it, and its
#: default place is under $HOME, which the image's user cannot write.
control_socket_disable = True

#: Gunicorn's loggers hand their records to the root logger, which app.wsgi configures;
#: no handler of gunicorn's own.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": []},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
    },
    "handlers": {},
    "formatters": {},
}
