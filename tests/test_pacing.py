"""Send windows and pacing on real servers: the course in the subscriber's morning, the
manage page's pacing actions, the time zone from the form and the API, volume figures."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import timing
from app.config import ConfigError, Rate, Settings
from app.models import Subscriber, SubscriberStatus
from app.services import Services
from tests.support import FakeClock, SmtpSink, active_subscriber, run_worker
from tests.test_web import (
    ADA,
    confirmed,
    deliver,
    form_sign_up,
    path_of,
    signed_up,
    subscribers,
    text_of,
)
from worker.schedule import check_window_volume

S = SubscriberStatus
NEW_YORK = ZoneInfo("America/New_York")
WINDOW = timing.SendWindow(9 * 3600, 11 * 3600)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_changes(send_window=WINDOW, default_time_zone="America/New_York")


def subscriber_of(services: Services, email: str = ADA) -> Subscriber:
    [subscriber] = subscribers(services, email)
    return subscriber


def in_window(instant: datetime, zone: ZoneInfo = NEW_YORK) -> bool:
    return WINDOW.contains(instant.astimezone(zone))


def test_every_step_arrives_in_the_same_local_morning_across_daylight_saving(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    # Monday 2 March 2026, 04:00 in New York: step 1 goes at once on confirming.
    step_one = confirmed(client, services, smtp, ADA)
    assert "The next step arrives on Wednesday morning." in step_one.text
    slot = WINDOW.slot(subscriber_of(services).key)
    previous, announced = clock.now, "Wednesday"
    for step in range(2, 11):
        subscriber = subscriber_of(services)
        due = subscriber.next_send_at
        assert due is not None and in_window(due)
        # The day the previous email announced is the day this step goes.
        assert announced == timing.DAY_NAMES[due.astimezone(NEW_YORK).weekday()]
        assert due - previous >= timedelta(days=2)
        if due < datetime(2026, 3, 8, tzinfo=UTC):
            # Before the clocks change: at the subscriber's own time in the window (plus
            # the seconds the ticks were late, since a step never goes sooner than 2 days).
            wall = due.astimezone(NEW_YORK)
            assert 0 <= wall.hour * 3600 + wall.minute * 60 + wall.second - slot < 60
        clock.now = due - timedelta(seconds=1)
        deliver(services)
        assert len(smtp.to(ADA)) == step, "sent before it was due"  # with the confirmation
        clock.now = previous = due + timedelta(seconds=7)  # the tick comes a little later
        deliver(services)
        sent = smtp.to(ADA)[-1]
        assert sent.subject.startswith(f"Step {step} of 10:")
        announces = re.search(r"The (next|last) step arrives on (\w+day) morning\.", sent.text)
        if step < 10:
            assert announces is not None, sent.text
            announced = announces[2]
            assert (announces[1] == "last") == (step == 9)
        else:
            assert announces is None and "arrives" not in sent.text
    offsets = {m.message["Date"].datetime.utcoffset() for m in smtp.to(ADA)}
    assert offsets == {timedelta(0)}
    assert subscriber_of(services).status == S.COMPLETED

    manage = path_of(step_one.link("manage"))
    page = text_of(client.get(manage))
    assert "Start again from step 1" in page
    assert client.post(f"{manage}/start-again").status_code == 303
    run_worker(services)
    again = smtp.to(ADA)[-1]
    assert again.subject == step_one.subject
    assert again.message["Message-ID"] != step_one.message["Message-ID"]
    assert subscriber_of(services).status == S.ACTIVE
    assert subscriber_of(services).next_step == 2
    # Only once finished: a second press changes nothing.
    assert client.post(f"{manage}/start-again").status_code == 303
    run_worker(services)
    assert len(smtp.to(ADA)) == 12  # the confirmation, ten steps and step 1 again


def test_pages_and_emails_say_when_steps_come_from_the_schedule(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    assert "10 short emails, one practical step every 2 days," in text_of(client.get("/"))
    confirmation = signed_up(client, services, smtp, ADA)
    assert "the others follow every 2 days, between 09:00 and 11:00 your time." in confirmation.text
    # Monday 04:00 in New York: step 1 now, step 2 on Wednesday in the window.
    page = client.post(path_of(confirmation.link("confirm")))
    assert "step 2 arrives on Wednesday morning." in text_of(page)
    run_worker(services)
    pause = path_of(smtp.to(ADA)[-1].link("pause"))
    client.post(pause, data={"action": "pause"})
    clock.advance(timedelta(days=3))  # Thursday 04:00: the next step two days on, Saturday
    resumed = text_of(client.post(pause, data={"action": "resume"}))
    assert "Your next step arrives on Saturday morning, after the usual interval" in resumed
    manage = text_of(client.get(path_of(smtp.to(ADA)[-1].link("manage"))))
    assert re.search(
        r"Your next step arrives on Saturday morning \(Saturday 7 March 2026, (09|10):\d\d, "
        r"America/New_York time\)",
        manage,
    )

    services.settings = services.settings.with_changes(
        step_interval=timedelta(hours=36),
        send_window=timing.SendWindow(0, 86400, frozenset({0, 2, 4})),
    )
    services.__dict__.pop("sender", None)
    assert "10 short emails, one practical step every 36 hours," in text_of(client.get("/"))
    signed_up(client, services, smtp, "grace@example.com")
    assert (
        "follow every 36 hours, on Monday, Wednesday and Friday."
        in smtp.to("grace@example.com")[-1].text
    )


def test_the_form_and_the_api_take_the_time_zone(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    page = client.get("/").get_data(as_text=True)
    assert '<input type="hidden" name="time_zone" value="">' in page
    assert '<script src="/static/time-zone.js" defer></script>' in page
    assert "<script>" not in page  # no inline script: a strict CSP must not break the form
    with client.get("/static/time-zone.js") as script:
        assert script.status_code == 200 and b"resolvedOptions().timeZone" in script.data

    assert form_sign_up(client, "kolkata@example.com", time_zone="Asia/Kolkata").status_code == 200
    assert form_sign_up(client, "odd@example.com", time_zone="Mars/Base").status_code == 200
    assert form_sign_up(client, "nojs@example.com").status_code == 200
    run_worker(services)
    assert subscriber_of(services, "kolkata@example.com").time_zone == "Asia/Kolkata"
    # A hidden field the visitor cannot fix: an unknown zone falls back to the default.
    assert subscriber_of(services, "odd@example.com").time_zone is None
    assert subscriber_of(services, "nojs@example.com").time_zone is None

    answer = client.post("/api/subscribe", json={"email": ADA, "time_zone": "Pacific/Kiritimati"})
    assert answer.status_code == 202
    run_worker(services)
    assert subscriber_of(services).time_zone == "Pacific/Kiritimati"
    refused = client.post("/api/subscribe", json={"email": "b@example.com", "time_zone": "UTC+3"})
    assert refused.status_code == 400
    assert refused.get_json()["error"]["code"] == "invalid_time_zone"
    assert "Europe/London" in refused.get_json()["error"]["message"]
    wrong_type = client.post("/api/subscribe", json={"email": "b@example.com", "time_zone": 3})
    assert wrong_type.status_code == 400
    assert wrong_type.get_json()["error"]["code"] == "invalid_field"
    assert subscribers(services, "b@example.com") == []


def test_pause_for_a_week_resumes_by_itself_in_a_window_never_in_a_burst(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one = confirmed(client, services, smtp, ADA)
    manage = path_of(step_one.link("manage"))
    paused_at = clock.now
    assert client.post(f"{manage}/pause-week").status_code == 303
    subscriber = subscriber_of(services)
    assert subscriber.status == S.PAUSED
    assert subscriber.resume_at == paused_at + timedelta(days=7)
    assert "Paused until Monday 9 March 2026" in text_of(client.get(manage))

    clock.advance(timedelta(days=7, minutes=3))
    deliver(services)  # the scheduler's tick resumes it
    subscriber = subscriber_of(services)
    assert subscriber.status == S.ACTIVE and subscriber.resume_at is None
    assert subscriber.next_send_at is not None
    assert subscriber.next_send_at >= paused_at + timedelta(days=7) + timedelta(days=2)
    assert in_window(subscriber.next_send_at)
    assert len(smtp.to(ADA)) == 2  # nothing sent on resuming
    clock.now = subscriber.next_send_at
    deliver(services)
    assert smtp.to(ADA)[-1].subject.startswith("Step 2 of 10:")


def test_pause_until_a_date_in_the_subscribers_zone_and_bad_dates_are_refused(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one = confirmed(client, services, smtp, ADA)
    manage = path_of(step_one.link("manage"))
    for bad, reason in [("soon", "like 2026-03-20"), ("2026-03-01", "after today")]:
        refused = client.post(f"{manage}/pause-until", data={"until": bad})
        assert refused.status_code == 400
        assert reason in text_of(refused)
        assert subscriber_of(services).status == S.ACTIVE
    assert client.post(f"{manage}/pause-until", data={"until": "2026-03-20"}).status_code == 303
    subscriber = subscriber_of(services)
    assert subscriber.status == S.PAUSED
    # Midnight in New York, which is on summer time (UTC-4) by then.
    assert subscriber.resume_at == datetime(2026, 3, 20, 4, 0, tzinfo=UTC)
    data = client.get(f"{manage}/data.json").get_json()
    assert data["paused_until"] == "2026-03-20T04:00:00+00:00"
    assert data["time_zone"] is None


def test_send_my_next_step_now_at_most_once_a_day(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one = confirmed(client, services, smtp, ADA)
    manage = path_of(step_one.link("manage"))
    assert "Send my next step now" not in text_of(client.get(manage))
    client.post(f"{manage}/send-now")
    run_worker(services)
    assert len(smtp.to(ADA)) == 2  # step 1 went less than a day ago

    clock.advance(timedelta(days=1))
    assert "Send my next step now" in text_of(client.get(manage))
    assert client.post(f"{manage}/send-now").status_code == 303
    run_worker(services)
    assert smtp.to(ADA)[-1].subject.startswith("Step 2 of 10:")
    client.post(f"{manage}/send-now")
    run_worker(services)
    assert len(smtp.to(ADA)) == 3
    subscriber = subscriber_of(services)
    assert subscriber.next_send_at is not None and in_window(subscriber.next_send_at)


def test_changing_time_zone_moves_the_next_step_to_the_new_zones_window(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    step_one = confirmed(client, services, smtp, ADA)
    manage = path_of(step_one.link("manage"))
    refused = client.post(f"{manage}/time-zone", data={"time_zone": "Mars/Base"})
    assert refused.status_code == 400 and "Mars/Base" in text_of(refused)
    assert subscriber_of(services).time_zone is None
    page = text_of(client.get(manage))
    assert "America/New_York time" in page and "(we guessed)" in page

    assert client.post(f"{manage}/time-zone", data={"time_zone": "Asia/Tokyo"}).status_code == 303
    subscriber = subscriber_of(services)
    assert subscriber.time_zone == "Asia/Tokyo"
    assert subscriber.next_send_at is not None
    assert in_window(subscriber.next_send_at, ZoneInfo("Asia/Tokyo"))
    assert subscriber.next_send_at >= clock.now + timedelta(days=2)
    assert "Asia/Tokyo time" in text_of(client.get(manage))


def test_window_volume_against_the_send_rate_is_warned_and_shown(
    services: Services, clock: FakeClock, caplog: pytest.LogCaptureFixture, app: Flask
) -> None:
    services.settings = services.settings.with_changes(send_rate=Rate(1, 3600))  # 2 in a 2 h window
    for number in range(3):
        active_subscriber(services, f"s{number}@example.com", clock.now + timedelta(minutes=number))
    with caplog.at_level(logging.WARNING, logger="worker.schedule"):
        assert check_window_volume(services) == (3, 2)
    assert "3 steps are due within one send window but SEND_RATE sends 2" in caplog.text
    output = app.test_cli_runner().invoke(args=["stats"]).output
    assert "window_busiest_due           3" in output
    assert "window_capacity              2" in output

    caplog.clear()
    services.settings = services.settings.with_changes(send_rate=Rate(10, 1))
    with caplog.at_level(logging.WARNING, logger="worker.schedule"):
        assert check_window_volume(services) == (3, 72000)
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SEND_WINDOW", "9am-11am", "SEND_WINDOW: cannot read '9am'"),
        ("SEND_WINDOW", "11:00-09:00", "SEND_WINDOW: '11:00-09:00' must end after it starts"),
        ("SEND_DAYS", "weekdays", "SEND_DAYS: cannot read 'weekdays'"),
        ("DEFAULT_TIME_ZONE", "EST5", "DEFAULT_TIME_ZONE must be an IANA time zone"),
        ("SEND_RATE", "fast", "SEND_RATE must be a number of emails per s, m, h or d"),
    ],
)
def test_bad_schedule_settings_get_one_line_naming_them(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        Settings.from_env({name: value})
    assert "\n" not in str(raised.value)


def test_schedule_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            "SEND_WINDOW": "09:00-11:00",
            "SEND_DAYS": "mon-fri",
            "DEFAULT_TIME_ZONE": "Europe/London",
            "SEND_RATE": "50000/h",
        }
    )
    assert settings.send_window == timing.SendWindow(9 * 3600, 11 * 3600, frozenset(range(5)))
    assert settings.default_time_zone == "Europe/London"
    assert settings.send_rate == Rate(50000, 3600)
    days_only = Settings.from_env({"SEND_DAYS": "sat,sun"})
    assert days_only.send_window == timing.SendWindow(0, 86400, frozenset({5, 6}))
    unset = Settings.from_env({})
    assert (unset.send_window, unset.default_time_zone, unset.send_rate) == (None, "UTC", None)
