"""`/metrics` in Prometheus's text format, for scrapers that present METRICS_TOKEN.

Without METRICS_TOKEN the page does not exist (404). Every figure is read when
scraped: from the database (the source of truth), Redis (the queue, the last tick)
and the sending side (breaker, send rate).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator

from flask import Blueprint, Response, abort, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy import func, select

from app import console, figures
from app.config import ConfigError
from app.db import session_scope
from app.models import Delivery, DeliveryStatus
from app.services import Services
from app.ticks import last_tick_seconds
from app.web import services

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)


class OnwardCollector(Collector):
    """Reads Onward's figures at each scrape."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        """The metrics, one family each."""
        svc = self.services
        counted = figures.current(svc, now=svc.clock())
        statuses = counted.statuses
        outcomes = {str(status): count for status, count in counted.outcomes.items()}
        with session_scope(svc.sessions) as session:
            sent_last_minute = console.sent_last_minute(session, now=svc.clock())
            problems = session.execute(
                select(Delivery.status, Delivery.failure_class, func.count())
                .where(Delivery.status.in_((DeliveryStatus.DEFERRED, DeliveryStatus.FAILED)))
                .group_by(Delivery.status, Delivery.failure_class)
            ).all()
        by_status = GaugeMetricFamily(
            "onward_subscriptions", "Subscriptions by status.", labels=["status"]
        )
        for status, count in statuses.items():
            by_status.add_metric([str(status)], count)
        yield by_status
        # A gauge: erasing a subscription removes its ledger rows, so these can fall.
        sends = GaugeMetricFamily(
            "onward_emails", "Emails in the delivery ledger by outcome.", labels=["outcome"]
        )
        for outcome, count in sorted(outcomes.items()):
            sends.add_metric([str(outcome)], count)
        yield sends
        by_class = GaugeMetricFamily(
            "onward_problem_emails",
            "Deferred and failed emails by failure class.",
            labels=["status", "failure_class"],
        )
        for state, failure_class, count in sorted(problems, key=lambda r: (r[0], r[1] or "")):
            by_class.add_metric([str(state), failure_class or "unclassified"], count)
        yield by_class
        try:
            queue = console.queue_state(svc.queue)
            tick = last_tick_seconds(svc)
        except (RedisError, ConfigError) as error:
            log.warning("metrics: Redis unavailable: %s", error)
        else:
            yield GaugeMetricFamily("onward_queue_depth", "Jobs waiting in the queue.", queue.depth)
            age = (
                (svc.clock() - queue.oldest_enqueued_at).total_seconds()
                if queue.oldest_enqueued_at
                else 0.0
            )
            yield GaugeMetricFamily(
                "onward_queue_oldest_job_age_seconds", "Age of the oldest waiting job.", age
            )
            if tick is not None:
                yield GaugeMetricFamily(
                    "onward_tick_duration_seconds", "How long the last scheduler tick took.", tick
                )
        try:
            relay = console.relay_state(svc)
        except (RedisError, ConfigError) as error:
            log.warning("metrics: Redis unavailable: %s", error)
        else:
            yield GaugeMetricFamily(
                "onward_relay_breaker_open",
                "1 while the relay breaker is open (nobody sends), else 0.",
                1.0 if relay.breaker.open else 0.0,
            )
            yield GaugeMetricFamily(
                "onward_send_rate_factor",
                "Share of SEND_RATE in force: below 1 while the relay has us slowed down.",
                relay.send_rate_factor,
            )
            if relay.send_rate_limit is not None:
                yield GaugeMetricFamily(
                    "onward_send_rate_limit_per_second",
                    "SEND_RATE: the most emails a second, all workers together.",
                    relay.send_rate_limit,
                )
        yield GaugeMetricFamily(
            "onward_send_rate_per_second",
            "Emails the relay accepted a second, over the last minute.",
            sent_last_minute / 60,
        )


@bp.get("/metrics")
def metrics() -> Response:
    """The figures for a scraper with `Authorization: Bearer <METRICS_TOKEN>`."""
    svc = services()
    token = svc.settings.metrics_token
    if not token:
        abort(404)
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        response = Response("a valid bearer token is required\n", 401, mimetype="text/plain")
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OnwardCollector(svc))
    response = Response(generate_latest(registry), mimetype=None)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    response.headers["Cache-Control"] = "no-store"
    return response
