"""Thin RQ jobs: they take ids, load what they need and call the course logic."""

from __future__ import annotations

import logging

from app import outbound
from app.sending import send_batch as send_batch_for
from app.services import Services
from app.signups import process_signup as process_signup_for

log = logging.getLogger(__name__)

_services: Services | None = None


def services() -> Services:
    """This process's services, built from the environment on first use."""
    global _services
    if _services is None:
        _services = Services.from_env()
    return _services


def use_services(replacement: Services | None) -> None:
    """Make the jobs in this process use `replacement` (tests, launchers)."""
    global _services
    _services = replacement


def send_batch(subscriber_ids: list[int]) -> dict[str, int]:
    """Send the due email of each listed subscription; return counts by outcome."""
    report = send_batch_for(services(), subscriber_ids).as_dict()
    log.info("batch of %d: %s", len(subscriber_ids), report)
    return report


def process_signup(request_id: int) -> str:
    """Decide one recorded sign-up and send what it needs; return what it did."""
    outcome = process_signup_for(services(), request_id)
    log.info("sign-up request %d: %s", request_id, outcome)
    return outcome


def import_subscribers(import_id: str) -> dict[str, object]:
    """Run an import uploaded in the console, recording its progress for the console's page."""
    # Imported here: imports are rare, and the sending workers need none of their modules.
    from app.import_jobs import run

    return run(services(), import_id)


def deliver_webhooks() -> dict[str, int]:
    """Deliver the webhook events due now; return counts by outcome."""
    svc = services()
    report = outbound.deliver_due(svc.sessions, clock=svc.clock)
    if report:
        log.info("webhooks: %s", report)
    return report
