"""The console's counted figures: kept in Redis for CONSOLE_CACHE, refreshed by the
scheduler, dropped by an operator's action, and never needed for a page to answer."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import select

from app import console, figures
from app.config import ConfigError, Settings
from app.db import session_scope
from app.models import Subscriber, SubscriberStatus
from app.services import Services
from tests.admin_support import HTTPS, post_action, seed_course, signed_in
from tests.support import FakeClock, free_port

S = SubscriberStatus


def active_count(page: str) -> str:
    """The overview's figure for active subscriptions, as shown."""
    marker = 'status=active">Active</a></th><td class="num">'
    start = page.index(marker) + len(marker)
    return page[start : page.index("<", start)]


def make_one_more_active(services: Services) -> None:
    with session_scope(services.sessions) as session:
        paused = session.scalars(select(Subscriber).where(Subscriber.status == S.PAUSED)).first()
        assert paused is not None
        paused.status = S.ACTIVE


def test_the_overview_shows_the_kept_copy_until_it_is_old_then_counts_again(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 120, now=clock.now)
        before = console.status_counts(session)[S.ACTIVE]
    client = signed_in(app, services)
    assert active_count(client.get("/admin/", base_url=HTTPS).get_data(as_text=True)) == str(before)
    assert services.redis.exists(f"{services.settings.queue_name}:console:figures")
    make_one_more_active(services)
    # Still the copy: counting a million rows per page is what this avoids.
    page = client.get("/admin/", base_url=HTTPS).get_data(as_text=True)
    assert active_count(page) == str(before)
    assert f"Counted at {clock.now:%Y-%m-%d %H:%M:%S} UTC" in page
    clock.advance(services.settings.console_cache)
    page = client.get("/admin/", base_url=HTTPS).get_data(as_text=True)
    assert active_count(page) == str(before + 1)
    funnel_page = client.get("/admin/funnel", base_url=HTTPS).get_data(as_text=True)
    assert f"Counted at {clock.now:%Y-%m-%d %H:%M:%S} UTC" in funnel_page


def test_an_operators_action_drops_the_copy_so_its_effect_shows_at_once(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 60, now=clock.now)
        target = session.scalars(select(Subscriber).where(Subscriber.status == S.ACTIVE)).first()
        assert target is not None
        target_id = target.id
        before = console.status_counts(session)[S.PAUSED]
    client = signed_in(app, services)
    client.get("/admin/", base_url=HTTPS)
    assert post_action(client, target_id, "pause") == 302
    page = client.get("/admin/", base_url=HTTPS).get_data(as_text=True)
    assert f'status=paused">Paused</a></th><td class="num">{before + 1}<' in page


def test_the_scheduler_counts_again_only_past_half_the_cache_and_one_at_a_time(
    services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 40, now=clock.now)
    first = figures.refresh(services, now=clock.now)
    assert first is not None and first.computed_at == clock.now
    half = services.settings.console_cache / 2
    assert figures.refresh(services, now=clock.now + half - timedelta(seconds=1)) is None
    # Another scheduler holds the lock: this one leaves the counting to it.
    lock = f"{services.settings.queue_name}:console:figures:lock"
    services.redis.set(lock, "1")
    assert figures.refresh(services, now=clock.now + half) is None
    services.redis.delete(lock)
    later = figures.refresh(services, now=clock.now + half)
    assert later is not None and later.computed_at == clock.now + half
    assert not services.redis.exists(lock)
    assert figures.current(services, now=clock.now + half) == later


def test_the_copy_round_trips_through_json_and_a_bad_copy_is_counted_again(
    services: Services, clock: FakeClock
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 80, now=clock.now)
    counted = figures.compute(services, now=clock.now)
    assert sum(counted.funnel.statuses.values()) == 80
    assert figures.decode(figures.encode(counted)) == counted
    key = f"{services.settings.queue_name}:console:figures"
    for garbage in ("not json", '{"format": 1}', '{"format": 0, "statuses": {}}'):
        services.redis.set(key, garbage)
        again = figures.current(services, now=clock.now)
        assert (again.funnel, again.statuses, again.per_day) == (
            counted.funnel,
            counted.statuses,
            counted.per_day,
        )
        assert figures.decode(services.redis.get(key) or b"") is not None  # replaced
        services.redis.delete(key)


def test_with_console_cache_0_every_page_counts_and_nothing_is_kept(
    app: Flask, services: Services, clock: FakeClock
) -> None:
    services.settings = services.settings.with_changes(console_cache=timedelta(0))
    with session_scope(services.sessions) as session:
        seed_course(session, 30, now=clock.now)
        before = console.status_counts(session)[S.ACTIVE]
    client = signed_in(app, services)
    assert active_count(client.get("/admin/", base_url=HTTPS).get_data(as_text=True)) == str(before)
    make_one_more_active(services)
    assert active_count(client.get("/admin/", base_url=HTTPS).get_data(as_text=True)) == str(
        before + 1
    )
    assert not services.redis.exists(f"{services.settings.queue_name}:console:figures")
    assert figures.refresh(services, now=clock.now) is None


def test_without_redis_the_pages_still_count(
    settings: Settings, clock: FakeClock, services: Services
) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 25, now=clock.now)
    nowhere = settings.with_changes(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    offline = Services(nowhere, clock=clock)
    try:
        counted = figures.current(offline, now=clock.now)
        assert sum(counted.statuses.values()) == 25
        assert figures.refresh(offline, now=clock.now) is None
        figures.forget(offline)  # logs, does not raise
    finally:
        offline.close()


def test_the_background_refresh_keeps_a_copy_in_redis(services: Services, clock: FakeClock) -> None:
    with session_scope(services.sessions) as session:
        seed_course(session, 20, now=clock.now)
    stop = threading.Event()
    thread = figures.refresh_in_background(services, stop)
    key = f"{services.settings.queue_name}:console:figures"
    try:
        for _ in range(200):
            if services.redis.exists(key):
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    kept = figures.decode(services.redis.get(key) or b"")
    assert kept is not None and sum(kept.statuses.values()) == 20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", timedelta(minutes=1)),
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
        ("5m", timedelta(minutes=5)),
    ],
)
def test_console_cache_is_read_from_the_environment(text: str, expected: timedelta) -> None:
    assert Settings.from_env({"CONSOLE_CACHE": text}).console_cache == expected


def test_a_bad_console_cache_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="CONSOLE_CACHE"):
        Settings.from_env({"CONSOLE_CACHE": "soon"})
