"""Sign-ups as intents: recorded by the web in one INSERT, decided by a job.

The web request does the same work whatever the address's state (normalise,
record, enqueue), so its timing tells nobody whether an address is subscribed.
The job (or, if Redis was down, the scheduler's tick) decides what happens and
sends what that needs: a confirmation, or a notice to an address whose course
runs or ran.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from app import drip
from app.db import session_scope
from app.sending import dispatch, enqueue_once, send_notice
from app.services import Services

log = logging.getLogger(__name__)

PROCESS_SIGNUP_JOB = "worker.jobs.process_signup"
#: The tick leaves requests this young to the job the web queued for them.
TICK_GRACE = timedelta(seconds=30)
#: The tick queues at most this many waiting requests at a time.
TICK_BATCH = 500


def signup_job_id(request_id: int) -> str:
    """The job id of a sign-up request: queuing it twice queues it once."""
    return f"signup-{request_id}"


def enqueue_signup(services: Services, request_id: int) -> None:
    """Queue the job that decides a recorded sign-up (RedisError if Redis is down)."""
    enqueue_once(
        services,
        PROCESS_SIGNUP_JOB,
        request_id,
        job_id=signup_job_id(request_id),
        description=f"decide sign-up request {request_id}",
    )


def process_signup(services: Services, request_id: int) -> str:
    """Decide a recorded sign-up and send what it needs; return what it did."""
    now = services.clock()
    with session_scope(services.sessions) as session:
        result = drip.take_signup(session, request_id, policy=services.policy, now=now)
    if result is None:
        return "already decided"
    if result.outcome in (
        drip.SubscribeOutcome.CREATED,
        drip.SubscribeOutcome.CONFIRMATION_RESENT,
    ):
        dispatch(services, now=services.clock(), ids=[result.subscriber_id])
    elif result.outcome == drip.SubscribeOutcome.NOTICE:
        notice = send_notice(services, result.subscriber_id, request_id)
        return f"{result.outcome}: {notice}"
    return str(result.outcome)


def queue_waiting_signups(services: Services, *, now: datetime) -> int:
    """Queue the sign-ups whose job was never queued (Redis was down) or was lost."""
    with session_scope(services.sessions) as session:
        waiting = drip.waiting_signups(session, now=now - TICK_GRACE, limit=TICK_BATCH)
    for request_id in waiting:
        enqueue_signup(services, request_id)
    return len(waiting)
