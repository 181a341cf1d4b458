"""A fixed-window rate limit kept in Redis; it lets requests through when Redis is down."""

from __future__ import annotations

import ipaddress
import logging
import math
import time

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


def allow(redis: Redis, key: str, *, limit: int, window_seconds: int) -> bool:
    """Count one hit on `key`; say whether it is within `limit` hits per window."""
    return wait_needed(redis, key, limit=limit, window_seconds=window_seconds) is None


def wait_needed(redis: Redis, key: str, *, limit: int, window_seconds: int) -> int | None:
    """Count one hit on `key`; None if within `limit` per window, else whole seconds to wait.

    The wait is what a 429's Retry-After says: until the current window ends.
    """
    now = time.time()
    window = int(now // window_seconds)
    bucket = f"{key}:{window}"
    try:
        pipe = redis.pipeline()
        pipe.incr(bucket)
        pipe.expire(bucket, window_seconds)
        hits = int(pipe.execute()[0])
    except RedisError:
        # Refusing every sign-up because the limiter is down would lose people.
        log.warning("rate limiter unavailable; allowing %s", key)
        return None
    if hits <= limit:
        return None
    return max(1, math.ceil((window + 1) * window_seconds - now))


#: One person usually holds a whole IPv6 /64 (a home or phone network hands one out),
#: so limits per IPv6 address would be no limits at all.
IPV6_PREFIX = 64


def ip_network_key(ip: str | None) -> str:
    """What a per-IP limit counts: an IPv4 address, or the /64 network of an IPv6 one."""
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        return ip or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)
