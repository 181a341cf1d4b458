"""The fault soak's SMTP server: a real aiosmtpd server in its own process.

`python -m bench.soak_smtp --port P --control FILE --record FILE` accepts mail and
appends one JSON line per accepted message (time, Message-ID, recipient) to the
record. The control file holds the fault mode, read at every transaction:

- `accept`: 250 for every message;
- `throttle`: `421 4.7.0` at MAIL FROM, as a relay over its rate says;
- `refuse-sender`: after DATA, `554 5.7.1 Message rejected: Email address is not
  verified` (what Amazon SES answers for an unverified From).

SIGTERM stops it gracefully: it stops listening, lets answers in flight reach
their clients, then closes every connection, so a stop never leaves a message
recorded here that its sender believes refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from email.parser import BytesHeaderParser
from pathlib import Path
from types import FrameType
from typing import IO, Any

from aiosmtpd.controller import Controller

ACCEPT = "accept"
THROTTLE = "throttle"
REFUSE_SENDER = "refuse-sender"
MODES = (ACCEPT, THROTTLE, REFUSE_SENDER)

THROTTLE_ANSWER = "421 4.7.0 Too many messages, slow down and try again later"
REFUSE_SENDER_ANSWER = (
    "554 5.7.1 Message rejected: Email address is not verified. The following "
    "identities failed the check in region EU-WEST-1: course@onward.localhost"
)
#: How long a stopping server keeps its connections open for answers in flight.
GRACE_SECONDS = 1.0


class FaultySink:
    """aiosmtpd handler: records accepted messages, answers as the control file says."""

    def __init__(self, control: Path, record: IO[str]) -> None:
        self._control = control
        self._record = record
        self._lock = threading.Lock()

    def mode(self) -> str:
        """The fault mode now (`accept` if the control file is missing or unknown)."""
        try:
            mode = self._control.read_text().strip()
        except OSError:
            return ACCEPT
        return mode if mode in MODES else ACCEPT

    def _write(self, event: dict[str, object]) -> None:
        with self._lock:
            self._record.write(json.dumps(event) + "\n")
            self._record.flush()

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mode() == THROTTLE:
            self._write({"event": "refused", "at": time.time(), "answer": THROTTLE_ANSWER})
            return THROTTLE_ANSWER
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.mode() == REFUSE_SENDER:
            self._write({"event": "refused", "at": time.time(), "answer": REFUSE_SENDER_ANSWER})
            return REFUSE_SENDER_ANSWER
        headers = BytesHeaderParser().parsebytes(envelope.content)
        self._write(
            {
                "event": "accepted",
                "at": time.time(),
                "message_id": str(headers.get("Message-ID", "")).strip(),
                "recipient": ",".join(envelope.rcpt_tos),
                # The client's port names the worker that sent it (the soak maps
                # ports to the workers it kills).
                "port": session.peer[1] if session.peer else 0,
            }
        )
        return "250 Message accepted"


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="The fault soak's SMTP server.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", type=Path, required=True, help="file holding the mode")
    parser.add_argument("--record", type=Path, required=True, help="JSON lines appended here")
    args = parser.parse_args(argv)
    # aiosmtpd logs every SMTP command at INFO.
    logging.basicConfig(level=logging.WARNING)
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with args.record.open("a", encoding="utf-8") as record:
        controller = Controller(
            FaultySink(args.control, record), hostname="127.0.0.1", port=args.port
        )
        controller.start()
        print(f"soak SMTP server listening on 127.0.0.1:{args.port}", flush=True)
        stop.wait()
        server = controller.server
        if server is not None:
            controller.loop.call_soon_threadsafe(server.close)
        time.sleep(GRACE_SECONDS)
        controller.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
