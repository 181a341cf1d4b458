"""The sign-up form in a real Chromium over https, behind a TLS-terminating proxy.

A self-signed certificate (made with `cryptography`) serves https on a free port; in
front of the app, the hop a proxy adds (X-Forwarded-Proto/-For, plain http behind it)
is played by a small WSGI wrapper, and the app runs with TRUSTED_PROXIES=1, as in
production. The browser follows the pages' own referrer policy, so this fails if the
form page sends no Origin or the CSRF check wants what browsers do not send.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from app import create_app
from app.services import Services
from tests.support import free_port, run_worker
from tests.test_browser_time_zone import CHROMEDRIVER, CHROMIUM
from tests.test_web import consent_of, subscribers

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="Chromium is not installed: apt-get install chromium chromium-driver to run it",
    ),
]


def self_signed(folder: Path) -> tuple[str, str]:
    """A certificate and key for 127.0.0.1, valid for a day; their file names."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


def as_behind_a_proxy(app: WSGIApplication) -> WSGIApplication:
    """What a TLS-terminating proxy hands on: plain http, with X-Forwarded-Proto/-For."""

    def hop(wsgi_env: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        wsgi_env["HTTP_X_FORWARDED_PROTO"] = wsgi_env["wsgi.url_scheme"]
        wsgi_env["HTTP_X_FORWARDED_FOR"] = wsgi_env["REMOTE_ADDR"]
        wsgi_env["wsgi.url_scheme"] = "http"
        wsgi_env["REMOTE_ADDR"] = "10.0.0.2"  # the proxy itself
        return app(wsgi_env, start_response)

    return hop


@pytest.fixture
def https_url(services: Services, tmp_path: Path) -> Iterator[str]:
    """The app (TRUSTED_PROXIES=1) behind an https front on a free local port."""
    app = create_app(services=Services(services.settings.with_changes(trusted_proxies=1)))
    server = make_server(
        "127.0.0.1",
        free_port(),
        as_behind_a_proxy(app),
        threaded=True,
        ssl_context=self_signed(tmp_path),
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        app.extensions["onward"].close()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--ignore-certificate-errors",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=ChromeService(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_form_signs_up_over_https_behind_a_proxy(
    https_url: str, browser: webdriver.Chrome, services: Services
) -> None:
    browser.get(https_url + "/")
    browser.find_element(By.ID, "email").send_keys("ada@example.com")
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda driver: "/subscribe" in driver.current_url)
    assert "Check your inbox" in browser.page_source, browser.page_source
    run_worker(services)  # decides the recorded sign-up
    assert len(subscribers(services, "ada@example.com")) == 1
    assert consent_of(services, "ada@example.com").ip == "127.0.0.1"
