"""The relay breaker: when the relay refuses our sender or cannot be reached, everyone waits.

State lives in Redis so every worker on every machine sees it. Closed: send.
Open: nobody sends until the cool-down ends; then exactly one worker may send
one email as a probe. A probe that is accepted closes the breaker; one that
fails opens it again for twice as long (up to MAX_COOLDOWN).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from redis import Redis

log = logging.getLogger(__name__)

#: The first cool-down after the breaker opens; it doubles after each failed probe.
BASE_COOLDOWN = timedelta(seconds=30)
#: The longest cool-down.
MAX_COOLDOWN = timedelta(minutes=30)
#: A probe whose worker died is given up after this long and another may probe. A probe
#: is one email; one still under way after this (a slow relay) only means a second
#: probe may start beside it, while a long timeout stops all sending after a kill.
PROBE_TIMEOUT = timedelta(seconds=30)


class Gate(StrEnum):
    """What the breaker says to a worker about to send."""

    SEND = "send"
    PROBE = "probe"
    WAIT = "wait"


# KEYS[1]: state hash; KEYS[2]: probe token. ARGV[1]: now; ARGV[2]: probe timeout (s).
_ALLOW = """
local untl = redis.call('HGET', KEYS[1], 'until')
if not untl then return 'send' end
if tonumber(ARGV[1]) < tonumber(untl) then return 'wait' end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return 'probe' end
return 'wait'
"""

# KEYS as above. ARGV[1]: now; ARGV[2]: base cool-down; ARGV[3]: max cool-down; ARGV[4]: reason.
# Returns {event, cool-down}: event is 'opened', 'reopened' (a probe failed) or 'open'.
_FAIL = """
local now = tonumber(ARGV[1])
local untl = tonumber(redis.call('HGET', KEYS[1], 'until') or '-1')
local cooldown = tonumber(redis.call('HGET', KEYS[1], 'cooldown') or ARGV[2])
local event = 'open'
if untl < 0 then
  event = 'opened'
  cooldown = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'since', ARGV[1], 'reason', ARGV[4])
elseif now >= untl then
  event = 'reopened'
  cooldown = math.min(cooldown * 2, tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'reason', ARGV[4])
else
  return {event, tostring(cooldown)}
end
redis.call('HSET', KEYS[1], 'until', tostring(now + cooldown), 'cooldown', tostring(cooldown))
redis.call('DEL', KEYS[2])
return {event, tostring(cooldown)}
"""


@dataclass(frozen=True)
class RelayState:
    """The breaker as operators see it."""

    open: bool
    until: datetime | None = None
    reason: str = ""

    def describe(self) -> str:
        """One line: `ok`, or open until when and why."""
        if not self.open:
            return "ok"
        assert self.until is not None
        return f"stopped until {self.until:%Y-%m-%d %H:%M:%S} UTC: {self.reason}"


class Breaker:
    """The relay breaker shared through Redis; times come from the caller's clock."""

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self._key = f"{prefix}:relay:breaker"
        self._probe_key = f"{prefix}:relay:probe"
        self._allow = redis.register_script(_ALLOW)
        self._fail = redis.register_script(_FAIL)

    def gate(self, now: datetime) -> Gate:
        """Whether to send now, send one email as the probe, or wait."""
        answer = self._allow(
            keys=[self._key, self._probe_key],
            args=[now.timestamp(), int(PROBE_TIMEOUT.total_seconds())],
        )
        return Gate(answer.decode() if isinstance(answer, bytes) else answer)

    def failed(self, now: datetime, reason: str) -> datetime:
        """The relay refused our sender or failed: open (or keep open); return until when.

        Logged once when it opens and once per failed probe, never per email.
        """
        event, cooldown = self._fail(
            keys=[self._key, self._probe_key],
            args=[
                now.timestamp(),
                BASE_COOLDOWN.total_seconds(),
                MAX_COOLDOWN.total_seconds(),
                reason,
            ],
        )
        event = event.decode() if isinstance(event, bytes) else str(event)
        seconds = float(cooldown)
        until = now + timedelta(seconds=seconds)
        if event == "opened":
            log.error("sending stopped for %ds, nobody bounced: %s", seconds, reason)
        elif event == "reopened":
            log.error("probe email failed, sending stopped for %ds more: %s", seconds, reason)
        return until if event != "open" else self.state().until or until

    def succeeded(self) -> None:
        """A probe (or any email) was accepted: close the breaker. Logged once."""
        if self._redis.delete(self._key, self._probe_key):
            log.warning("relay accepts email again: sending resumed")

    def end_probe(self) -> None:
        """A probe is over: let the next email probe if it reached no verdict.

        A probe answered with a throttle, a recipient's refusal, or never sent at
        all says nothing about our sender; without this its token would hold
        every worker back until PROBE_TIMEOUT. After a verdict (`succeeded` or
        `failed`) the token is already gone.
        """
        self._redis.delete(self._probe_key)

    def state(self) -> RelayState:
        """The breaker's state, for /readyz and `flask stats`."""
        raw: dict[bytes, bytes] = self._redis.hgetall(self._key)  # type: ignore[assignment]
        values = {key.decode(): value.decode() for key, value in raw.items()}
        if "until" not in values:
            return RelayState(open=False)
        return RelayState(
            open=True,
            until=datetime.fromtimestamp(float(values["until"]), tz=UTC),
            reason=values.get("reason", ""),
        )
