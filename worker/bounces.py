"""`python -m worker.bounces`: poll BOUNCE_IMAP_URL for bounce and feedback-loop mail.

Each unseen message is read, its reports applied once, then it is marked seen.
SIGTERM (or Ctrl-C) stops the loop between polls.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from app.bounces import BounceSourceError, ImapMailbox, apply_letters
from app.checks import check_production
from app.config import ConfigError, Settings
from app.logs import configure_logging
from app.services import Services
from app.stopping import StopFlag

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Poll until told to stop (or once, with --once)."""
    parser = argparse.ArgumentParser(description="Apply bounces and complaints mailed to us.")
    parser.add_argument("--once", action="store_true", help="poll once and exit")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_format, process="bounces")
        services = Services(settings)
        check_production(services)
    except ConfigError as error:
        print(f"onward bounces: {error}", file=sys.stderr, flush=True)
        return 2
    hygiene = services.settings.hygiene
    if hygiene.bounce_imap_url is None:
        print("onward bounces: BOUNCE_IMAP_URL is not set: nothing to poll", file=sys.stderr)
        services.close()
        return 2
    source = ImapMailbox.from_url(hygiene.bounce_imap_url)
    stop = StopFlag()
    previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                for line in apply_letters(services, source.unseen()):
                    log.info("%s", line)
            except BounceSourceError as error:
                # The mailbox may be back next time; the mail waits there unseen.
                log.warning("cannot read bounce mail: %s", error)
            if args.once or stop.wait(hygiene.bounce_poll_seconds):
                return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        services.close()


if __name__ == "__main__":
    raise SystemExit(main())
