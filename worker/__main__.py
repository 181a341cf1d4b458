"""`python -m worker`: an RQ worker for the sending queue, with Onward's checks and logging.

SIGTERM (or Ctrl-C) asks for a warm shutdown: the batch in hand is finished, then
the worker exits. A worker killed outright loses nothing either: its claims lapse
and the next tick queues the work again.
"""

from __future__ import annotations

import argparse
import signal
import sys

from rq import SimpleWorker

from app.checks import start_process
from app.config import ConfigError
from app.stopping import StopFlag, stop_signals_kept_from_new_threads
from worker.jobs import use_services

#: Set by SIGINT or SIGTERM before rq has installed its own handlers.
_stop_asked_early = StopFlag()


class OnwardWorker(SimpleWorker):
    """rq's SimpleWorker, keeping a stop asked for while it was still starting, and
    hearing every stop at once.

    rq installs its SIGINT and SIGTERM handlers only once it has registered itself and
    cleaned its registries; a stop asked for before then (Ctrl-C right after `make run`
    started) was lost, and the worker listened on until killed. Our handlers note it
    until then, and the worker's loop then stops at its first turn.
    """

    def subscribe(self) -> None:
        """rq's subscription to its control channel, whose thread leaves SIGINT and
        SIGTERM to the main thread (caught there, they interrupt the wait for a job)."""
        with stop_signals_kept_from_new_threads():
            super().subscribe()  # type: ignore[no-untyped-call]

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()  # type: ignore[no-untyped-call]
        if _stop_asked_early.is_set():
            self._stop_requested = True


def main(argv: list[str] | None = None) -> int:
    """Work the queue until told to stop (or until it is empty, with --burst)."""
    parser = argparse.ArgumentParser(description="Send the course emails queued in Redis.")
    parser.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    parser.add_argument("--name", help="worker name (default: host and pid)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, _stop_asked_early.handler)
    signal.signal(signal.SIGTERM, _stop_asked_early.handler)
    try:
        services = start_process("worker")
    except ConfigError as error:
        print(f"onward worker: {error}", file=sys.stderr, flush=True)
        return 2
    use_services(services)
    try:
        worker = OnwardWorker([services.queue], connection=services.redis, name=args.name)
        worker.work(burst=args.burst, with_scheduler=False)
    finally:
        services.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
