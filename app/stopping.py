"""A stop request that a signal handler can set safely.

`threading.Event.set()` takes a lock; called from a signal handler while the main
thread is inside the same Event (waiting on it, or already setting it when a second
signal comes, as Ctrl-C to a process group followed by a supervisor's SIGTERM does),
it waits for a lock its own thread holds, for ever. `StopFlag.set()` only assigns a
bool, and `wait()` sleeps in short slices, so the handler never blocks and a stop is
seen within one slice.

A stop signal must also reach the main thread itself. The kernel gives a process's
signal to any thread that does not block it; caught by another thread, it only
marks the handler as due, and the main thread runs it when it next runs Python code.
A worker waiting on Redis for its next job (rq's BLMOVE, minutes long) would then
not hear Ctrl-C or a supervisor's SIGTERM until the wait ends. Threads we start
therefore block the stop signals (`stop_signals_kept_from_new_threads`,
`keep_stop_signals_from_this_thread`): the kernel delivers them to the main thread,
whose wait is interrupted at once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: How often a waiting loop looks at the flag.
SLICE_SECONDS = 0.1

#: The signals that ask a process to stop: Ctrl-C, and a supervisor's or launcher's stop.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextmanager
def stop_signals_kept_from_new_threads() -> Iterator[None]:
    """Threads started inside block the stop signals, so those reach the main thread.

    A new thread inherits the signal mask of the thread that starts it: the stop signals
    are blocked here for the moment the threads are started, then unblocked again (one
    that came meanwhile is delivered then, to the main thread).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def keep_stop_signals_from_this_thread() -> None:
    """Block the stop signals in the calling thread (a thread pool's initializer), so
    those reach the main thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


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
