"""The console in headless Chromium: sign in, read the funnel, search, act; axe-core on every page.

Needs Chromium with its chromedriver, and axe-core in tests/node (npm). Without them
these tests are skipped, saying why. SCREENSHOT_DIR=folder keeps a screenshot of each page.
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
from tests.support import FakeClock, free_port

pytestmark = pytest.mark.browser

AXE = Path(__file__).parent / "node" / "node_modules" / "axe-core" / "axe.min.js"


def _chromium() -> tuple[str, str]:
    browser = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "Chromium and chromedriver are needed (Debian packages chromium, chromium-driver)"
        )
    return browser, driver


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


def axe_violations(driver: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page the browser shows (WCAG 2.x A and AA, best practices)."""
    if not AXE.exists():
        pytest.skip(f"axe-core is not installed in {AXE.parent.parent} (npm install there)")
    driver.execute_script(AXE.read_text())
    driver.set_script_timeout(60)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(JSON.stringify(r.violations)));"
    )
    violations: list[dict[str, Any]] = json.loads(result)
    return violations


def check_page(driver: Any, name: str) -> None:
    """axe finds nothing on this page; keep a screenshot when asked to."""
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"admin-{name}.png"))
    violations = axe_violations(driver)
    assert not violations, f"{name}: " + "; ".join(
        f"{v['id']}: {v['help']} ({[n['target'] for n in v['nodes']][:3]})" for v in violations
    )


def test_an_operator_signs_in_reads_the_funnel_searches_and_acts(
    live: tuple[str, Services], browser: Any, clock: FakeClock
) -> None:
    from selenium.webdriver.common.by import By

    base, services = live
    add_operator(services)
    with session_scope(services.sessions) as session:
        seed_course(session, 200, now=clock.now)
        funnel = console.funnel(session)
        target = session.scalars(
            select(Subscriber).where(Subscriber.status == SubscriberStatus.ACTIVE).limit(1)
        ).one()

    browser.get(f"{base}/admin/funnel")
    assert browser.current_url == f"{base}/admin/login"
    check_page(browser, "login")
    browser.find_element(By.ID, "email").send_keys(OPERATOR)
    browser.find_element(By.ID, "password").send_keys("not the password")
    browser.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
    assert "do not match" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    check_page(browser, "overview")

    browser.find_element(By.LINK_TEXT, "Funnel").click()
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
    check_page(browser, "funnel")

    browser.find_element(By.LINK_TEXT, "Subscribers").click()
    check_page(browser, "subscribers")
    browser.find_element(By.ID, "q").send_keys(target.email)
    browser.find_element(By.CSS_SELECTOR, "form.search button").click()
    browser.find_element(By.LINK_TEXT, target.email).click()
    assert browser.find_element(By.ID, "status").text == "active"
    check_page(browser, "subscriber")
    browser.find_element(By.XPATH, "//button[normalize-space()='Pause']").click()
    assert browser.find_element(By.ID, "status").text == "paused"
    assert "Done: pause." in browser.find_element(By.CSS_SELECTOR, "[role=status]").text
    with session_scope(services.sessions) as session:
        assert session.get_one(Subscriber, target.id).status == SubscriberStatus.PAUSED
        entry = session.scalars(select(AuditEntry)).one()
        assert (entry.operator_email, entry.action, entry.subscriber_id) == (
            OPERATOR,
            "pause",
            target.id,
        )

    for link, name in (("Problems", "problems"), ("Emails", "emails")):
        browser.find_element(By.LINK_TEXT, link).click()
        check_page(browser, name)
    browser.find_element(By.LINK_TEXT, "step-01").click()
    check_page(browser, "email")

    browser.find_element(By.XPATH, "//button[normalize-space()='Sign out']").click()
    assert browser.current_url == f"{base}/admin/login"
    browser.get(f"{base}/admin/")
    assert browser.current_url == f"{base}/admin/login"
