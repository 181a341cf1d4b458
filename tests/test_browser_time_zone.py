"""The sign-up form in a real Chromium: the browser's own time zone reaches the database.

Chromium runs headless with a forced time zone (CDP Emulation.setTimezoneOverride),
through chromedriver; the app is served by a real HTTP server on a free port.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from app import timing
from app.services import Services
from tests.support import free_port, run_worker
from tests.test_web import subscribers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="Chromium is not installed: apt-get install chromium chromium-driver to run it",
    ),
]


@pytest.fixture
def live_url(app: Flask) -> Iterator[str]:
    """The app served over real HTTP on a free local port."""
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=ChromeService(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.parametrize("zone", ["Asia/Kathmandu", "America/St_Johns"])
def test_the_form_sends_the_browsers_time_zone(
    live_url: str, browser: webdriver.Chrome, services: Services, zone: str
) -> None:
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": zone})
    browser.get(live_url + "/")
    field = browser.find_element(By.NAME, "time_zone")
    WebDriverWait(browser, 10).until(lambda _: field.get_attribute("value"))
    sent = field.get_attribute("value")
    # Chromium's ICU may give the older alias (Asia/Katmandu): the same zone in tzdata.
    assert sent is not None and timing.is_time_zone(sent)
    moments = [datetime(2026, month, 1, tzinfo=UTC) for month in range(1, 13)]
    assert [m.astimezone(ZoneInfo(sent)).utcoffset() for m in moments] == [
        m.astimezone(ZoneInfo(zone)).utcoffset() for m in moments
    ]
    browser.find_element(By.ID, "email").send_keys("ada@example.com")
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda driver: "/subscribe" in driver.current_url)
    assert "Check your inbox" in browser.page_source
    run_worker(services)  # decides the recorded sign-up
    [subscriber] = subscribers(services, "ada@example.com")
    assert subscriber.time_zone == sent
