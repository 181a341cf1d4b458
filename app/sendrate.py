"""One send rate for every worker on every machine, held in Redis.

GCRA in a Lua script, timed by the Redis server's clock: each email reserves the
next free slot one emission interval after the last, so however many workers ask
at once, slots are never closer together than SEND_RATE allows. When the relay
answers "slow down", the shared factor halves (every worker slows at once) and
then recovers by doubling every RECOVERY_SECONDS without another throttle.
"""

from __future__ import annotations

import logging
import time

from redis import Redis

from app.config import Rate

log = logging.getLogger(__name__)

#: Seconds without throttling for the slowed rate to double back towards SEND_RATE.
RECOVERY_SECONDS = 60.0
#: The slowest the factor goes: SEND_RATE / 64.
MIN_FACTOR = 1 / 64

# The factor in force at `now`: halved at throttled_at, doubling every RECOVERY_SECONDS since.
_FACTOR_LUA = """
local function factor(key, now, recovery)
  local f = tonumber(redis.call('HGET', key, 'factor') or '1')
  local at = tonumber(redis.call('HGET', key, 'at') or '0')
  if f >= 1 then return 1 end
  return math.min(1, f * 2 ^ ((now - at) / recovery))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS[1]: theoretical arrival time; KEYS[2]: throttle state.
# ARGV[1]: seconds between emails at full rate; ARGV[2]: recovery seconds.
# Returns the seconds to wait before sending, as a string (Lua numbers lose precision).
_RESERVE = (
    _FACTOR_LUA
    + """
local interval = tonumber(ARGV[1]) / factor(KEYS[2], now, tonumber(ARGV[2]))
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
redis.call('SET', KEYS[1], string.format('%.6f', tat + interval), 'PX',
  math.ceil((tat + interval - now) * 1000) + 1000)
return string.format('%.6f', tat - now)
"""
)

# KEYS[1]: throttle state; ARGV[1]: recovery seconds; ARGV[2]: minimum factor.
# Returns the new factor, as a string.
_SLOW_DOWN = (
    _FACTOR_LUA
    + """
local f = math.max(tonumber(ARGV[2]), factor(KEYS[1], now, tonumber(ARGV[1])) / 2)
redis.call('HSET', KEYS[1], 'factor', string.format('%.6f', f), 'at', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], 86400)
return string.format('%.6f', f)
"""
)

_FACTOR = (
    _FACTOR_LUA
    + """
return string.format('%.6f', factor(KEYS[1], now, tonumber(ARGV[1])))
"""
)


class SendRate:
    """The global send rate: reserve a slot before each email; slow down when told to."""

    def __init__(self, redis: Redis, rate: Rate, *, prefix: str) -> None:
        self.rate = rate
        self._redis = redis
        self._tat_key = f"{prefix}:sendrate:tat"
        self._throttle_key = f"{prefix}:sendrate:throttle"
        self._reserve = redis.register_script(_RESERVE)
        self._slow_down = redis.register_script(_SLOW_DOWN)
        self._factor = redis.register_script(_FACTOR)

    def reserve(self) -> float:
        """Reserve the next slot; return how many seconds to wait before sending in it."""
        wait = self._reserve(
            keys=[self._tat_key, self._throttle_key], args=[self.rate.interval, RECOVERY_SECONDS]
        )
        return float(wait)

    def wait(self) -> None:
        """Block until this process may send one email."""
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)

    def slow_down(self, reason: str) -> float:
        """Halve the shared rate (all workers); return the new factor. Logged."""
        factor = float(
            self._slow_down(keys=[self._throttle_key], args=[RECOVERY_SECONDS, MIN_FACTOR])
        )
        log.warning(
            "relay is throttling us (%s): send rate now %.3g/s of SEND_RATE %s",
            reason,
            factor / self.rate.interval,
            self.rate,
        )
        return factor

    def factor(self) -> float:
        """The share of SEND_RATE in force now (1 when not slowed)."""
        return float(self._factor(keys=[self._throttle_key], args=[RECOVERY_SECONDS]))
