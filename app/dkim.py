"""DKIM signing of outgoing messages, and the DNS record that goes with the key.

Signing is RFC 6376 rsa-sha256 with relaxed/relaxed canonicalisation, done here
with `cryptography` on a key parsed once: a general-purpose library that parses
the PEM key and parses the message again for every email costs several times more.
Tests verify every signature with dkimpy.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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


_WSP_RUN = re.compile(rb"[ \t]+")
_FOLD = re.compile(rb"\r\n(?=[ \t])")
_SPACE_RUN = re.compile(rb"  +")


def relaxed_body(body: bytes) -> bytes:
    """The body in DKIM's relaxed canonical form (RFC 6376, 3.4.4)."""
    # Plain bytes methods where they do: this runs over every signed email.
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    if b"  " in body:
        body = _SPACE_RUN.sub(b" ", body)
    # Each run is one space now, so one replace drops the whitespace ending a line.
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    if body.endswith(b" "):
        body = body[:-1]
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One header field in DKIM's relaxed canonical form (RFC 6376, 3.4.2), without CRLF."""
    value = _WSP_RUN.sub(b" ", _FOLD.sub(b"", value)).strip(b" \t\r\n")
    return name.strip().lower() + b":" + value


def split_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of a message head (CRLF line ends), as (name, raw value) in order."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        elif line:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields


@dataclass(frozen=True)
class DkimSigner:
    """Signs serialised messages for one domain and selector with one private key."""

    domain: str
    selector: str
    private_key: bytes = field(repr=False)
    #: The key, parsed once when the signer is made.
    key: rsa.RSAPrivateKey = field(repr=False, compare=False)

    @classmethod
    def from_file(cls, path: Path, *, domain: str, selector: str) -> DkimSigner:
        """Load a PEM private key (RSA); a clear ConfigError if it is missing or unreadable."""
        try:
            pem = path.read_bytes()
            key = serialization.load_pem_private_key(pem, password=None)
        except OSError as error:
            raise ConfigError(f"DKIM_KEY_FILE {path}: {error.strerror}") from None
        except ValueError as error:
            raise ConfigError(f"DKIM_KEY_FILE {path} is not a PEM private key: {error}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"DKIM_KEY_FILE {path} is not an RSA private key")
        return cls(domain=domain, selector=selector, private_key=pem, key=key)

    def sign(self, message: bytes) -> bytes:
        """The message (CRLF line ends) with a DKIM-Signature header in front."""
        tags, signed = self.prepare(message)
        return self.assemble(tags, self.signature(signed), message)

    def prepare(self, message: bytes) -> tuple[bytes, bytes]:
        """The first part of `sign`: the signature header's tags (up to "b=") and the
        canonical bytes to sign."""
        head, separator, body = message.partition(b"\r\n\r\n")
        if not separator:
            head, body = message, b""
        fields = split_headers(head)
        # The last instance of each signed header is the one a verifier picks first.
        chosen: list[tuple[bytes, bytes]] = []
        for wanted in SIGNED_HEADERS:
            for name, value in reversed(fields):
                if name.strip().lower() == wanted:
                    chosen.append((wanted, value))
                    break
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        tags = (
            b" v=1; a=rsa-sha256; c=relaxed/relaxed; d="
            + self.domain.encode()
            + b"; s="
            + self.selector.encode()
            + b";\r\n h="
            + b":".join(name for name, _ in chosen)
            + b";\r\n bh="
            + body_hash
            + b";\r\n b="
        )
        signed = b"".join(relaxed_header(name, value) + b"\r\n" for name, value in chosen)
        signed += relaxed_header(b"dkim-signature", tags)
        return tags, signed

    def signature(self, signed: bytes) -> bytes:
        """The RSA signature of `prepare`'s canonical bytes. Nearly all of signing's time,
        spent in OpenSSL without Python's lock: other threads run meanwhile."""
        return self.key.sign(signed, padding.PKCS1v15(), hashes.SHA256())

    @staticmethod
    def assemble(tags: bytes, signature: bytes, message: bytes) -> bytes:
        """The last part of `sign`: the message with its DKIM-Signature header in front."""
        encoded = base64.b64encode(signature)
        folded = b"\r\n ".join(encoded[i : i + 72] for i in range(0, len(encoded), 72))
        return b"DKIM-Signature:" + tags + folded + b"\r\n" + message

    def dns_record(self) -> tuple[str, str]:
        """The TXT record to publish: its name and its value."""
        public = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        value = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
        return f"{self.selector}._domainkey.{self.domain}", value
