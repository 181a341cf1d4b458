"""The subscriber's pages over HTTP: check your inbox, resend, wrong address, the delete
step, the banners, plain errors, friendly 404 and 405, and the typo hint's lists."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask.testing import FlaskClient

from app import addresses
from app.services import Services
from app.tokens import Purpose
from tests.support import FakeClock, SmtpSink, run_worker
from tests.test_web import (
    ADA,
    confirmed,
    form_sign_up,
    links_of,
    path_of,
    statuses,
    subscribers,
    text_of,
)


def test_check_your_inbox_shows_the_address_and_a_way_to_change_it(client: FlaskClient) -> None:
    page = text_of(form_sign_up(client, ADA, "Ada"))
    assert f"If {ADA} can receive the course" in page.replace("<strong>", "").replace(
        "</strong>", ""
    )
    assert 'href="/?change=1"' in page
    again = text_of(client.get("/?change=1"))
    assert f'value="{ADA}"' in again and 'value="Ada"' in again
    assert "autofocus" in again
    # A fresh visit does not bring back the last address.
    assert f'value="{ADA}"' not in text_of(client.get("/"))


def test_a_resend_waits_for_the_cooldown_then_sends_through_sign_up(
    client: FlaskClient, services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    form_sign_up(client, ADA, "Ada")
    run_worker(services)
    assert len(smtp.to(ADA)) == 1
    page = text_of(client.get("/check-inbox"))
    assert "ask for another email in 10 minutes" in page

    token = client.get("/").get_data(as_text=True).split('name="csrf_token" value="')[1]
    token = token.split('"')[0]
    early = client.post("/resend", data={"csrf_token": token})
    assert early.status_code == 429
    assert "You can ask for another in 10 minutes" in text_of(early)
    run_worker(services)
    assert len(smtp.to(ADA)) == 1

    clock.advance(services.policy.confirm_resend_after + timedelta(seconds=1))
    sent = client.post("/resend", data={"csrf_token": token})
    assert sent.status_code == 200
    assert "Done: we've sent the email again." in text_of(sent)
    run_worker(services)
    assert len(smtp.to(ADA)) == 2
    assert statuses(services, ADA) == ["pending"]


def test_the_resend_needs_a_sign_up_and_a_csrf_token(client: FlaskClient) -> None:
    assert client.post("/resend").status_code == 400  # no CSRF token
    assert client.get("/check-inbox").status_code == 302


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [("ada@gmial.com", "ada@gmail.com"), ("ada@hotmial.com", "ada@hotmail.com")],
)
def test_check_your_inbox_offers_a_fix_for_a_common_domain_typo(
    client: FlaskClient, typed: str, suggested: str
) -> None:
    page = text_of(form_sign_up(client, typed))
    assert f"Did you mean {suggested}?" in page.replace("<strong>", "").replace("</strong>", "")
    assert f'name="email" value="{suggested}"' in page


def test_the_typo_hint_leaves_good_addresses_alone() -> None:
    for good in ("ada@gmail.com", "ada@example.com", "ada@hotmail.co.uk", "ada@outlook.com"):
        assert addresses.suggest(good) is None, good
    assert addresses.suggest("ada@gmial.com") == "ada@gmail.com"
    assert addresses.suggest("ada@icloud.con") == "ada@icloud.com"
    assert "gmail.com" in addresses.domain_lists().domains


def test_an_address_error_is_plain_marked_and_focused(client: FlaskClient) -> None:
    response = form_sign_up(client, "ada @example.com")
    page = text_of(response)
    assert response.status_code == 400
    assert "SPACE" not in page and "@-sign" not in page
    assert "can't contain spaces" in page
    assert 'aria-invalid="true" aria-describedby="email-error" autofocus' in page
    assert 'id="email-error"' in page


def test_deleting_asks_first_and_erases_only_on_the_second_post(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    confirmed(client, services, smtp, ADA)
    manage = path_of(links_of(services, ADA).manage_url)
    assert client.get(f"{manage}/delete").status_code == 405
    ask = client.post(f"{manage}/delete")
    assert ask.status_code == 200
    assert "Delete your data?" in text_of(ask)
    assert 'name="confirm" value="yes"' in text_of(ask)
    assert statuses(services, ADA) == ["active"]
    done = client.post(f"{manage}/delete", data={"confirm": "yes"})
    assert "Your data is deleted" in text_of(done)
    assert statuses(services, ADA) == []


def test_every_manage_action_ends_with_a_banner(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    confirmed(client, services, smtp, ADA)
    manage = path_of(links_of(services, ADA).manage_url)
    for action, banner in (
        ("pause", "Done: your course is paused."),
        ("pause", "Nothing needed changing"),
        ("resume", "Done: your course is running again."),
        ("unsubscribe", "Done: you're unsubscribed."),
    ):
        answer = client.post(f"{manage}/{action}")
        assert answer.status_code == 303
        page = client.get(answer.headers["Location"])
        assert banner in text_of(page), action
        assert 'role="status"' in text_of(page)
    # A banner comes only from the known list.
    assert 'role="status"' not in text_of(client.get(f"{manage}?done=<b>hi</b>"))


def test_the_manage_page_lists_the_steps_received_with_links(
    client: FlaskClient, services: Services, smtp: SmtpSink
) -> None:
    step_one = confirmed(client, services, smtp, ADA)
    [subscriber] = subscribers(services, ADA)
    page = text_of(client.get(path_of(links_of(services, ADA).manage_url)))
    # A link's token carries the second it was signed in, so the page's link is
    # compared by what it reads back to, not byte for byte with one signed here.
    found = re.search(rf'<a href="([^"]+)">{re.escape(step_one.subject)}</a>', page)
    assert found, page
    base, _, token_and_step = found.group(1).partition("/read/")
    token, _, step = token_and_step.partition("/")
    assert (base, step) == (services.settings.base_url, "1")
    assert services.signer.read(Purpose.READ, token) == subscriber.key
    assert step_one.subject in text_of(client.get(path_of(found.group(1))))


def test_unknown_pages_and_wrong_methods_get_friendly_pages(client: FlaskClient) -> None:
    missing = client.get("/no-such-page")
    assert missing.status_code == 404
    assert "Page not found" in text_of(missing)
    assert "requested URL was not found" not in text_of(missing)
    wrong = client.delete("/")
    assert wrong.status_code == 405
    assert "method is not allowed" not in text_of(wrong)
    assert "use the button on the page" in text_of(wrong)


def test_no_page_template_carries_inline_script_or_style() -> None:
    import re
    from pathlib import Path

    folder = Path(__file__).parent.parent / "app" / "templates"
    for template in folder.glob("*.html"):
        if template.name == "read.html":
            continue  # the email itself, styled inline as emails must be
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert not re.search(r"\s(style|on[a-z]+)=", text), template.name
        assert "<style" not in text, template.name
