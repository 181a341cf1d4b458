"""When a course step may go, in the subscriber's own time: send windows, send days, zones.

Pure functions over aware datetimes and `zoneinfo` zones; no database, no clock.
Instants are UTC; windows are wall-clock times in the subscriber's zone, so a step
due at 09:30 goes at 09:30 local time in summer and in winter, in Kolkata and in
St John's, and a daylight-saving gap or overlap never moves it outside its window.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DAY_SECONDS = 86400
#: Enough calendar days to meet any allowed weekday, even past a date a zone skipped.
_DAYS_AHEAD = 16
_CLOCK = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")


@dataclass(frozen=True)
class SendWindow:
    """The local hours (seconds after midnight, end exclusive) and weekdays steps may go."""

    start: int = 0
    end: int = DAY_SECONDS
    days: frozenset[int] = frozenset(range(7))

    @property
    def length(self) -> timedelta:
        """How long the window is open on an open day."""
        return timedelta(seconds=self.end - self.start)

    def slot(self, key: str) -> int:
        """This subscription's own time in the window (seconds after midnight), stable per key.

        Spreads a large list over the whole window instead of sending it all at its start.
        """
        digest = hashlib.sha256(f"send-slot:{key}".encode()).digest()
        fraction = int.from_bytes(digest[:8], "big") / 2**64
        return self.start + int(fraction * (self.end - self.start))

    def contains(self, local: datetime) -> bool:
        """Whether a local wall-clock time lies inside the window."""
        return local.weekday() in self.days and self.start <= _seconds(local) < self.end


def _seconds(local: datetime) -> float:
    return local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6


def parse_window(text: str) -> tuple[int, int]:
    """Read `09:00-11:00` into (start, end) seconds after midnight; ValueError says why not."""
    parts = [part.strip() for part in text.split("-")]
    if len(parts) != 2:
        raise ValueError(f"cannot read {text!r}: use HH:MM-HH:MM, like 09:00-11:00")
    bounds = []
    for part in parts:
        match = _CLOCK.match(part)
        if not match or (match[1] == "24" and match[2] != "00"):
            raise ValueError(f"cannot read {part!r} in {text!r}: use 24-hour HH:MM, like 09:00")
        bounds.append(int(match[1]) * 3600 + int(match[2]) * 60)
    start, end = bounds
    if end <= start:
        raise ValueError(f"{text!r} must end after it starts, within one day (like 09:00-11:00)")
    return start, end


def parse_days(text: str) -> frozenset[int]:
    """Read `mon-fri`, `sat,sun` or `mon-wed,fri` into weekday numbers (Monday is 0)."""
    days: set[int] = set()
    for item in (part.strip().lower() for part in text.split(",")):
        ends = [end.strip()[:3] for end in item.split("-")]
        if not 1 <= len(ends) <= 2 or any(end not in WEEKDAYS for end in ends):
            raise ValueError(
                f"cannot read {item!r} in {text!r}: use day names like mon-fri or sat,sun"
            )
        first, last = WEEKDAYS.index(ends[0]), WEEKDAYS.index(ends[-1])
        days.update((first + step) % 7 for step in range((last - first) % 7 + 1))
    return frozenset(days)


@lru_cache(maxsize=1)
def zone_names() -> tuple[str, ...]:
    """Every IANA time zone this machine knows, sorted."""
    return tuple(sorted(available_timezones()))


@lru_cache(maxsize=1)
def _zone_set() -> frozenset[str]:
    return frozenset(zone_names())


def is_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone this machine knows (like Europe/London)."""
    return len(name) <= 64 and name in _zone_set()


def zone(name: str | None, default: str) -> ZoneInfo:
    """The zone called `name`, or `default` when it is unset or no longer known."""
    return ZoneInfo(name if name and is_time_zone(name) else default)


