"""Per-subscriber pacing on the manage page: timed pauses, a step now, start again, time zone.

The rules live in app/drip.py; this reads the form and shapes what the page shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from app import drip, timing
from app.models import Subscriber, SubscriberStatus
from app.web import services

S = SubscriberStatus

#: The manage page's pacing actions (signed POSTs, like the others in links.ACTIONS).
PACING_ACTIONS = ("pause-week", "pause-until", "send-now", "start-again", "time-zone")
#: Actions after which a step is due at once: it is queued without waiting for a tick.
SEND_AT_ONCE = frozenset({"send-now", "start-again"})


def pace(action: str, session: Session, subscriber: Subscriber, form: Mapping[str, str]) -> bool:
    """Do one of PACING_ACTIONS; say whether it changed anything.

    Bad input raises drip.InvalidPause or drip.InvalidTimeZone, with a message for the page.
    """
    svc = services()
    now, policy = svc.clock(), svc.policy
    if action == "pause-week":
        return drip.pause_until(session, subscriber, now + drip.PAUSE_FOR, now=now)
    if action == "pause-until":
        try:
            day = date.fromisoformat(form.get("until", "").strip())
        except ValueError:
            raise drip.InvalidPause("Please choose a date, like 2026-03-20.") from None
        return drip.pause_until_date(session, subscriber, day, policy=policy, now=now)
    if action == "send-now":
        return drip.send_next_now(session, subscriber, total_steps=policy.total_steps, now=now)
    if action == "start-again":
        return drip.start_again(session, subscriber, now=now)
    return drip.change_time_zone(
        session, subscriber, form.get("time_zone", "").strip(), policy=policy, now=now
    )


def in_words(moment: datetime | None, subscriber: Subscriber) -> str | None:
    """`moment` in words in the subscriber's zone ("on Tuesday morning"); None for None."""
    if moment is None:
        return None
    svc = services()
    zone = drip.zone_of(subscriber, svc.policy)
    return timing.describe(moment, now=svc.clock(), zone=zone)


def _day(moment: datetime, zone: ZoneInfo) -> str:
    local = moment.astimezone(zone)
    return f"{timing.DAY_NAMES[local.weekday()]} {local.day} {local:%B %Y}"


def pacing_context(
    session: Session, subscriber: Subscriber, *, error: str | None = None
) -> dict[str, object]:
    """What the manage page shows about the schedule, in the subscriber's own time."""
    svc = services()
    now, policy = svc.clock(), svc.policy
    zone = drip.zone_of(subscriber, policy)
    next_at = subscriber.next_send_at if subscriber.status == S.ACTIVE else None
    today = now.astimezone(zone).date()
    return {
        "error": error,
        "time_zone": zone.key,
        "zone_is_default": subscriber.time_zone is None,
        "zones": timing.zone_names(),
        "next_when": timing.describe(next_at, now=now, zone=zone) if next_at else None,
        "next_local": f"{_day(next_at, zone)}, {next_at.astimezone(zone):%H:%M}"
        if next_at
        else None,
        "resume_day": _day(subscriber.resume_at, zone) if subscriber.resume_at else None,
        "can_pause": subscriber.status in (S.ACTIVE, S.PAUSED),
        "can_send_now": drip.can_send_now(
            session, subscriber, total_steps=services().policy.total_steps, now=now
        ),
        "can_start_again": drip.can_start_again(session, subscriber),
        "first_day": date.fromordinal(today.toordinal() + 1).isoformat(),
        "last_day": (now + drip.LONGEST_PAUSE).astimezone(zone).date().isoformat(),
    }
