"""`python -m worker`: an RQ worker for the sending queue, with Onward's checks and logging.

SIGTERM (or Ctrl-C) asks for a warm shutdown: the batch in hand is finished, then
the worker exits. A worker killed outright loses nothing either: its claims lapse
and the next tick queues the work again.
"""

from __future__ import annotations

import argparse
import sys

from rq import SimpleWorker

from app.checks import start_process
from app.config import ConfigError
from worker.jobs import use_services


def main(argv: list[str] | None = None) -> int:
    """Work the queue until told to stop (or until it is empty, with --burst)."""
    parser = argparse.ArgumentParser(description="Send the course emails queued in Redis.")
    parser.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    parser.add_argument("--name", help="worker name (default: host and pid)")
    args = parser.parse_args(argv)
    try:
        services = start_process("worker")
    except ConfigError as error:
        print(f"onward worker: {error}", file=sys.stderr, flush=True)
        return 2
    use_services(services)
    try:
        worker = SimpleWorker([services.queue], connection=services.redis, name=args.name)
        worker.work(burst=args.burst, with_scheduler=False)
    finally:
        services.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
