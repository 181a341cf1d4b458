"""Reading bounce and feedback-loop mail from an mbox file, a Maildir or an IMAP mailbox,
and applying what it reports (each report once: `drip.apply_report` dedupes)."""

from __future__ import annotations

import imaplib
import logging
import mailbox
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from app import drip
from app.db import session_scope
from app.dsn import reports_in
from app.services import Services

log = logging.getLogger(__name__)


class BounceSourceError(Exception):
    """The mailbox cannot be read; the message says which and why."""


@dataclass(frozen=True)
class Letter:
    """One piece of mail: where it was found, and its bytes."""

    label: str
    raw: bytes


def from_mbox(path: Path) -> Iterator[Letter]:
    """Every message in an mbox file."""
    if not path.is_file():
        raise BounceSourceError(f"{path} is not a file")
    box = mailbox.mbox(path, create=False)
    try:
        for key in box.iterkeys():
            yield Letter(f"{path.name}#{key}", box.get_bytes(key))
    finally:
        box.close()


def from_maildir(path: Path) -> Iterator[Letter]:
    """Every message in a Maildir (new/ and cur/)."""
    if not (path / "cur").is_dir() and not (path / "new").is_dir():
        raise BounceSourceError(f"{path} is not a Maildir (no cur/ or new/ inside)")
    box = mailbox.Maildir(path, create=False)
    for key in sorted(box.keys()):
        yield Letter(key, box.get_bytes(key))


@dataclass(frozen=True)
class ImapMailbox:
    """An IMAP mailbox from `imap[s]://user:password@host:port/MAILBOX` (default INBOX)."""

    host: str
    port: int
    username: str
    password: str
    folder: str
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> ImapMailbox:
        """Read the URL; BounceSourceError if it is not an IMAP URL with a user."""
        parts = urlsplit(url)
        if parts.scheme not in {"imap", "imaps"} or not parts.hostname or not parts.username:
            raise BounceSourceError("the IMAP URL must look like imaps://user:password@host/INBOX")
        tls = parts.scheme == "imaps"
        return cls(
            host=parts.hostname,
            port=parts.port or (993 if tls else 143),
            username=unquote(parts.username),
            password=unquote(parts.password or ""),
            folder=unquote(parts.path.lstrip("/")) or "INBOX",
            tls=tls,
        )

    def unseen(self) -> Iterator[Letter]:
        """Each unseen message, marked seen once the caller has taken the next one (or ended)."""
        try:
            client = (
                imaplib.IMAP4_SSL(self.host, self.port, timeout=30)
                if self.tls
                else imaplib.IMAP4(self.host, self.port, timeout=30)
            )
        except OSError as error:
            raise BounceSourceError(
                f"cannot reach IMAP server {self.host}:{self.port}: {error}"
            ) from None
        try:
            client.login(self.username, self.password)
            status, _ = client.select(self.folder)
            if status != "OK":
                raise BounceSourceError(f"IMAP mailbox {self.folder!r} cannot be opened")
            _, found = client.uid("SEARCH", "UNSEEN")
            for uid in (found[0] or b"").decode().split():
                _, data = client.uid("FETCH", uid, "(BODY.PEEK[])")
                raw = next((item[1] for item in data if isinstance(item, tuple)), None)
                if raw is None:
                    continue
                yield Letter(f"{self.folder}/{uid}", raw)
                # Seen only after it was applied: a crash in between reads it again
                # next time, and the report is still applied only once.
                client.uid("STORE", uid, "+FLAGS", r"(\Seen)")
        except imaplib.IMAP4.error as error:
            raise BounceSourceError(f"IMAP error: {error}") from None
        finally:
            try:
                client.logout()
            except (OSError, imaplib.IMAP4.error):
                client.shutdown()


def apply_letters(services: Services, letters: Iterable[Letter]) -> list[str]:
    """Apply every DSN and ARF report in `letters`; return one line per thing done."""
    hygiene = services.settings.hygiene
    done = []
    for letter in letters:
        now = services.clock()
        reports = reports_in(
            letter.raw, return_path=hygiene.return_path, domain=services.sender.domain, now=now
        )
        if not reports:
            done.append(f"{letter.label}: not a bounce or complaint report, left alone")
            continue
        with session_scope(services.sessions) as session:
            for report in reports:
                line = drip.apply_report(
                    session, report, keys=services.mailbox_keys, policy=services.policy, now=now
                )
                done.append(f"{letter.label}: {line}")
    return done
