"""Processes stop when asked, however the signals come: one, two at once, or early.

Ctrl-C in `make run` sends SIGINT to every process of the group, and the launcher then
sends SIGTERM too; a supervisor may send SIGTERM while a process is still starting.
Every thread we start leaves those signals to the main thread: one that a side thread
caught would wait for the main thread's wait on Redis to end before it was handled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app import figures
from app.services import Services
from app.stopping import StopFlag

ROOT = Path(__file__).resolve().parent.parent


def test_a_signal_stops_a_waiting_stop_flag_at_once() -> None:
    flag = StopFlag()
    previous = signal.signal(signal.SIGALRM, flag.handler)
    try:
        # The handler runs again and again while the main thread waits on the flag:
        # with threading.Event this can wait for ever on the Event's own lock.
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.001)
        assert flag.wait(30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert flag.is_set()


def test_a_stop_flag_waits_its_time_when_nobody_asks() -> None:
    flag = StopFlag()
    assert flag.wait(0.2) is False
    assert not flag.is_set()


def start(module: str, tmp_path: Path, redis_url: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'onward.db'}",
        "REDIS_URL": redis_url,
        "QUEUE_NAME": f"stop-{uuid.uuid4().hex[:8]}",
        "SECRET_KEY": "stopping-test-key",
        "BASE_URL": "http://127.0.0.1:5000",
        "TICK_INTERVAL": "5s",
    }
    return subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def init_db(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "init-db"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'onward.db'}"},
        check=True,
        capture_output=True,
    )


@contextmanager
def running(module: str, tmp_path: Path, redis_url: str) -> Iterator[subprocess.Popen[str]]:
    """`python -m module`, killed on the way out if it has not stopped by then."""
    process = start(module, tmp_path, redis_url)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def wait_for_line(process: subprocess.Popen[str], text: str) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if text in line:
            return
    raise AssertionError(f"the process ended before saying {text!r}")


@pytest.mark.parametrize(
    ("module", "ready"),
    [("worker", "Listening on"), ("worker.schedule", "scheduler ticking")],
)
@pytest.mark.parametrize("when", ["running", "starting"])
def test_sigint_then_sigterm_stops_the_process(
    module: str, ready: str, when: str, tmp_path: Path, redis_url: str
) -> None:
    init_db(tmp_path)
    for _ in range(3):
        with running(module, tmp_path, redis_url) as process:
            if when == "running":
                wait_for_line(process, ready)
            else:
                time.sleep(0.3)  # still importing, checking settings or registering
            process.send_signal(signal.SIGINT)
            process.send_signal(signal.SIGTERM)
            # Stopped within 20 s, not hung: TimeoutExpired fails the test. (The exit
            # status depends on where the signals land: a warm stop, rq's cold stop on
            # the second signal, or, while Python still imports, KeyboardInterrupt.)
            process.wait(timeout=20)


def blocked_signals(thread_id: int) -> set[int]:
    """The signals a thread blocks, from its SigBlk mask (/proc/<id> serves threads too)."""
    status = Path(f"/proc/{thread_id}/status").read_text()
    mask = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
    bits = int(mask.split()[1], 16)
    return {number for number in range(1, 65) if bits & (1 << (number - 1))}


STOPS = {signal.SIGINT, signal.SIGTERM}


def test_a_waiting_worker_leaves_the_stop_signals_to_its_main_thread(
    tmp_path: Path, redis_url: str
) -> None:
    init_db(tmp_path)
    with running("worker", tmp_path, redis_url) as process:
        wait_for_line(process, "Listening on")
        threads = [int(task) for task in os.listdir(f"/proc/{process.pid}/task")]
        side_threads = [thread for thread in threads if thread != process.pid]
        # rq's control channel has a thread of its own while the worker waits for a job.
        assert side_threads
        assert not STOPS & blocked_signals(process.pid)
        for thread in side_threads:
            assert blocked_signals(thread) >= STOPS, thread
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


def test_the_threads_we_start_leave_the_stop_signals_to_the_main_thread(
    services: Services,
) -> None:
    signing = services.signing_threads.submit(threading.get_native_id).result()
    stop = StopFlag()
    counting = figures.refresh_in_background(services, stop)
    try:
        assert counting.native_id is not None
        for thread in (signing, counting.native_id):
            assert blocked_signals(thread) >= STOPS
        # The main thread still takes them, and starting the threads left it as it was.
        assert not STOPS & blocked_signals(threading.get_native_id())
    finally:
        stop.set()
        counting.join(timeout=30)
