"""Signed, purpose-bound links: confirm, pause, unsubscribe and manage."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes


class Purpose(StrEnum):
    """What a link may do; each purpose signs with its own salt."""

    CONFIRM = "confirm"
    PAUSE = "pause"
    UNSUBSCRIBE = "unsubscribe"
    MANAGE = "manage"
    READ = "read"
    CLICK = "click"


class InvalidLink(ValueError):
    """The link was forged, altered, cut short or made for another purpose."""


class ExpiredLink(InvalidLink):
    """The link was genuine but is too old for its purpose."""


class _KeyedSigner:
    """Signs payloads byte for byte as `serializer.dumps` does (itsdangerous's
    TimestampSigner: `payload.timestamp.signature`), with the key derived once."""

    def __init__(self, serializer: URLSafeTimedSerializer) -> None:
        # itsdangerous builds a signer and derives its key again for every token;
        # its own signer, made once, gives the key, digest and separator instead.
        signer = serializer.make_signer()
        self._sep = signer.sep
        self._mac = hmac.new(signer.derive_key(), digestmod=signer.digest_method)

    def sign(self, payload: bytes, timestamp: bytes) -> str:
        """The token of `payload` (as `dump_payload` makes it) signed at `timestamp`."""
        value = payload + self._sep + timestamp
        mac = self._mac.copy()
        mac.update(value)
        return (value + self._sep + base64_encode(mac.digest())).decode("ascii")


def _timestamp() -> bytes:
    """Now, as TimestampSigner writes it into a token."""
    return base64_encode(int_to_bytes(int(time.time())))


class LinkSigner:
    """Signs a subscription key for one purpose and reads it back."""

    def __init__(
        self, secret_key: str, *, confirm_max_age: timedelta, fallbacks: Sequence[str] = ()
    ) -> None:
        # itsdangerous signs with the last key of the list and verifies with any of
        # them: links signed with an older key (SECRET_KEY_FALLBACKS) keep working.
        keys = [*reversed(fallbacks), secret_key]
        self._serializers = {
            purpose: URLSafeTimedSerializer(keys, salt=f"onward.{purpose}") for purpose in Purpose
        }
        self._signers = {
            purpose: _KeyedSigner(serializer) for purpose, serializer in self._serializers.items()
        }
        # Only confirmation links expire: pause, unsubscribe, manage and read links sit
        # in old emails and must keep working (CAN-SPAM asks for 30 days at least).
        self._max_age = {Purpose.CONFIRM: int(confirm_max_age.total_seconds())}

    def _payload(self, data: Any) -> bytes:
        # The payload does not depend on the salt: any purpose's serializer makes it.
        return self._serializers[Purpose.CLICK].dump_payload(data)

    def sign(self, purpose: Purpose, subscriber_key: str) -> str:
        """A token that lets its holder do `purpose` to this subscription."""
        return self._signers[purpose].sign(self._payload(subscriber_key), _timestamp())

    def sign_each(self, purposes: Iterable[Purpose], subscriber_key: str) -> list[str]:
        """A token for each of `purposes` on this subscription, as `sign` makes them."""
        # One payload (its JSON, zlib attempt and base64) and one timestamp serve them all.
        payload = self._payload(subscriber_key)
        timestamp = _timestamp()
        return [self._signers[purpose].sign(payload, timestamp) for purpose in purposes]

    def read(self, purpose: Purpose, token: str) -> str:
        """The subscription key inside a token, or InvalidLink / ExpiredLink."""
        try:
            key = self._serializers[purpose].loads(token, max_age=self._max_age.get(purpose))
        except SignatureExpired:
            raise ExpiredLink(purpose) from None
        except BadSignature:
            raise InvalidLink(purpose) from None
        if not isinstance(key, str):
            raise InvalidLink(purpose)
        return key

    def sign_click(self, click: TrackedLink) -> str:
        """A token for a tracked link: which email, which link, where to, and maybe who."""
        payload = self._payload([click.template, click.link, click.url, click.subscriber_key])
        return self._signers[Purpose.CLICK].sign(payload, _timestamp())

    def read_click(self, token: str) -> TrackedLink:
        """The tracked link inside a token, or InvalidLink (tracked links never expire)."""
        try:
            data = self._serializers[Purpose.CLICK].loads(token)
        except BadSignature:
            raise InvalidLink(Purpose.CLICK) from None
        if (
            not isinstance(data, list)
            or len(data) != 4
            or not all(isinstance(part, str) for part in data[:3])
            or not isinstance(data[3], str | None)
        ):
            raise InvalidLink(Purpose.CLICK)
        return TrackedLink(template=data[0], link=data[1], url=data[2], subscriber_key=data[3])


@dataclass(frozen=True)
class TrackedLink:
    """A link in an email, as its click-tracking token holds it."""

    #: The email it is in (confirmation, step-01, ...).
    template: str
    #: The link's name for counting: its text, the same for every subscriber.
    link: str
    #: Where it leads.
    url: str
    #: Whose email it was in: only with CLICK_TRACKING=per-person, else None.
    subscriber_key: str | None


@dataclass(frozen=True)
class Links:
    """The absolute URLs of one subscription's signed links."""

    confirm_url: str
    pause_url: str
    unsubscribe_url: str
    manage_url: str
    #: The subscription's "read in your browser" pages: `<read_url>/<step number>`.
    read_url: str

    def step_url(self, number: int) -> str:
        """The browser page of step `number`."""
        return f"{self.read_url}/{number}"

    @classmethod
    def for_key(cls, signer: LinkSigner, base_url: str, subscriber_key: str) -> Links:
        """Every link of the subscription with this key."""

        confirm, pause, unsubscribe, manage, read = signer.sign_each(
            (Purpose.CONFIRM, Purpose.PAUSE, Purpose.UNSUBSCRIBE, Purpose.MANAGE, Purpose.READ),
            subscriber_key,
        )
        return cls(
            confirm_url=f"{base_url}/confirm/{confirm}",
            pause_url=f"{base_url}/pause/{pause}",
            unsubscribe_url=f"{base_url}/unsubscribe/{unsubscribe}",
            manage_url=f"{base_url}/manage/{manage}",
            read_url=f"{base_url}/read/{read}",
        )
