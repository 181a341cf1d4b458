"""The fast path of address validation gives exactly what email-validator gives.

Imports validate 100,000 addresses at a time, so a plain local part at an already
validated domain skips email-validator; these tests hold the two paths to one answer.
"""

from __future__ import annotations

import string

from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from app import drip

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
#: Local parts: plain atoms, dots in good and bad places, and characters that need quoting.
local_parts = st.one_of(
    st.text(alphabet=ATEXT + ".", min_size=0, max_size=70),
    st.text(alphabet=ATEXT + '. "(),:;<>@[\\]é', min_size=1, max_size=20),
)
domains = st.sampled_from(
    [
        "example.com",
        "Example.COM",
        "mail.example.co.uk",
        "bücher.example",
        "xn--bcher-kva.example",
        "localhost",
        "example",
        "exa_mple.com",
        "-example.com",
        "example..com",
        "1.2.3.4",
        "[192.0.2.1]",
        "a" * 64 + ".com",
        "test",
        "example.invalid",
        "",
    ]
)


def outcome(address: str, validate: object) -> tuple[str, str]:
    try:
        return ("ok", validate(address))  # type: ignore[operator]
    except EmailNotValidError as error:
        return ("invalid", type(error).__name__)


def library(address: str) -> str:
    return str(validate_email(address, check_deliverability=False).normalized)


def fast(address: str) -> str:
    return drip._validated(address, check_deliverability=False)


@settings(max_examples=400, deadline=None)
@given(local=local_parts, domain=domains)
def test_the_fast_path_agrees_with_email_validator(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    assert outcome(address, fast) == outcome(address, library)


def test_normalize_email_gives_the_same_answers_after_the_domain_is_known() -> None:
    first = drip.normalize_email("Ada.Lovelace+course@Example.COM")
    again = drip.normalize_email("Ada.Lovelace+course@Example.COM")
    assert first == again == "ada.lovelace+course@example.com"
    for bad in ("ada..lovelace@example.com", ".ada@example.com", "ada@example..com"):
        try:
            drip.normalize_email(bad)
        except drip.InvalidEmail:
            continue
        raise AssertionError(f"{bad} was accepted")
