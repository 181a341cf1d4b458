"""Signed, purpose-bound links: confirm, pause, unsubscribe and manage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer


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
        # Only confirmation links expire: pause, unsubscribe, manage and read links sit
        # in old emails and must keep working (CAN-SPAM asks for 30 days at least).
        self._max_age = {Purpose.CONFIRM: int(confirm_max_age.total_seconds())}

    def sign(self, purpose: Purpose, subscriber_key: str) -> str:
        """A token that lets its holder do `purpose` to this subscription."""
        return str(self._serializers[purpose].dumps(subscriber_key))

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
        return str(
            self._serializers[Purpose.CLICK].dumps(
                [click.template, click.link, click.url, click.subscriber_key]
            )
        )

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

        def url(path: str, purpose: Purpose) -> str:
            return f"{base_url}/{path}/{signer.sign(purpose, subscriber_key)}"

        return cls(
            confirm_url=url("confirm", Purpose.CONFIRM),
            pause_url=url("pause", Purpose.PAUSE),
            unsubscribe_url=url("unsubscribe", Purpose.UNSUBSCRIBE),
            manage_url=url("manage", Purpose.MANAGE),
            read_url=url("read", Purpose.READ),
        )
