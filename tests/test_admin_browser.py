"""The console in headless Chromium: sign in, read the funnel, search, act; axe-core on every page.

Needs Chromium and its chromedriver (Debian packages chromium, chromium-driver): without
them these tests are skipped, saying why, unless ONWARD_REQUIRE_BROWSER=1 is set (as CI
does), which makes a missing browser a failure. axe-core comes from tests/node (npm).
SCREENSHOT_DIR=folder keeps a screenshot of each page.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from werkzeug.serving import make_server

from app import console
from app.config import Settings
from app.db import migrate, session_scope
from app.models import AuditEntry, Subscriber, SubscriberStatus
from app.services import Services
from tests.admin_support import OPERATOR, PASSWORD, add_operator, seed_course
from tests.node_support import NODE_DIR, install_node_tools
from tests.support import FakeClock, click_through, free_port

pytestmark = pytest.mark.browser

AXE = NODE_DIR / "node_modules" / "axe-core" / "axe.min.js"
#: Window sizes the overview is checked at: a phone's and a desktop's (CSS pixels).
PHONE = (390, 844)
DESKTOP = (1280, 1000)


def _chromium() -> tuple[str, str]:
    browser = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        reason = "Chromium and chromedriver are needed (Debian packages chromium, chromium-driver)"
        if os.environ.get("ONWARD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (ONWARD_REQUIRE_BROWSER=1 asks for these tests)")
        pytest.skip(reason)
    return browser, driver


@pytest.fixture(scope="module")
def axe_source() -> str:
    """axe-core's script, installed from tests/node."""
    install_node_tools()
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing after the install: check tests/node/package.json")
    return AXE.read_text()


@pytest.fixture
def live(settings: Settings, clock: FakeClock) -> Iterator[tuple[str, Services]]:
    """The web app on a real HTTP server in this process; its address and services."""
    port = free_port()
    services = Services(settings.with_changes(base_url=f"http://127.0.0.1:{port}"), clock=clock)
    if services.engine.dialect.name == "postgresql":
        from tests.conftest import drop_postgresql_schema

        drop_postgresql_schema(services.engine)
    migrate(services.engine)
    from app import create_app

    app: Flask = create_app(services=services)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", services
    finally:
        server.shutdown()
        thread.join(timeout=10)
        services.queue.empty()
        services.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven through chromedriver."""
    binary, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def axe_violations(driver: Any, axe: str) -> list[dict[str, Any]]:
    """axe-core's violations on the page the browser shows (its default rules: WCAG A and AA)."""
    driver.execute_script(axe)
    driver.set_script_timeout(60)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(JSON.stringify(r.violations)));"
    )
    violations: list[dict[str, Any]] = json.loads(result)
    return violations


def check_page(driver: Any, axe: str, name: str, *, kind: str = "admin") -> None:
    """axe finds nothing on this page, and nothing is wider than the window; keep a screenshot
    when asked to."""
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{kind}-{name}.png"))
    violations = axe_violations(driver, axe)
    assert not violations, f"{name}: " + "; ".join(
        f"{v['id']}: {v['help']} ({[n['target'] for n in v['nodes']][:3]})" for v in violations
    )
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
    )
    assert overflow <= 0, f"{name}: the page is {overflow}px wider than the window"


def test_an_operator_signs_in_reads_the_funnel_searches_and_acts(
    live: tuple[str, Services], browser: Any, axe_source: str, clock: FakeClock
) -> None:
    from selenium.webdriver.common.by import By

    base, services = live
    add_operator(services)
    with session_scope(services.sessions) as session:
        seed_course(session, 200, now=clock.now)
        funnel = console.funnel(session, services.course.step_count)
        target = session.scalars(
            select(Subscriber).where(Subscriber.status == SubscriberStatus.ACTIVE).limit(1)
        ).one()
        target_id, target_email = target.id, target.email

    browser.get(f"{base}/admin/funnel")
    assert browser.current_url == f"{base}/admin/login"
    check_page(browser, axe_source, "login")
    browser.find_element(By.ID, "email").send_keys(OPERATOR)
    browser.find_element(By.ID, "password").send_keys("not the password")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, "main button[type=submit]"))
    assert "do not match" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    click_through(browser, browser.find_element(By.CSS_SELECTOR, "main button[type=submit]"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    # The overview at a phone's width and at a desktop's: readable, nothing off the side.
    for name, (width, height) in (("overview-phone", PHONE), ("overview-desktop", DESKTOP)):
        browser.set_window_size(width, height)
        browser.refresh()
        assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
        chart = browser.find_element(By.CSS_SELECTOR, "figure.chart svg")
        assert 0 < chart.size["width"] <= browser.execute_script("return window.innerWidth")
        assert chart.accessible_name == "Emails sent per day"
        check_page(browser, axe_source, name)

    click_through(browser, browser.find_element(By.LINK_TEXT, "Funnel"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#funnel-table tbody tr")
    shown = [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")] for row in rows]
    assert shown == [
        [
            f"Step {s.number}",
            f"{s.reached:,}",
            f"{s.paused_after:,}",
            f"{s.unsubscribed_after:,}",
            f"{s.bounced_at:,}",
        ]
        for s in funnel.steps
    ]
    assert browser.find_element(By.ID, "completed").text == f"{funnel.completed:,}"
    check_page(browser, axe_source, "funnel")

    click_through(browser, browser.find_element(By.LINK_TEXT, "Subscribers"))
    check_page(browser, axe_source, "subscribers")
    browser.find_element(By.ID, "q").send_keys(target_email)
    click_through(browser, browser.find_element(By.CSS_SELECTOR, "form.search button"))
    click_through(browser, browser.find_element(By.LINK_TEXT, target_email))
    assert browser.find_element(By.ID, "status").text == "active"
    check_page(browser, axe_source, "subscriber")
    click_through(browser, browser.find_element(By.XPATH, "//button[normalize-space()='Pause']"))
    assert browser.find_element(By.ID, "status").text == "paused"
    assert "Done: pause." in browser.find_element(By.CSS_SELECTOR, "[role=status]").text
    with session_scope(services.sessions) as session:
        assert session.get_one(Subscriber, target_id).status == SubscriberStatus.PAUSED
        entry = session.scalars(select(AuditEntry)).one()
        assert (entry.operator_email, entry.action, entry.subscriber_id) == (
            OPERATOR,
            "pause",
            target_id,
        )

    for link, name in (("Problems", "problems"), ("Emails", "emails")):
        click_through(browser, browser.find_element(By.LINK_TEXT, link))
        check_page(browser, axe_source, name)
    click_through(browser, browser.find_element(By.LINK_TEXT, "step-01"))
    check_page(browser, axe_source, "email")

    click_through(browser, browser.find_element(By.XPATH, "//button[normalize-space()='Sign out']"))
    assert browser.current_url == f"{base}/admin/login"
    browser.get(f"{base}/admin/")
    assert browser.current_url == f"{base}/admin/login"
