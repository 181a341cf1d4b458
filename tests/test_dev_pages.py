"""The dev pages: the catcher's outbox and previews of every email."""

from __future__ import annotations

import html
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.dev.catcher import start_catcher
from app.services import Services
from tests.support import free_port


@pytest.fixture
def dev_app(services: Services, tmp_path: Path) -> Iterator[Flask]:
    settings = services.settings.with_changes(dev_pages=True, outbox_dir=tmp_path / "outbox")
    dev_services = Services(settings, clock=services.clock)
    yield create_app(services=dev_services)
    dev_services.close()


@pytest.fixture
def dev_client(dev_app: Flask) -> FlaskClient:
    return dev_app.test_client()


def test_dev_pages_are_absent_unless_turned_on(client: FlaskClient) -> None:
    assert client.get("/dev/emails/").status_code == 404
    assert client.get("/dev/outbox/").status_code == 404


def test_previews_list_and_render_every_email_as_html_and_text(
    dev_client: FlaskClient, services: Services
) -> None:
    index = dev_client.get("/dev/emails/").get_data(as_text=True)
    for name in services.catalog.names:
        assert f'href="/dev/emails/{name}"' in index
        page = dev_client.get(f"/dev/emails/{name}")
        assert page.status_code == 200
        body = page.get_data(as_text=True)
        rendered_html = html.unescape(body.split('srcdoc="', 1)[1].split('" title=', 1)[0])
        assert rendered_html.startswith("<!doctype html>")
        assert "Hi Ada," in rendered_html
        assert "Hi Ada," in body.split("<pre>", 1)[1]
    assert dev_client.get("/dev/emails/step-11").status_code == 404


def test_the_outbox_shows_what_the_catcher_received(
    dev_client: FlaskClient, dev_app: Flask
) -> None:
    folder = dev_app.extensions["onward"].settings.outbox_dir
    port = free_port()
    catcher = start_catcher(folder, port=port)
    try:
        with smtplib.SMTP("127.0.0.1", port) as relay:
            relay.sendmail(
                "course@onward.test",
                ["ada@example.com"],
                b"Subject: Step 1 of 10: hello\r\nTo: ada@example.com\r\n"
                b"Content-Type: text/plain\r\n\r\nPlain words.\r\n",
            )
    finally:
        catcher.stop()
    [saved] = sorted(folder.glob("*.eml"))
    listing = dev_client.get("/dev/outbox/").get_data(as_text=True)
    assert "Step 1 of 10: hello" in listing
    page = dev_client.get(f"/dev/outbox/{saved.stem}").get_data(as_text=True)
    assert "Plain words." in page
    assert dev_client.get("/dev/outbox/../../etc/passwd").status_code == 404
    assert dev_client.get("/dev/outbox/123-deadbeef").status_code == 404
