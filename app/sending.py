"""Turning due emails into queued batches, and batches into sent, recorded emails."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from jinja2 import TemplateError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from app import drip
from app.db import session_scope
from app.emails import EmailTemplateError, Recipient, build_message, render
from app.mailer import PermanentFailure, RelayUnavailable, TemporaryFailure
from app.services import Services

log = logging.getLogger(__name__)

SEND_BATCH_JOB = "worker.jobs.send_batch"
#: How long a finished job's record stays in Redis (the ledger is the real record).
JOB_RESULT_TTL = 3600
JOB_FAILURE_TTL = 7 * 24 * 3600
#: A batch job is stopped after this long; well inside the claim lease, so a
#: stopped job's subscriptions are not claimed again while it still runs.
JOB_TIMEOUT = 300


@dataclass
class BatchReport:
    """What one batch did, counted by outcome."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: str, count: int = 1) -> None:
        """Count `count` subscribers with this outcome."""
        self.counts[outcome] += count

    def as_dict(self) -> dict[str, int]:
        """The counts, for job results and logs."""
        return dict(self.counts)


def batch_job_id(subscriber_ids: list[int], claimed_at: datetime) -> str:
    """A job id that is the same whenever the same claim is enqueued again."""
    material = f"{claimed_at.isoformat()}:{','.join(map(str, subscriber_ids))}"
    return "send-" + hashlib.sha256(material.encode()).hexdigest()[:24]


def dispatch(services: Services, *, now: datetime, ids: list[int] | None = None) -> int:
    """Claim due subscriptions and enqueue them in batches; return how many were queued.

    `ids` limits the claim to those subscriptions (the web app uses it to send a
    confirmation at once). Claims whose job cannot be queued are given back, so
    the next tick tries again: Redis holds nothing the database cannot rebuild.
    """
    settings = services.settings
    queued = 0
    while True:
        with session_scope(services.sessions) as session:
            claimed = drip.claim_due(
                session,
                now=now,
                lease=settings.claim_lease,
                limit=settings.batch_size,
                ids=ids,
            )
        if not claimed:
            return queued
        try:
            services.queue.enqueue(
                SEND_BATCH_JOB,
                claimed,
                job_id=batch_job_id(claimed, now),
                job_timeout=JOB_TIMEOUT,
                result_ttl=JOB_RESULT_TTL,
                failure_ttl=JOB_FAILURE_TTL,
                description=f"send {len(claimed)} due emails",
            )
        except RedisError:
            with session_scope(services.sessions) as session:
                drip.release_claims(session, claimed)
            raise
        queued += len(claimed)
        if ids is not None or len(claimed) < settings.batch_size:
            return queued


def send_batch(services: Services, subscriber_ids: list[int]) -> BatchReport:
    """Send each listed subscription its due email over one SMTP connection.

    Each email is written to the ledger before it is handed to the relay and
    marked sent right after, so a retry or a second worker never sends it twice.
    """
    report = BatchReport()
    pending = list(subscriber_ids)
    with services.mailer() as mailer:
        while pending:
            subscriber_id = pending.pop(0)
            now = services.clock()
            with session_scope(services.sessions) as session:
                planned = drip.begin_delivery(
                    session,
                    subscriber_id,
                    policy=services.policy,
                    keys=services.mailbox_keys,
                    domain=services.sender.domain,
                    now=now,
                )
            if planned is None:
                # Paused, unsubscribed, already sent or being sent elsewhere.
                report.add("skipped")
                continue
            recipient = Recipient(
                email=planned.email,
                first_name=planned.first_name,
                links=services.links(planned.subscriber_key),
                message_id=planned.message_id,
            )
            try:
                rendered = render(
                    services.catalog.get(planned.template), services.sender, recipient
                )
                message = build_message(rendered, services.sender, recipient, now=now)
            except (ValueError, TemplateError, EmailTemplateError) as error:
                # One email that cannot be built must not hold up the batch; it is
                # retried with backoff (a fixed template goes out on the next try).
                log.exception("cannot build email for delivery %s", planned.delivery_id)
                _record_deferral(services, planned, repr(error), now, against_recipient=True)
                report.add("deferred")
                continue
            try:
                mailer.send(message, envelope_from=services.return_path(planned.message_id))
            except RelayUnavailable as error:
                _record_deferral(services, planned, str(error), now, against_recipient=False)
                retry_at = now + drip.RETRY_DELAYS[0]
                with session_scope(services.sessions) as session:
                    drip.release_claims(session, pending, retry_at=retry_at)
                log.warning("SMTP relay unavailable, %d emails wait: %s", len(pending) + 1, error)
                report.add("deferred", 1 + len(pending))
                break
            except TemporaryFailure as error:
                _record_deferral(services, planned, str(error), now, against_recipient=True)
                report.add("deferred")
                continue
            except PermanentFailure as error:
                with session_scope(services.sessions) as session:
                    drip.fail_delivery(
                        session,
                        planned.delivery_id,
                        error=str(error),
                        keys=services.mailbox_keys,
                        now=now,
                    )
                log.info("subscriber %s bounced: %s", planned.subscriber_id, error)
                report.add("bounced")
                continue
            _record_sent(services, planned.delivery_id, now)
            report.add("sent")
    return report


def _record_sent(services: Services, delivery_id: int, now: datetime) -> None:
    """Mark one email sent; retried once, since the relay already has it."""
    for attempt in (1, 2):
        try:
            with session_scope(services.sessions) as session:
                drip.finish_delivery(session, delivery_id, policy=services.policy, now=now)
            return
        except SQLAlchemyError:
            if attempt == 2:
                # The ledger row stays `sending`; when its lease lapses the email is
                # sent again with the same Message-ID (at least once, never lost).
                raise
            log.warning("recording delivery %s failed, retrying", delivery_id, exc_info=True)


def _record_deferral(
    services: Services,
    planned: drip.PlannedEmail,
    error: str,
    now: datetime,
    *,
    against_recipient: bool,
) -> None:
    with session_scope(services.sessions) as session:
        retry_at = drip.defer_delivery(
            session,
            planned.delivery_id,
            error=error,
            now=now,
            count_against_recipient=against_recipient,
            keys=services.mailbox_keys,
        )
    log.info("delivery %s deferred until %s: %s", planned.delivery_id, retry_at, error)
