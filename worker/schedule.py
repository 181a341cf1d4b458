"""The periodic tick: find due emails in the database and queue them for the workers.

Run it as `python -m worker.schedule` (one or more; a second one sends nothing twice).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from datetime import timedelta

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from app import drip, figures, outbound
from app.checks import start_process
from app.config import ConfigError
from app.db import session_scope
from app.sending import dispatch
from app.services import Services
from app.signups import queue_waiting_signups
from app.stopping import StopFlag
from app.ticks import record_tick

log = logging.getLogger(__name__)


#: How often the scheduler does its housekeeping (forgetting stale sign-ups).
HOUSEKEEPING_INTERVAL = timedelta(hours=1)


def tick(services: Services) -> int:
    """Resume timed pauses that ran out, queue the sign-ups left waiting, then every email
    due now; return how many emails were queued."""
    started = time.monotonic()
    with session_scope(services.sessions) as session:
        resumed = drip.resume_due(session, policy=services.policy, now=services.clock())
    if resumed:
        log.info("resumed %d courses whose pause ran out", resumed)
    signups = queue_waiting_signups(services, now=services.clock())
    if signups:
        log.info("queued %d sign-ups left waiting", signups)
    queued = dispatch(services, now=services.clock())
    queue_webhooks(services)
    record_tick(services, time.monotonic() - started)
    return queued


#: The one webhook delivery job: a tick never queues a second while one waits or runs.
WEBHOOK_JOB_ID = "deliver-webhooks"


def queue_webhooks(services: Services) -> bool:
    """Queue the webhook delivery job if events are due and it is not already queued."""
    with session_scope(services.sessions) as session:
        due = outbound.due_count(session, now=services.clock())
    if not due:
        return False
    queue = services.queue
    existing = queue.fetch_job(WEBHOOK_JOB_ID)
    if existing is not None:
        if existing.get_status(refresh=False) in ("queued", "started", "deferred", "scheduled"):
            return False
        existing.delete()
    queue.enqueue(
        "worker.jobs.deliver_webhooks",
        job_id=WEBHOOK_JOB_ID,
        # Each try of each event waits at most TIMEOUT_SECONDS.
        job_timeout=outbound.BATCH * outbound.TIMEOUT_SECONDS + 60,
        result_ttl=0,
        description=f"deliver {due} webhook events",
    )
    return True


def check_window_volume(services: Services) -> tuple[int, int] | None:
    """Warn when more steps are due in one send window than SEND_RATE can send in it."""
    with session_scope(services.sessions) as session:
        volume = drip.window_volume(
            session, policy=services.policy, rate=services.settings.send_rate, now=services.clock()
        )
    if volume is not None and volume[0] > volume[1]:
        log.warning(
            "%d steps are due within one send window but SEND_RATE sends %d in it: "
            "the rest go after the window closes, later that day",
            *volume,
        )
    return volume


def housekeeping(services: Services) -> int:
    """Forget sign-ups that were never confirmed; return how many."""
    with session_scope(services.sessions) as session:
        return drip.forget_unconfirmed(session, now=services.clock())


def run_forever(services: Services, stop: StopFlag | threading.Event) -> None:
    """Tick every TICK_INTERVAL until `stop` is set; outages are logged and retried."""
    interval = services.settings.tick_seconds
    log.info("scheduler ticking every %ss", interval)
    # Counting for the console can take seconds on a big list: never in the tick's way.
    figures.refresh_in_background(services, stop)
    next_housekeeping = services.clock()
    while not stop.is_set():
        try:
            if services.clock() >= next_housekeeping:
                forgotten = housekeeping(services)
                if forgotten:
                    log.info("forgot %d sign-ups never confirmed", forgotten)
                check_window_volume(services)
                next_housekeeping = services.clock() + HOUSEKEEPING_INTERVAL
            queued = tick(services)
            if queued:
                log.info("queued %d due emails", queued)
        except SQLAlchemyError as error:
            log.error("database unavailable, will retry: %s", error.__class__.__name__)
        except RedisError as error:
            log.error("Redis unavailable, will retry: %s", error)
        stop.wait(interval)


def main(argv: list[str] | None = None) -> int:
    """Command line: tick forever, or once with --once."""
    parser = argparse.ArgumentParser(description="Queue due course emails.")
    parser.add_argument("--once", action="store_true", help="tick once and exit")
    args = parser.parse_args(argv)
    stop = StopFlag()

    # Before the start-up checks, so a stop asked for during them is a clean exit too.
    signal.signal(signal.SIGTERM, stop.handler)
    signal.signal(signal.SIGINT, stop.handler)
    try:
        services = start_process("scheduler")
    except ConfigError as error:
        print(f"onward scheduler: {error}", file=sys.stderr, flush=True)
        return 2
    try:
        if args.once:
            print(f"queued {tick(services)}")
            return 0
        run_forever(services, stop)
        log.info("scheduler stopped")
        return 0
    finally:
        services.close()


if __name__ == "__main__":
    raise SystemExit(main())
