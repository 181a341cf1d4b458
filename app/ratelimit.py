"""A fixed-window rate limit kept in Redis; it lets requests through when Redis is down."""

from __future__ import annotations

import logging
import time

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


def allow(redis: Redis, key: str, *, limit: int, window_seconds: int) -> bool:
    """Count one hit on `key`; say whether it is within `limit` hits per window."""
    bucket = f"{key}:{int(time.time() // window_seconds)}"
    try:
        pipe = redis.pipeline()
        pipe.incr(bucket)
        pipe.expire(bucket, window_seconds)
        hits = int(pipe.execute()[0])
    except RedisError:
        # Refusing every sign-up because the limiter is down would lose people.
        log.warning("rate limiter unavailable; allowing %s", key)
        return True
    return hits <= limit
