"""The subscriber's journey in headless Chromium, at a desktop's and a phone's size.

Sign up, "check your inbox", the confirmation link from the email a real SMTP server
caught, the manage page, pause, resume, the unsubscribe page, delete with its second
step; axe-core finds nothing on any page, field borders and the focus ring reach 3:1
against their background, and no page is wider than the window. Skipped without
Chromium unless ONWARD_REQUIRE_BROWSER=1 (see tests/test_admin_browser.py).
SCREENSHOT_DIR=folder keeps a screenshot of each page.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from app.services import Services
from tests.support import SmtpSink, click_through, free_port, run_worker
from tests.test_admin_browser import (  # noqa: F401 (fixtures)
    DESKTOP,
    PHONE,
    axe_source,
    axe_violations,
    browser,
)
from tests.test_admin_browser import check_page as admin_check_page
from tests.test_web import path_of, statuses

pytestmark = pytest.mark.browser

ADA = "ada@example.com"
_RGB = re.compile(r"rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)")


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
        thread.join(timeout=10)


def luminance(css: str) -> float:
    """Relative luminance (WCAG 2) of a computed CSS colour like `rgb(31, 111, 92)`."""
    match = _RGB.match(css)
    assert match, f"not a computed colour: {css}"
    channels = [float(value) / 255 for value in match.groups()]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(first: str, second: str) -> float:
    """The WCAG contrast ratio of two computed colours."""
    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def check_page(driver: Any, axe: str, name: str) -> None:
    """The console's page check (axe, width, screenshot), for a public page."""
    admin_check_page(driver, axe, name, kind="page")


def card_background(driver: Any) -> str:
    return str(
        driver.execute_script(
            "return getComputedStyle(document.querySelector('.card')).backgroundColor;"
        )
    )


def check_contrast(driver: Any) -> None:
    """The email field's border and the green button's focus ring: 3:1 or more on the card."""
    from selenium.webdriver.common.by import By

    background = card_background(driver)
    field = driver.find_element(By.ID, "email")
    border = field.value_of_css_property("border-top-color")
    assert contrast(border, background) >= 3, f"field border {border} on {background}"
    button = driver.find_element(By.CSS_SELECTOR, "form button[type=submit]")
    driver.execute_script("arguments[0].focus();", button)
    assert driver.execute_script("return document.activeElement.matches(':focus-visible');")
    assert button.value_of_css_property("outline-style") == "solid"
    assert float(button.value_of_css_property("outline-width").removesuffix("px")) >= 2
    ring = button.value_of_css_property("outline-color")
    assert contrast(ring, background) >= 3, f"focus ring {ring} on {background}"
    field.click()  # the ring leaves the button, the field has its own


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_subscriber_signs_up_confirms_manages_and_deletes(
    live_url: str,
    browser: Any,  # noqa: F811
    axe_source: str,  # noqa: F811
    services: Services,
    smtp: SmtpSink,
    size: tuple[int, int],
) -> None:
    from selenium.webdriver.common.by import By

    label = "desktop" if size == DESKTOP else "phone"
    browser.set_window_size(*size)

    def button(text: str) -> Any:
        return browser.find_element(By.XPATH, f"//button[normalize-space()={text!r}]")

    def press(text: str) -> None:
        """Press a button and wait until the page it leads to has loaded."""
        click_through(browser, button(text))

    def heading() -> str:
        return str(browser.find_element(By.TAG_NAME, "h1").text)

    def banner() -> str:
        return str(browser.find_element(By.CSS_SELECTOR, "[role=status]").text)

    browser.get(live_url + "/")
    check_page(browser, axe_source, f"sign-up-{label}")
    check_contrast(browser)

    # A mistake first: plain words, the field marked and focused.
    browser.find_element(By.ID, "email").send_keys("ada @example.com")
    press("Send me the course")
    field = browser.find_element(By.ID, "email")
    assert field.get_attribute("aria-invalid") == "true"
    assert browser.switch_to.active_element == field
    assert "can't contain spaces" in browser.find_element(By.ID, "email-error").text
    check_page(browser, axe_source, f"sign-up-error-{label}")

    field.clear()
    field.send_keys(ADA)
    press("Send me the course")
    assert heading() == "Check your inbox"
    assert ADA in browser.find_element(By.TAG_NAME, "main").text
    assert not button("Send the email again").is_enabled()  # the cooldown, shown
    check_page(browser, axe_source, f"check-inbox-{label}")
    browser.get(browser.find_element(By.PARTIAL_LINK_TEXT, "Wrong address?").get_attribute("href"))
    assert browser.find_element(By.ID, "email").get_attribute("value") == ADA
    browser.back()

    run_worker(services)
    [confirmation] = smtp.to(ADA)
    browser.get(live_url + path_of(confirmation.link("confirm")))
    assert heading() == "One last step"
    check_page(browser, axe_source, f"confirm-{label}")
    press("Yes, send me the course")
    assert heading() == "You're in"
    check_page(browser, axe_source, f"confirmed-{label}")

    run_worker(services)
    step_one = smtp.to(ADA)[-1]
    assert step_one.subject.startswith("Step 1 of 10")
    browser.get(live_url + path_of(step_one.link("unsubscribe")))
    assert heading() == "Unsubscribe from the course?"
    check_page(browser, axe_source, f"unsubscribe-{label}")

    browser.get(live_url + path_of(step_one.link("manage")))
    assert heading() == "Your subscription"
    assert browser.find_element(By.PARTIAL_LINK_TEXT, "Step 1 of 10").is_displayed()
    assert "Your next step arrives" in browser.find_element(By.TAG_NAME, "main").text
    check_page(browser, axe_source, f"manage-{label}")
    press("Pause the course")
    assert banner().startswith("Done: your course is paused")
    check_page(browser, axe_source, f"manage-paused-{label}")
    press("Resume the course")
    assert banner() == "Done: your course is running again."
    assert statuses(services, ADA) == ["active"]

    press("Delete my data")
    assert heading() == "Delete your data?"
    assert statuses(services, ADA) == ["active"]
    check_page(browser, axe_source, f"delete-{label}")
    press("Yes, delete my data")
    assert heading() == "Your data is deleted"
    assert statuses(services, ADA) == []
    check_page(browser, axe_source, f"deleted-{label}")

    browser.get(live_url + "/no-such-page")
    assert heading() == "Page not found"
    check_page(browser, axe_source, f"not-found-{label}")
