"""`make run`'s launcher, for real: embedded Redis, mail catcher, web, worker, scheduler."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from email import policy
from email.parser import BytesParser
from pathlib import Path
from urllib.error import URLError

from app.dev.embedded_redis import _alive
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_for(check: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()  # type: ignore[operator]
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def reachable(url: str) -> bool:
    try:
        http(url)
    except (URLError, ConnectionError):
        return False
    return True


@contextmanager
def launched(instance: Path, port: int) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "SMTP_URL", "DATABASE_URL", "OUTBOX_DIR", "BASE_URL"}
    }
    env.update(
        PORT=str(port),
        INSTANCE_DIR=str(instance),
        MAIL_CATCHER_PORT=str(free_port()),
        STEP_INTERVAL="3s",
        TICK_INTERVAL="1s",
    )
    log = instance.parent / f"launcher-{port}-{time.monotonic_ns()}.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.dev.launcher"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        banner = str(
            wait_for(lambda: "Processes:" in log.read_text() and log.read_text(), 60, "the banner")
        )
        pids = {name: int(pid) for name, pid in re.findall(r"(web|worker|scheduler)=(\d+)", banner)}
        pids["redis"] = int(re.findall(r"embedded, pid (\d+)", banner)[0])
        yield process, pids
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def outbox_messages(instance: Path) -> list[Path]:
    return sorted((instance / "outbox").glob("*.eml"))


def test_make_run_starts_everything_and_stops_everything(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with launched(instance, port) as (process, pids):
        wait_for(lambda: reachable(base + "/"), 30, "the web app")
        answer = http(
            base + "/api/subscribe",
            json.dumps({"email": "ada@example.com", "first_name": "Ada"}).encode(),
            {"Content-Type": "application/json"},
        )
        assert "accepted" in answer
        [confirmation] = wait_for(lambda: outbox_messages(instance), 30, "the confirmation")  # type: ignore[misc]
        message = BytesParser(policy=policy.default).parsebytes(confirmation.read_bytes())
        assert message["Subject"] == "Confirm your free 10-step course"
        assert "Confirm your free 10-step course" in http(base + "/dev/outbox/")

        text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        confirm_url = re.search(r"http://\S+/confirm/[^\s()]+", text).group(0)  # type: ignore[union-attr]
        http(confirm_url, data=b"")
        # The access log names the path, never the whole token; the server names no version.
        token = confirm_url.rsplit("/", 1)[1]
        [log] = instance.parent.glob(f"launcher-{port}-*.log")
        access = log.read_text()
        assert "/confirm/" + token[:6] in access and token not in access
        with urllib.request.urlopen(base + "/healthz", timeout=5) as health:
            assert health.headers["Server"] == "Onward"
        wait_for(lambda: len(outbox_messages(instance)) >= 3, 30, "steps 1 and 2 from the worker")
        subjects = [
            BytesParser(policy=policy.default).parsebytes(p.read_bytes())["Subject"]
            for p in outbox_messages(instance)
        ]
        assert subjects[1].startswith("Step 1 of 10")
        assert subjects[2].startswith("Step 2 of 10")

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        for name, pid in pids.items():
            assert not _alive(pid), f"{name} still running after SIGTERM"
        assert not reachable(base + "/")

    # A second run afterwards works, and Ctrl-C (SIGINT to the group) stops it.
    with launched(instance, port) as (process, pids):
        wait_for(lambda: reachable(base + "/"), 30, "the web app, second run")
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 0
        for name, pid in pids.items():
            assert not _alive(pid), f"{name} still running after Ctrl-C"
