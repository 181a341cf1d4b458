"""DKIM signing of outgoing messages, and the DNS record that goes with the key."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization

from app.config import ConfigError

#: Headers covered by the signature; the unsubscribe headers must be among them
#: so that nobody on the way can swap the link a mailbox provider will call.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"mime-version",
    b"content-type",
)


@dataclass(frozen=True)
class DkimSigner:
    """Signs serialised messages for one domain and selector with one private key."""

    domain: str
    selector: str
    private_key: bytes = field(repr=False)

    @classmethod
    def from_file(cls, path: Path, *, domain: str, selector: str) -> DkimSigner:
        """Load a PEM private key (RSA); a clear ConfigError if it is missing or unreadable."""
        try:
            pem = path.read_bytes()
            serialization.load_pem_private_key(pem, password=None)
        except OSError as error:
            raise ConfigError(f"DKIM_KEY_FILE {path}: {error.strerror}") from None
        except ValueError as error:
            raise ConfigError(f"DKIM_KEY_FILE {path} is not a PEM private key: {error}") from None
        return cls(domain=domain, selector=selector, private_key=pem)

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature header in front."""
        signature = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.private_key,
            include_headers=list(SIGNED_HEADERS),
        )
        return bytes(signature) + message

    def dns_record(self) -> tuple[str, str]:
        """The TXT record to publish: its name and its value."""
        key = serialization.load_pem_private_key(self.private_key, password=None)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        value = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
        return f"{self.selector}._domainkey.{self.domain}", value
