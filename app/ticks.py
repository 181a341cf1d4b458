"""How long the scheduler's last tick took, shared through Redis for /metrics."""

from __future__ import annotations

from app.services import Services

#: Kept a day: an old figure with no scheduler running is worse than none.
TICK_RECORD_TTL = 24 * 3600


def _key(services: Services) -> str:
    return f"{services.settings.queue_name}:scheduler:last-tick-seconds"


def record_tick(services: Services, seconds: float) -> None:
    """Remember the duration of the tick that just ended (RedisError if Redis is down)."""
    services.redis.set(_key(services), f"{seconds:.6f}", ex=TICK_RECORD_TTL)


def last_tick_seconds(services: Services) -> float | None:
    """The duration of the last tick, if a scheduler recorded one within a day."""
    value = services.redis.get(_key(services))
    return float(value) if value is not None else None
