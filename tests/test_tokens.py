"""Signed links: the tokens are byte for byte what itsdangerous makes, and it reads them."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer

from app.tokens import ExpiredLink, InvalidLink, Links, LinkSigner, Purpose, TrackedLink

BASE = "https://onward.example"
WEEK = timedelta(days=7)
#: Moments as timestamps: 1 to 5 bytes long once packed, some with a zero byte inside.
MOMENTS = st.sampled_from([0, 1, 255, 256, 65536, 1_700_000_000, 1_790_000_000, 2**32 + 7])
KEYS = st.text(min_size=1, max_size=60)
FALLBACKS = st.lists(KEYS, max_size=3)
#: Subscription keys as made (token_urlsafe) and anything else, compressible ones included.
SUBSCRIBER_KEYS = st.one_of(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        min_size=22,
        max_size=22,
    ),
    st.text(max_size=300),
    st.text(alphabet="ab", max_size=300),
)


def reference(purpose: Purpose, secret_key: str, fallbacks: list[str]) -> URLSafeTimedSerializer:
    """The serializer itsdangerous signs `purpose` with: the newest key signs."""
    return URLSafeTimedSerializer([*reversed(fallbacks), secret_key], salt=f"onward.{purpose}")


@settings(max_examples=300, deadline=None)
@given(secret_key=KEYS, fallbacks=FALLBACKS, subscriber_key=SUBSCRIBER_KEYS, moment=MOMENTS)
@example(secret_key="k", fallbacks=[], subscriber_key="a" * 200, moment=1_790_000_000)
@example(secret_key="k", fallbacks=["old"], subscriber_key="", moment=0)
def test_each_purpose_signs_as_itsdangerous_does(
    secret_key: str, fallbacks: list[str], subscriber_key: str, moment: int
) -> None:
    signer = LinkSigner(secret_key, confirm_max_age=WEEK, fallbacks=fallbacks)
    with mock.patch("time.time", return_value=moment + 0.75):
        expected = {p: reference(p, secret_key, fallbacks).dumps(subscriber_key) for p in Purpose}
        signed = {p: signer.sign(p, subscriber_key) for p in Purpose}
        each = signer.sign_each(list(Purpose), subscriber_key)
        links = Links.for_key(signer, BASE, subscriber_key)
    assert signed == expected
    assert each == list(expected.values())
    assert links == Links(
        confirm_url=f"{BASE}/confirm/{expected[Purpose.CONFIRM]}",
        pause_url=f"{BASE}/pause/{expected[Purpose.PAUSE]}",
        unsubscribe_url=f"{BASE}/unsubscribe/{expected[Purpose.UNSUBSCRIBE]}",
        manage_url=f"{BASE}/manage/{expected[Purpose.MANAGE]}",
        read_url=f"{BASE}/read/{expected[Purpose.READ]}",
    )


@settings(max_examples=300, deadline=None)
@given(
    secret_key=KEYS,
    fallbacks=FALLBACKS,
    parts=st.tuples(st.text(), st.text(), st.text(max_size=300)),
    subscriber_key=st.none() | SUBSCRIBER_KEYS,
    moment=MOMENTS,
)
@example(
    secret_key="k",
    fallbacks=[],
    parts=("step-03", "Read the guide", "https://example.org/guide/guide/guide/guide"),
    subscriber_key=None,
    moment=1_790_000_000,
)
def test_click_tokens_are_signed_as_itsdangerous_does(
    secret_key: str,
    fallbacks: list[str],
    parts: tuple[str, str, str],
    subscriber_key: str | None,
    moment: int,
) -> None:
    signer = LinkSigner(secret_key, confirm_max_age=WEEK, fallbacks=fallbacks)
    click = TrackedLink(*parts, subscriber_key=subscriber_key)
    with mock.patch("time.time", return_value=float(moment)):
        expected = reference(Purpose.CLICK, secret_key, fallbacks).dumps([*parts, subscriber_key])
        assert signer.sign_click(click) == expected
    assert signer.read_click(expected) == click


@settings(max_examples=100, deadline=None)
@given(subscriber_key=SUBSCRIBER_KEYS)
def test_links_signed_before_a_key_rotation_keep_working(subscriber_key: str) -> None:
    old = LinkSigner("old-secret", confirm_max_age=WEEK)
    rotated = LinkSigner("new-secret", confirm_max_age=WEEK, fallbacks=["old-secret"])
    stranger = LinkSigner("other-secret", confirm_max_age=WEEK)
    for purpose, token in zip(Purpose, old.sign_each(list(Purpose), subscriber_key), strict=True):
        if purpose != Purpose.CLICK:
            assert rotated.read(purpose, token) == subscriber_key
            with pytest.raises(InvalidLink):
                stranger.read(purpose, token)
    for purpose in Purpose:
        if purpose != Purpose.CLICK:
            # The newest key signs: a signer that knows only the old one refuses.
            with pytest.raises(InvalidLink):
                old.read(purpose, rotated.sign(purpose, subscriber_key))


def test_a_token_serves_only_its_own_purpose_and_confirmations_expire() -> None:
    signer = LinkSigner("secret", confirm_max_age=WEEK)
    pause = signer.sign(Purpose.PAUSE, "key")
    with pytest.raises(InvalidLink):
        signer.read(Purpose.UNSUBSCRIBE, pause)
    with mock.patch("time.time", return_value=1_700_000_000.0):
        confirm = signer.sign(Purpose.CONFIRM, "key")
        old_pause = signer.sign(Purpose.PAUSE, "key")
    with pytest.raises(ExpiredLink):
        signer.read(Purpose.CONFIRM, confirm)
    assert signer.read(Purpose.PAUSE, old_pause) == "key"
