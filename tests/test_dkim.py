"""DKIM: every message signed when a key is configured, verifiable offline."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from app import create_app
from app.config import ConfigError
from app.dkim import DkimSigner
from app.sending import send_batch
from app.services import Services
from tests.support import FakeClock, SmtpSink, active_subscriber, claim


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
def signing(services: Services, key_file: Path) -> Iterator[Services]:
    signed = Services(
        services.settings.with_changes(dkim_key_file=key_file, dkim_selector="course2026"),
        clock=services.clock,
    )
    yield signed
    signed.close()


def published(signer: DkimSigner) -> dict[bytes, bytes]:
    """The DNS answers a verifier would get, built from the record we tell operators to add."""
    name, value = signer.dns_record()
    return {f"{name}.".encode(): value.encode()}


def verify(raw: bytes, records: dict[bytes, bytes]) -> bool:
    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return bool(dkim.verify(raw, dnsfunc=dns))


def test_every_sent_message_is_signed_and_verifies(
    signing: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    # Nine: three waves over four connections, each wave's signatures made in threads
    # while the wave before it is sent; each must still be its own message's.
    ids = [active_subscriber(signing, f"p{n}@example.com", clock.now) for n in range(9)]
    claim(signing, ids, clock.now)
    assert send_batch(signing, ids).as_dict() == {"sent": 9}
    assert len(smtp.messages) == 9
    assert signing.dkim is not None
    records = published(signing.dkim)
    for received in smtp.messages:
        assert received.raw.startswith(b"DKIM-Signature:")
        assert "s=course2026" in str(received.message["DKIM-Signature"]).replace(" ", "")
        assert verify(received.raw, records)


def test_the_unsubscribe_headers_are_signed_so_changing_them_breaks_the_signature(
    signing: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(signing, "ada@example.com", clock.now)
    claim(signing, [subscriber_id], clock.now)
    send_batch(signing, [subscriber_id])
    [received] = smtp.messages
    signature = str(received.message["DKIM-Signature"])
    signed = re.search(r"\bh=([^;]+)", signature)
    assert signed is not None
    names = {name.strip().lower() for name in re.sub(r"\s+", "", signed.group(1)).split(":")}
    assert {"list-unsubscribe", "list-unsubscribe-post", "from", "subject", "date"} <= names
    assert signing.dkim is not None
    records = published(signing.dkim)
    assert verify(received.raw, records)
    forged = received.raw.replace(
        b"https://onward.test/unsubscribe/", b"https://evil.test/unsubscribe/"
    )
    assert forged != received.raw
    assert not verify(forged, records)
    no_one_click = received.raw.replace(
        b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Two-Clicks"
    )
    assert not verify(no_one_click, records)


def test_without_a_key_messages_go_out_unsigned(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    claim(services, [subscriber_id], clock.now)
    send_batch(services, [subscriber_id])
    assert b"DKIM-Signature" not in smtp.messages[0].raw


def test_a_missing_or_bad_key_file_is_a_clear_setting_error(
    services: Services, tmp_path: Path
) -> None:
    missing = Services(services.settings.with_changes(dkim_key_file=tmp_path / "none.pem"))
    with pytest.raises(ConfigError, match=r"DKIM_KEY_FILE .*none\.pem"):
        _ = missing.dkim
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    broken = Services(services.settings.with_changes(dkim_key_file=garbage))
    with pytest.raises(ConfigError, match="not a PEM private key"):
        _ = broken.dkim


def test_the_cli_prints_the_dns_record_to_publish(signing: Services) -> None:
    app: Flask = create_app(services=signing)
    result = app.test_cli_runner().invoke(args=["dkim-dns"])
    assert result.exit_code == 0, result.output
    name_line, value_line = result.output.strip().splitlines()
    assert name_line == "course2026._domainkey.onward.test. IN TXT"
    value = "".join(re.findall(r'"([^"]*)"', value_line))
    assert signing.dkim is not None
    assert value == signing.dkim.dns_record()[1]
    assert value.startswith("v=DKIM1; k=rsa; p=")


def test_signatures_verify_for_folded_headers_and_untidy_bodies_and_break_when_tampered(
    key_file: Path,
) -> None:
    signer = DkimSigner.from_file(key_file, domain="onward.test", selector="s1")
    records = published(signer)
    head = (
        b"From: Onward <course@onward.test>\r\n"
        b"To: =?utf-8?b?Wm/DqyDDnMOxw69jb2RlLcORYW1l?=\r\n =?utf-8?b?bG9uZw==?= <z@example.com>\r\n"
        b"Subject:  Step 1   of 10\r\n"
        b"List-Unsubscribe: <https://onward.test/unsubscribe/abc>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    )
    for body in [
        b"tidy line\r\nanother\r\n",
        b"spaces  inside \t and at the end \t\r\n\r\n\r\n",
        b"no final line end",
        b"",
    ]:
        signed = signer.sign(head + b"\r\n" + body)
        assert verify(signed, records), body
        assert not verify(signed.replace(b"/unsubscribe/abc", b"/unsubscribe/abd"), records)
        assert not verify(signed + b"appended\r\n", records)


def test_the_key_is_parsed_once_not_per_message(
    key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = DkimSigner.from_file(key_file, domain="onward.test", selector="s1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the key was parsed again")

    monkeypatch.setattr(serialization, "load_pem_private_key", refuse)
    raw = b"From: a@onward.test\r\nTo: b@example.com\r\nSubject: x\r\n\r\nHello\r\n"
    assert verify(signer.sign(raw), published(signer))
