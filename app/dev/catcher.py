"""A local SMTP server that keeps every message in a folder, for the dev outbox page."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class OutboxHandler:
    """aiosmtpd handler: write each accepted message to `folder` as an .eml file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        partial = self.folder / f".{name}.tmp"
        partial.write_bytes(envelope.original_content or envelope.content)
        # The rename makes a message appear whole or not at all to the outbox page.
        partial.rename(self.folder / f"{name}.eml")
        return "250 Message accepted for delivery"


def start_catcher(folder: Path, *, host: str = "127.0.0.1", port: int = 1025) -> Controller:
    """Start the catcher in a background thread; call `.stop()` on the result to end it."""
    controller = Controller(OutboxHandler(folder), hostname=host, port=port)
    controller.start()
    return controller
