"""A small IMAP4rev1 server for tests: one user, one mailbox, the commands a poller uses.

It speaks real IMAP over a real socket (imaplib talks to it unchanged): LOGIN, SELECT,
UID SEARCH UNSEEN, UID FETCH BODY.PEEK[], UID STORE +FLAGS (\\Seen), LOGOUT.
"""

from __future__ import annotations

import shlex
import socketserver
import threading
from dataclasses import dataclass, field


@dataclass
class Stored:
    uid: int
    raw: bytes
    seen: bool = False


@dataclass
class Mailbox:
    username: str
    password: str
    messages: list[Stored] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, raw: bytes) -> None:
        with self.lock:
            self.messages.append(Stored(len(self.messages) + 1, raw))


class _Handler(socketserver.StreamRequestHandler):
    server: ImapServer

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        box = self.server.mailbox
        self.reply("* OK IMAP4rev1 test server ready")
        logged_in = False
        while True:
            line = self.rfile.readline().decode(errors="replace").strip()
            if not line:
                return
            tag, _, rest = line.partition(" ")
            words = rest.split()
            command = " ".join(words[:2]).upper() if words[0].upper() == "UID" else words[0].upper()
            if command == "CAPABILITY":
                self.reply("* CAPABILITY IMAP4rev1")
                self.reply(f"{tag} OK CAPABILITY completed")
            elif command == "LOGIN":
                user, password = shlex.split(rest)[1:3]  # quoted strings, as imaplib sends
                logged_in = (user, password) == (box.username, box.password)
                self.reply(f"{tag} {'OK' if logged_in else 'NO'} LOGIN")
            elif command == "LOGOUT":
                self.reply("* BYE logging out")
                self.reply(f"{tag} OK LOGOUT completed")
                return
            elif not logged_in:
                self.reply(f"{tag} BAD log in first")
            elif command == "SELECT":
                self.reply(f"* {len(box.messages)} EXISTS")
                self.reply("* OK [UIDVALIDITY 1] UIDs valid")
                self.reply(f"{tag} OK [READ-WRITE] SELECT completed")
            elif command == "UID SEARCH":
                with box.lock:
                    unseen = [str(m.uid) for m in box.messages if not m.seen]
                self.reply(" ".join(["* SEARCH", *unseen]))
                self.reply(f"{tag} OK SEARCH completed")
            elif command == "UID FETCH":
                message = box.messages[int(words[2]) - 1]
                head = f"* {message.uid} FETCH (UID {message.uid} BODY[] {{{len(message.raw)}}}"
                self.wfile.write(head.encode() + b"\r\n" + message.raw + b")\r\n")
                self.reply(f"{tag} OK FETCH completed")
            elif command == "UID STORE":
                message = box.messages[int(words[2]) - 1]
                with box.lock:
                    message.seen = True
                self.reply(f"* {message.uid} FETCH (UID {message.uid} FLAGS (\\Seen))")
                self.reply(f"{tag} OK STORE completed")
            else:
                self.reply(f"{tag} BAD unknown command")


class ImapServer(socketserver.ThreadingTCPServer):
    """Serves `mailbox` on 127.0.0.1:`port` in a background thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mailbox: Mailbox, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.mailbox = mailbox
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()
