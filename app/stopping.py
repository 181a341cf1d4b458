"""A stop request that a signal handler can set safely.

`threading.Event.set()` takes a lock; called from a signal handler while the main
thread is inside the same Event (waiting on it, or already setting it when a second
signal comes, as Ctrl-C to a process group followed by a supervisor's SIGTERM does),
it waits for a lock its own thread holds, for ever. `StopFlag.set()` only assigns a
bool, and `wait()` sleeps in short slices, so the handler never blocks and a stop is
seen within one slice.
"""

from __future__ import annotations

import time
from types import FrameType

#: How often a waiting loop looks at the flag.
SLICE_SECONDS = 0.1


class StopFlag:
    """Set once to ask a loop to stop; safe to set from a signal handler."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        """Ask for the stop (no lock: fine in a signal handler and from any thread)."""
        self._set = True

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, less once a stop is asked for; return is_set()."""
        deadline = time.monotonic() + timeout
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(SLICE_SECONDS, left))
        return self._set

    def handler(self, _signum: int, _frame: FrameType | None) -> None:
        """A signal handler that asks for the stop."""
        self.set()