def next_open(
    earliest: datetime, *, zone: ZoneInfo, window: SendWindow | None, key: str
) -> datetime:
    """The first instant at or after `earliest` in the window, at or after the key's slot.

    Within a day the subscription keeps its slot: a step due before the slot waits
    for it, one due after it (but still inside the window) goes at once, so a send
    a few seconds late never pushes the next step a whole day.
    """
    if window is None:
        return earliest
    slot = window.slot(key)
    first_day = earliest.astimezone(zone).date() - timedelta(days=1)
    for offset in range(_DAYS_AHEAD):
        day = first_day + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        fits = [
            candidate
            for candidate in _candidates(day, slot, earliest, zone)
            if candidate >= earliest and _fits(candidate, day, slot, window, zone)
        ]
        if fits:
            return min(fits)
    raise ValueError(f"no open send window within {_DAYS_AHEAD} days of {earliest.isoformat()}")


def _fits(instant: datetime, day: date, slot: int, window: SendWindow, zone: ZoneInfo) -> bool:
    local = instant.astimezone(zone)
    return local.date() == day and slot <= _seconds(local) < window.end


def _candidates(day: date, slot: int, earliest: datetime, zone: ZoneInfo) -> Iterator[datetime]:
    """Instants that may be the first good one on `day`: the slot (both folds), or `earliest`."""
    yield earliest.astimezone(UTC)
    wall = datetime.combine(day, time(slot // 3600, slot % 3600 // 60, slot % 60))
    first, second = (wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
    yield first
    yield second
    if first.astimezone(zone).replace(tzinfo=None) != wall:
        # The slot falls in a daylight-saving gap: the first instant after the gap
        # (the transition itself) is the earliest wall time past the slot.
        yield _transition(min(first, second), max(first, second), zone)


def _transition(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The first whole second in (before, after] with `after`'s UTC offset (bisected)."""
    target = after.astimezone(zone).utcoffset()
    low, high = int(before.timestamp()), int(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def describe(when: datetime, *, now: datetime, zone: ZoneInfo) -> str:
    """When `when` is, in words for the subscriber: `tomorrow morning`, `on Tuesday evening`.

    Meant to follow "arrives": "Your next step arrives on Tuesday morning".
    """
    if when - now < timedelta(hours=1):
        return "within the hour"
    local = when.astimezone(zone)
    days = (local.date() - now.astimezone(zone).date()).days
    night = local.hour < 5
    part = "morning" if local.hour < 12 else "afternoon" if local.hour < 17 else "evening"
    weekday = DAY_NAMES[local.weekday()]
    if days == 0 or (days == 1 and night):
        return "tonight" if night else f"this {part}"
    if days == 1:
        return f"tomorrow {part}"
    if days < 7:
        return f"early on {weekday}" if night else f"on {weekday} {part}"
    return f"in about {days} days"


def every(interval: timedelta) -> str:
    """How often steps come, in words: `every 2 days`, `every day`, `every 36 hours`."""
    seconds = int(interval.total_seconds())
    for unit, size in (("week", 7 * DAY_SECONDS), ("day", DAY_SECONDS), ("hour", 3600)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    if seconds >= 60 and seconds % 60 == 0:
        return f"every {seconds // 60} minutes" if seconds > 60 else "every minute"
    return f"every {seconds} seconds"


def cadence(interval: timedelta, window: SendWindow | None) -> str:
    """How often steps come and when, in words for the subscriber.

    `every 2 days`, or with a window `every 2 days, between 09:00 and 11:00 your time,
    Monday to Friday`.
    """
    words = every(interval)
    if window is None:
        return words
    if window.end - window.start < DAY_SECONDS:
        words += f", between {_clock(window.start)} and {_clock(window.end)} your time"
    if len(window.days) < 7:
        words += f", {_day_list(window.days)}"
    return words


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _day_list(days: frozenset[int]) -> str:
    """`Monday to Friday`, `on Saturday and Sunday`, `on Monday, Wednesday and Friday`."""
    ordered = sorted(days)
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{DAY_NAMES[ordered[0]]} to {DAY_NAMES[ordered[-1]]}"
    names = [DAY_NAMES[day] for day in ordered]
    return "on " + (names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}")


def busiest(times: Iterable[datetime], span: timedelta) -> int:
    """The most instants among `times` that fall within any one stretch of length `span`."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, instant in enumerate(ordered):
        while instant - ordered[start] >= span:
            start += 1
        most = max(most, end - start + 1)
    return most
