"""The console's slow figures, computed together and kept in Redis for CONSOLE_CACHE.

Counting a million subscriptions and millions of ledger rows takes seconds, so the
overview, the funnel and /metrics do not count per request. The scheduler refreshes
these figures in the background; pages read the copy, say how old it is, and compute
it themselves only when there is none (a flushed Redis, a first start). Operators'
actions drop the copy so their effect shows at once. Redis holds nothing that cannot
be rebuilt: losing the copy costs one slow page. With CONSOLE_CACHE=0 every page
counts for itself (small lists, tests).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from app import console, drip
from app.config import ConfigError
from app.db import session_scope
from app.models import DeliveryStatus, SubscriberStatus
from app.stopping import StopFlag, stop_signals_kept_from_new_threads

if TYPE_CHECKING:
    from app.services import Services

log = logging.getLogger(__name__)

#: Bump when the stored shape changes, so a copy in the old shape is ignored.
FORMAT = 1


@dataclass(frozen=True)
class Figures:
    """Everything slow the console shows, as of `computed_at`."""

    computed_at: datetime
    seconds_to_compute: float
    statuses: dict[SubscriberStatus, int]
    per_day: list[tuple[date, int]]
    due: console.Due
    deliveries: dict[DeliveryStatus, int]
    #: Every ledger row by status (sent, failed, ...), for /metrics.
    outcomes: dict[DeliveryStatus, int]
    hygiene: drip.HygieneFigures
    funnel: console.Funnel


def compute(services: Services, *, now: datetime) -> Figures:
    """Count everything now, in one read-only transaction."""
    started = time.monotonic()
    with session_scope(services.sessions) as session:
        funnel = console.funnel(session, services.course.step_count)
        per_day = console.sent_per_day(session, now=now)
        due = console.due(session, now=now)
        deliveries = console.delivery_counts(session)
        outcomes = console.ledger_counts(session)
        hygiene = drip.hygiene_counts(session, now=now)
    return Figures(
        computed_at=now,
        seconds_to_compute=time.monotonic() - started,
        statuses=dict(funnel.statuses),
        per_day=per_day,
        due=due,
        deliveries=deliveries,
        outcomes=outcomes,
        hygiene=hygiene,
        funnel=funnel,
    )


def _key(services: Services) -> str:
    return f"{services.settings.queue_name}:console:figures"


def encode(figures: Figures) -> str:
    """The figures as JSON (never pickle: whoever can write to Redis must not run code)."""
    hygiene = figures.hygiene
    return json.dumps(
        {
            "format": FORMAT,
            "computed_at": figures.computed_at.isoformat(),
            "seconds_to_compute": figures.seconds_to_compute,
            "statuses": {str(k): v for k, v in figures.statuses.items()},
            "per_day": [[day.isoformat(), n] for day, n in figures.per_day],
            "due": asdict(figures.due),
            "deliveries": {str(k): v for k, v in figures.deliveries.items()},
            "outcomes": {str(k): v for k, v in figures.outcomes.items()},
            "hygiene": {
                "days": hygiene.days,
                "per_step": [[*key, n] for key, n in hygiene.per_step.items()],
                "per_day": [[*key, n] for key, n in hygiene.per_day.items()],
                "sent": hygiene.sent,
                "complaints": hygiene.complaints,
            },
            "funnel": {
                **{k: v for k, v in asdict(figures.funnel).items() if k not in ("steps",)},
                "steps": [asdict(step) for step in figures.funnel.steps],
            },
        }
    )


def decode(text: str | bytes) -> Figures | None:
    """Figures from `encode`'s JSON; None if the text is not in the current shape."""
    try:
        data: dict[str, Any] = json.loads(text)
        if data.get("format") != FORMAT:
            return None
        hygiene = data["hygiene"]
        funnel = data["funnel"]
        return Figures(
            computed_at=datetime.fromisoformat(data["computed_at"]),
            seconds_to_compute=float(data["seconds_to_compute"]),
            statuses={SubscriberStatus(k): int(v) for k, v in data["statuses"].items()},
            per_day=[(date.fromisoformat(day), int(n)) for day, n in data["per_day"]],
            due=console.Due(**data["due"]),
            deliveries={DeliveryStatus(k): int(v) for k, v in data["deliveries"].items()},
            outcomes={DeliveryStatus(k): int(v) for k, v in data["outcomes"].items()},
            hygiene=drip.HygieneFigures(
                days=int(hygiene["days"]),
                per_step={(t, k): int(n) for t, k, n in hygiene["per_step"]},
                per_day={(d, k): int(n) for d, k, n in hygiene["per_day"]},
                sent=int(hygiene["sent"]),
                complaints=int(hygiene["complaints"]),
            ),
            funnel=console.Funnel(
                **{k: v for k, v in funnel.items() if k not in ("steps", "statuses")},
                statuses={SubscriberStatus(k): int(v) for k, v in funnel["statuses"].items()},
                steps=[console.FunnelStep(**step) for step in funnel["steps"]],
            ),
        )
    except (ValueError, KeyError, TypeError) as error:
        log.warning("console figures in Redis are unreadable, counting again: %s", error)
        return None


