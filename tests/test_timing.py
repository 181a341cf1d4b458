"""The send-window rules on an injected clock: zones, daylight saving, wording, volume.

Pure functions, no servers: every instant is given, so each DST transition is hit exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import drip, timing
from app.models import EmailKind, Subscriber, SubscriberStatus

NINE_TO_ELEVEN = timing.SendWindow(9 * 3600, 11 * 3600)


def at(zone: str, *args: int, fold: int = 0) -> datetime:
    """A local wall-clock time in `zone`, as a UTC instant."""
    return datetime(*args, tzinfo=ZoneInfo(zone), fold=fold).astimezone(UTC)  # type: ignore[misc]


def local(instant: datetime, zone: str) -> datetime:
    return instant.astimezone(ZoneInfo(zone))


def key_with_slot(window: timing.SendWindow, low: int, high: int) -> str:
    """A subscription key whose slot falls in [low, high) seconds after midnight."""
    for number in range(10_000):
        if low <= window.slot(f"key-{number}") < high:
            return f"key-{number}"
    raise AssertionError("no key found")


def next_open(
    earliest: datetime, zone: str, window: timing.SendWindow | None, key: str
) -> datetime:
    return timing.next_open(earliest, zone=ZoneInfo(zone), window=window, key=key)


# --- settings ---------------------------------------------------------------


def test_windows_and_days_are_read_or_refused_with_a_reason() -> None:
    assert timing.parse_window("09:00-11:00") == (9 * 3600, 11 * 3600)
    assert timing.parse_window(" 9:30 - 24:00 ") == (9 * 3600 + 1800, 86400)
    for bad, reason in [
        ("9-11", "24-hour"),
        ("09:00", "HH:MM-HH:MM"),
        ("11:00-09:00", "end after it starts"),
        ("09:00-24:30", "24-hour"),
        ("25:00-26:00", "24-hour"),
    ]:
        with pytest.raises(ValueError, match=reason):
            timing.parse_window(bad)
    assert timing.parse_days("mon-fri") == frozenset(range(5))
    assert timing.parse_days("Sat, sun") == frozenset({5, 6})
    assert timing.parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert timing.parse_days("monday,wednesday") == frozenset({0, 2})
    with pytest.raises(ValueError, match="day names"):
        timing.parse_days("weekdays")


def test_known_time_zones_only() -> None:
    assert timing.is_time_zone("Australia/Lord_Howe")
    assert timing.is_time_zone("UTC")
    for bad in ("Mars/Olympus", "../../etc/passwd", "", "europe/london", "A" * 200):
        assert not timing.is_time_zone(bad)
    assert timing.zone("Mars/Olympus", "Europe/London").key == "Europe/London"
    assert timing.zone(None, "Asia/Kolkata").key == "Asia/Kolkata"


# --- the window -------------------------------------------------------------


def test_no_window_means_any_time() -> None:
    earliest = datetime(2026, 3, 2, 3, 17, tzinfo=UTC)
    assert next_open(earliest, "Asia/Kolkata", None, "k") == earliest


def test_each_subscription_keeps_its_own_time_in_the_window() -> None:
    slots = {NINE_TO_ELEVEN.slot(f"key-{n}") for n in range(1000)}
    assert min(slots) >= 9 * 3600 and max(slots) < 11 * 3600
    # Spread over the window, not bunched at its start.
    assert len(slots) > 900
    assert sum(slot < 10 * 3600 for slot in slots) == pytest.approx(500, abs=80)
    assert NINE_TO_ELEVEN.slot("same") == NINE_TO_ELEVEN.slot("same")


def test_a_step_due_before_the_window_waits_for_the_slot_and_one_inside_goes_at_once() -> None:
    zone = "Europe/London"
    key = key_with_slot(NINE_TO_ELEVEN, 9 * 3600 + 1800, 9 * 3600 + 1860)  # 09:30
    early = next_open(at(zone, 2026, 3, 3, 6, 0), zone, NINE_TO_ELEVEN, key)
    assert (local(early, zone).hour, local(early, zone).minute) == (9, 30)
    # A few seconds past the slot (the last send was a little late): still today.
    late = at(zone, 2026, 3, 3, 9, 30, 42)
    assert next_open(late, zone, NINE_TO_ELEVEN, key) == late
    # After the window: tomorrow at the slot.
    after = next_open(at(zone, 2026, 3, 3, 11, 0), zone, NINE_TO_ELEVEN, key)
    assert local(after, zone).date().day == 4 and local(after, zone).hour == 9


def test_send_days_skip_to_the_next_open_day() -> None:
    window = timing.SendWindow(9 * 3600, 11 * 3600, timing.parse_days("mon-fri"))
    friday_evening = at("America/New_York", 2026, 3, 6, 18, 0)
    monday = local(next_open(friday_evening, "America/New_York", window, "k"), "America/New_York")
    assert monday.weekday() == 0 and monday.day == 9 and 9 <= monday.hour < 11


# --- every zone on the clock ------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "utc_offset"),
    [
        ("Pacific/Kiritimati", timedelta(hours=14)),
        ("Etc/GMT+12", timedelta(hours=-12)),
        ("Asia/Kolkata", timedelta(hours=5, minutes=30)),
        ("Asia/Kathmandu", timedelta(hours=5, minutes=45)),
        ("Australia/Eucla", timedelta(hours=8, minutes=45)),
        ("Pacific/Chatham", timedelta(hours=13, minutes=45)),
        ("America/St_Johns", timedelta(hours=-2, minutes=-30)),  # summer time from 8 March
    ],
)
def test_the_window_is_local_in_zones_far_from_utc_and_off_the_hour(
    zone: str, utc_offset: timedelta
) -> None:
    window = timing.SendWindow(9 * 3600, 11 * 3600, timing.parse_days("mon-fri"))
    # Friday 23:00 UTC: already Saturday in +14, still Friday noon in -12.
    earliest = datetime(2026, 3, 6, 23, 0, tzinfo=UTC)
    sent = next_open(earliest, zone, window, "ada")
    wall = local(sent, zone)
    assert wall.utcoffset() == utc_offset
    assert wall.weekday() < 5 and 9 <= wall.hour < 11
    assert sent >= earliest
    # The first open window: no open weekday morning is skipped between the two.
    day = local(earliest, zone).date()
    while day < wall.date():
        opening = datetime.combine(day, datetime.min.time(), ZoneInfo(zone)).replace(hour=11)
        assert day.weekday() >= 5 or opening.astimezone(UTC) <= earliest
        day += timedelta(days=1)


def test_kiritimati_is_a_day_ahead_of_utc() -> None:
    # Mautic #17283: zones ahead of UTC got the wrong day. Monday 10:00 in Kiritimati
    # is Sunday 20:00 UTC, and a Monday-only window must open then.
    window = timing.SendWindow(9 * 3600, 11 * 3600, frozenset({0}))
    sent = next_open(datetime(2026, 3, 8, 12, 0, tzinfo=UTC), "Pacific/Kiritimati", window, "k")
    assert sent.weekday() == 6  # Sunday in UTC
    assert local(sent, "Pacific/Kiritimati").weekday() == 0


# --- daylight saving ---------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "before", "after"),
    [
        ("America/New_York", (2026, 3, 6), (2026, 3, 9)),  # spring forward on 8 March
        ("America/New_York", (2026, 10, 30), (2026, 11, 2)),  # fall back on 1 November
        ("Europe/London", (2026, 3, 27), (2026, 3, 30)),  # 29 March
        ("Europe/London", (2026, 10, 23), (2026, 10, 26)),  # 25 October
        ("Australia/Lord_Howe", (2026, 4, 3), (2026, 4, 6)),  # back 30 minutes on 5 April
        ("Australia/Lord_Howe", (2026, 10, 2), (2026, 10, 5)),  # forward 30 minutes on 4 Oct
        ("America/St_Johns", (2026, 3, 6), (2026, 3, 9)),
    ],
)
def test_the_same_local_time_on_both_sides_of_a_transition(
    zone: str, before: tuple[int, int, int], after: tuple[int, int, int]
) -> None:
    key = "ada"
    first = local(next_open(at(zone, *before, 0, 0), zone, NINE_TO_ELEVEN, key), zone)
    second = local(next_open(at(zone, *after, 0, 0), zone, NINE_TO_ELEVEN, key), zone)
    assert first.time() == second.time()
    assert first.utcoffset() != second.utcoffset()


def test_a_window_that_falls_in_the_spring_gap_is_skipped_that_day() -> None:
    # New York, 8 March 2026: 02:00-03:00 does not exist.
    window = timing.SendWindow(2 * 3600, 3 * 3600)
    sent = next_open(at("America/New_York", 2026, 3, 8, 0, 0), "America/New_York", window, "k")
    wall = local(sent, "America/New_York")
    assert wall.date().day == 9 and wall.hour == 2


def test_a_slot_in_the_gap_goes_at_the_first_moment_after_it() -> None:
    zone = "America/New_York"
    window = timing.SendWindow(2 * 3600, 4 * 3600)
    key = key_with_slot(window, 2 * 3600 + 1800, 3 * 3600)  # 02:30-03:00: does not exist
    sent = next_open(at(zone, 2026, 3, 8, 0, 0), zone, window, key)
    assert local(sent, zone).replace(tzinfo=None) == datetime(2026, 3, 8, 3, 0)


def test_lord_howe_half_hour_gap() -> None:
    # 4 October 2026, 02:00 becomes 02:30 (+10:30 to +11).
    zone = "Australia/Lord_Howe"
    window = timing.SendWindow(2 * 3600, 2 * 3600 + 1800)
    sent = local(next_open(at(zone, 2026, 10, 4, 0, 0), zone, window, "k"), zone)
    assert sent.day == 5 and sent.hour == 2 and sent.minute < 30
    wide = timing.SendWindow(2 * 3600, 3 * 3600)
    key = key_with_slot(wide, 2 * 3600, 2 * 3600 + 1800)
    sent = local(next_open(at(zone, 2026, 10, 4, 0, 0), zone, wide, key), zone)
    assert sent.replace(tzinfo=None) == datetime(2026, 10, 4, 2, 30)


@pytest.mark.parametrize(
    ("zone", "day", "hour", "minutes"),
    [
        ("America/New_York", (2026, 11, 1), 1, 60),  # 01:00-02:00 twice
        ("Europe/London", (2026, 10, 25), 1, 60),
        ("Australia/Lord_Howe", (2026, 4, 5), 1, 30),  # 01:30-02:00 twice
    ],
)
def test_a_time_that_exists_twice_is_used_once_inside_the_window(
    zone: str, day: tuple[int, int, int], hour: int, minutes: int
) -> None:
    start = hour * 3600 + (1800 if minutes == 30 else 0)
    window = timing.SendWindow(start, start + minutes * 60)
    key = key_with_slot(window, start + 60, start + 120)
    # Due before the first pass: the first pass's slot.
    first = next_open(at(zone, *day, 0, 0), zone, window, key)
    assert local(first, zone).fold == 0
    # Due during the second pass, before the slot comes round again: the second pass.
    second_pass = at(zone, *day, hour, start % 3600 // 60, fold=1)
    second = next_open(second_pass, zone, window, key)
    assert second >= second_pass and local(second, zone).fold == 1
    assert second - first == timedelta(minutes=minutes)
    # Due late in the second pass: inside the window, at once.
    late = second_pass + timedelta(minutes=minutes - 5)
    assert next_open(late, zone, window, key) == late


# --- wording -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "words"),
    [
        ((2026, 3, 3, 9, 40), "within the hour"),
        ((2026, 3, 3, 15, 0), "this afternoon"),
        ((2026, 3, 4, 2, 0), "tonight"),
        ((2026, 3, 4, 9, 30), "tomorrow morning"),
        ((2026, 3, 5, 19, 0), "on Thursday evening"),
        ((2026, 3, 8, 3, 0), "early on Sunday"),
        ((2026, 3, 12, 9, 0), "in about 9 days"),
    ],
)
def test_the_next_step_in_words(when: tuple[int, ...], words: str) -> None:
    now = at("Asia/Kolkata", 2026, 3, 3, 9, 0)  # a Tuesday morning in Kolkata
    assert timing.describe(at("Asia/Kolkata", *when), now=now, zone=ZoneInfo("Asia/Kolkata")) == (
        words
    )


def test_words_follow_the_subscribers_day_not_utcs() -> None:
    now = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)  # Monday 20:00 UTC, Tuesday 10:00 in +14
    when = now + timedelta(days=1)
    assert timing.describe(when, now=now, zone=ZoneInfo("Pacific/Kiritimati")) == (
        "tomorrow morning"
    )
    assert timing.describe(when, now=now, zone=ZoneInfo("UTC")) == "tomorrow evening"


def test_busiest_stretch() -> None:
    base = datetime(2026, 3, 2, 9, tzinfo=UTC)
    times = [base + timedelta(minutes=m) for m in (0, 10, 20, 130, 135, 140, 150, 170)]
    assert timing.busiest(times, timedelta(hours=1)) == 5
    assert timing.busiest([], timedelta(hours=1)) == 0


# --- the course rules, as a property -----------------------------------------

S = SubscriberStatus
ZONES = st.sampled_from(timing.zone_names())


@st.composite
def windows(draw: st.DrawFn) -> timing.SendWindow:
    start = draw(st.integers(0, 23 * 60)) * 60
    end = draw(st.integers(start // 60 + 15, 24 * 60)) * 60
    days = draw(st.frozensets(st.integers(0, 6), min_size=1))
    return timing.SendWindow(start, end, days)


def in_window(instant: datetime, zone: str, window: timing.SendWindow) -> bool:
    return window.contains(instant.astimezone(ZoneInfo(zone)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    zone=ZONES,
    window=windows(),
    interval=st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=5)),
    start=st.datetimes(
        min_value=datetime(2001, 1, 1), max_value=datetime(2036, 12, 31), timezones=st.just(UTC)
    ),
    key=st.text(min_size=1, max_size=22),
    moves=st.lists(
        st.tuples(
            st.sampled_from(["send", "send", "send", "pause", "zone"]),
            st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20)),
            ZONES,
        ),
        max_size=30,
    ),
)
def test_no_step_outside_its_window_or_sooner_than_the_interval_and_none_skipped(
    zone: str,
    window: timing.SendWindow,
    interval: timedelta,
    start: datetime,
    key: str,
    moves: list[tuple[str, timedelta, str]],
) -> None:
    policy = drip.Policy(
        step_interval=interval,
        total_steps=10,
        send_window=window,
        default_time_zone="UTC",
    )
    subscriber = Subscriber(key=key, time_zone=zone, status=S.ACTIVE, next_step=1)
    subscriber.next_send_at = now = start  # confirmed: step 1 at once, held for no window
    sent: list[int] = []
    last_sent: datetime | None = None
    earliest_allowed = start
    for move, delay, new_zone in moves:
        if subscriber.status == S.COMPLETED:
            break
        if move == "send":
            due = subscriber.next_send_at
            assert due is not None and due >= earliest_allowed
            if sent:  # step 1 is not held for the window (sent at confirmation)
                assert in_window(due, subscriber.time_zone or "UTC", window)
                assert last_sent is not None and due - last_sent >= interval
            # The worker sends a little late (up to `delay`'s seconds part).
            now = max(now, due) + timedelta(seconds=delay.seconds % 600)
            sent.append(subscriber.next_step)
            last_sent = now
            drip._advance(subscriber, EmailKind.STEP, subscriber.next_step, policy, now)
            earliest_allowed = now + interval
        elif move == "pause":
            assert drip.pause(None, subscriber, now=now)  # type: ignore[arg-type]
            now += delay
            assert drip.resume(None, subscriber, policy=policy, now=now)  # type: ignore[arg-type]
            assert subscriber.next_send_at is not None
            assert subscriber.next_send_at >= now + interval
            earliest_allowed = max(earliest_allowed, now + interval)
        else:
            now += delay % timedelta(hours=6)
            drip.change_time_zone(None, subscriber, new_zone, policy=policy, now=now)  # type: ignore[arg-type]
    assert sent == list(range(1, len(sent) + 1))
    assert (subscriber.status == S.COMPLETED) == (len(sent) == policy.total_steps)
