"""One person's mailbox, whatever the spelling: normalised form and its keyed hash."""

from __future__ import annotations

import hmac

#: Providers that deliver `a.da@` and `ada@` to the same mailbox (and their aliases).
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def canonical_mailbox(address: str) -> str:
    """The mailbox an address reaches: lowercased, `+tag` dropped, provider aliases merged.

    `Ada.Lovelace+news@GoogleMail.com` and `adalovelace@gmail.com` are one mailbox.
    """
    local, _, domain = address.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    domain = domain.rstrip(".")
    if domain in DOTLESS_DOMAINS:
        domain = DOTLESS_DOMAINS[domain]
        local = local.replace(".", "")
    return f"{local}@{domain}"


class MailboxKeys:
    """Keyed hashes of mailboxes: what the suppression list and the caps store.

    The key is derived from SECRET_KEY for this one purpose, so the hashes of an
    erased address cannot be reversed by guessing addresses without the key.
    """

    def __init__(self, secret_key: str) -> None:
        self._key = hmac.new(secret_key.encode(), b"onward mailbox hash v1", "sha256").digest()

    def hash(self, address: str) -> str:
        """The hex HMAC-SHA256 of the address's canonical mailbox."""
        # hmac.digest: one call into OpenSSL, a third of hmac.new's cost (an import hashes
        # every row).
        return hmac.digest(self._key, canonical_mailbox(address).encode(), "sha256").hex()