def _cached(services: Services) -> Figures | None:
    try:
        text = services.redis.get(_key(services))
    except (RedisError, ConfigError):
        return None
    return decode(text) if text else None


def _store(services: Services, figures: Figures) -> None:
    # Kept a little longer than CONSOLE_CACHE, so a page finds the copy while the
    # scheduler is computing the next one, and never one older than twice that.
    ttl = max(1, int(services.settings.console_cache.total_seconds() * 2))
    try:
        services.redis.set(_key(services), encode(figures), ex=ttl)
    except (RedisError, ConfigError) as error:
        log.warning("could not keep the console figures in Redis: %s", error)


def current(services: Services, *, now: datetime) -> Figures:
    """The figures: Redis's copy if younger than CONSOLE_CACHE, else counted now (and kept)."""
    max_age = services.settings.console_cache
    if max_age <= timedelta(0):
        return compute(services, now=now)
    cached = _cached(services)
    if cached is not None and now - cached.computed_at < max_age:
        return cached
    figures = compute(services, now=now)
    _store(services, figures)
    return figures


def refresh(services: Services, *, now: datetime) -> Figures | None:
    """Count again if the copy is older than half of CONSOLE_CACHE; the scheduler calls this.

    Two schedulers do not both count: the first to take a short Redis lock does.
    Returns the new figures, or None when nothing was counted.
    """
    max_age = services.settings.console_cache
    if max_age <= timedelta(0):
        return None
    cached = _cached(services)
    if cached is not None and now - cached.computed_at < max_age / 2:
        return None
    try:
        lock = services.redis.set(
            f"{_key(services)}:lock", "1", nx=True, ex=max(1, int(max_age.total_seconds()))
        )
    except (RedisError, ConfigError):
        return None
    if not lock:
        return None
    figures = compute(services, now=now)
    _store(services, figures)
    with contextlib.suppress(RedisError):  # the lock expires on its own
        services.redis.delete(f"{_key(services)}:lock")
    return figures


def forget(services: Services) -> None:
    """Drop the copy (after an operator's action), so the next page counts afresh."""
    try:
        services.redis.delete(_key(services))
    except (RedisError, ConfigError) as error:
        log.warning("could not drop the console figures in Redis: %s", error)


def refresh_in_background(services: Services, stop: StopFlag | threading.Event) -> threading.Thread:
    """Keep the figures fresh from a thread, so a slow count never delays a tick."""

    def run() -> None:
        pause = max(1.0, services.settings.console_cache.total_seconds() / 4)
        while not stop.is_set():
            try:
                figures = refresh(services, now=services.clock())
                if figures is not None:
                    log.debug("console figures counted in %.2fs", figures.seconds_to_compute)
            except Exception as error:  # the thread must outlive any outage
                log.warning("console figures not refreshed, will retry: %r", error)
            stop.wait(pause)

    thread = threading.Thread(target=run, name="console-figures", daemon=True)
    with stop_signals_kept_from_new_threads():
        thread.start()
    return thread
