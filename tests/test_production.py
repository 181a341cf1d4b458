"""Production operation: health, logs, startup checks, and the real processes together."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.error import URLError

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from app import create_app
from app.checks import check_production
from app.config import ConfigError, Settings
from app.db import session_scope, utcnow
from app.logs import JsonFormatter, RedactingFilter
from app.models import Delivery, DeliveryStatus, EmailKind
from app.services import Services
from tests.support import FakeClock, SmtpSink, active_subscriber, free_port
from worker.schedule import tick

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_KEY = "k" * 48


# --- health -----------------------------------------------------------------------------


def test_healthz_says_the_process_is_alive(client: FlaskClient) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.get_json() == {"status": "ok"}


def test_readyz_checks_the_database_and_redis(client: FlaskClient) -> None:
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.get_json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_names_what_is_down(services: Services) -> None:
    no_redis = Services(services.settings.with_changes(redis_url="redis://127.0.0.1:1/0"))
    answer = create_app(services=no_redis).test_client().get("/readyz")
    assert answer.status_code == 503
    checks = answer.get_json()["checks"]
    assert checks["database"] == "ok"
    assert checks["redis"].startswith("unavailable")
    no_redis.close()
    no_database = Services(
        services.settings.with_changes(database_url="postgresql://nobody@127.0.0.1:1/none")
    )
    answer = create_app(services=no_database).test_client().get("/readyz")
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["database"].startswith("unavailable")
    assert answer.get_json()["checks"]["redis"] == "ok"
    no_database.close()


# --- logs ---------------------------------------------------------------------------------


def test_json_logs_are_one_object_a_line_without_tokens_or_passwords() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("onward.test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    token = "ImFiY2RlZmdoaWprbG1ub3AiLmFib2NkZQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    try:
        logger.warning("GET /unsubscribe/%s from %s", token, "192.0.2.1", extra={"batch": 7})
        logger.error("relay smtp://course:s3cret-pass@mail.example:587 refused")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "warning"
    assert first["logger"] == "onward.test.logs"
    assert first["batch"] == 7
    assert first["message"].startswith("GET /unsubscribe/ImFiY2")
    assert token not in stream.getvalue()
    assert "s3cret-pass" not in stream.getvalue()
    assert "smtp://course:***@mail.example:587" in second["message"]


def test_the_scheduler_logs_json_when_asked(services: Services) -> None:
    env = environment(services.settings) | {"LOG_FORMAT": "json"}
    done = subprocess.run(
        [sys.executable, "-m", "worker.schedule", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "queued 0"


# --- startup checks -------------------------------------------------------------------------


def test_development_runs_with_the_defaults(services: Services) -> None:
    check_production(services)  # no exception: development accepts the defaults


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"secret_key": "dev-only-secret-change-me"}, "SECRET_KEY is the development default"),
        ({"secret_key": "short"}, "SECRET_KEY .* shorter than 32"),
        ({"base_url": "http://course.example.com"}, "BASE_URL must be https"),
        ({"dev_pages": True}, "DEV_PAGES must be off"),
        ({"database_url": "postgresql://nobody@127.0.0.1:1/none"}, "cannot reach the database"),
    ],
)
def test_production_refuses_unsafe_settings(
    services: Services, changes: dict[str, object], message: str
) -> None:
    safe = {
        "environment": "production",
        "secret_key": PRODUCTION_KEY,
        "base_url": "https://x.example",
    }
    unsafe = Services(services.settings.with_changes(**(safe | changes)))
    with pytest.raises(ConfigError, match=message):
        check_production(unsafe)
    unsafe.close()
    safe_services = Services(services.settings.with_changes(**safe))
    check_production(safe_services)
    safe_services.close()


@pytest.mark.parametrize("command", [["-m", "worker"], ["-m", "worker.schedule", "--once"]])
def test_processes_stop_at_start_with_one_line_saying_what_to_fix(
    services: Services, command: list[str]
) -> None:
    env = environment(services.settings) | {"ONWARD_ENV": "production", "SECRET_KEY": "x"}
    done = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "SECRET_KEY" in line
    assert "Traceback" not in done.stderr


def test_gunicorn_refuses_to_serve_with_an_http_base_url(services: Services) -> None:
    env = environment(services.settings) | {
        "ONWARD_ENV": "production",
        "SECRET_KEY": PRODUCTION_KEY,
        "BASE_URL": "http://course.example.com",
    }
    done = subprocess.run(
        gunicorn_command(free_port()), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "onward web: BASE_URL must be https" in done.stderr


# --- the real processes ---------------------------------------------------------------------


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a production process gets, pointing at the test's servers."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ONWARD_", "DKIM_", "DEV_PAGES", "OUTBOX_DIR", "LOG_FORMAT"))
    }
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url or "",
        SMTP_URL=settings.smtp_url or "",
        QUEUE_NAME=settings.queue_name,
        BASE_URL=settings.base_url,
        SECRET_KEY=settings.secret_key,
        MAIL_FROM=settings.mail_from,
        **extra,
    )
    return env


def gunicorn_command(port: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "--preload", "app.wsgi:application",
        "--bind", f"127.0.0.1:{port}", "--workers", "2", "--graceful-timeout", "20",
    ]  # fmt: skip


@contextmanager
def running(
    commands: dict[str, list[str]], env: dict[str, str]
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Start the processes; on the way out, SIGTERM them and check they stopped cleanly."""
    processes = {
        name: subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        for name, command in commands.items()
    }
    try:
        yield processes
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            assert process.wait(timeout=40) == 0, f"{name} did not stop cleanly"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (URLError, ConnectionError):
        return False


def test_gunicorn_worker_and_scheduler_deliver_a_confirmation(
    services: Services, smtp: SmtpSink
) -> None:
    port = free_port()
    env = environment(services.settings, TICK_INTERVAL="1s", LOG_FORMAT="json")
    commands = {
        "web": gunicorn_command(port),
        "worker": [sys.executable, "-m", "worker"],
        "scheduler": [sys.executable, "-m", "worker.schedule"],
    }
    with running(commands, env):
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/readyz"), 30, "gunicorn to be ready")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/subscribe",
            data=json.dumps({"email": "ada@example.com"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        wait_for(lambda: smtp.to("ada@example.com"), 30, "the confirmation email")
    [confirmation] = smtp.to("ada@example.com")
    assert confirmation.subject == "Confirm your free 10-step course"


def test_a_worker_told_to_stop_finishes_its_batch(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    # A slow relay makes the batch take a few seconds; SIGTERM arrives in the middle.
    smtp.delay = 0.1
    # The worker process runs on the real clock: claim on it too, or the claims lapse.
    clock.now = utcnow()
    for n in range(30):
        active_subscriber(services, f"p{n}@example.com", services.clock())
    assert tick(services) == 30
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker"], cwd=ROOT, env=environment(services.settings)
    )
    try:
        wait_for(lambda: len(smtp.messages) >= 3, 30, "the batch to start")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert len(smtp.messages) == 30
    with session_scope(services.sessions) as session:
        statuses = Counter(session.scalars(select(Delivery.status)))
    assert statuses == {DeliveryStatus.SENT: 30}


@pytest.mark.skipif(
    not os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql"),
    reason="runs against PostgreSQL (TEST_DATABASE_URL), as CI does",
)
def test_three_workers_and_two_schedulers_send_every_step_exactly_once(
    services: Services, smtp: SmtpSink
) -> None:
    subscribers = 200
    now = services.clock()
    for n in range(subscribers):
        active_subscriber(services, f"reader{n}@example.com", now)
    env = environment(services.settings, STEP_INTERVAL="3s", TICK_INTERVAL="0.5s", BATCH_SIZE="25")
    commands = {f"worker{n}": [sys.executable, "-m", "worker"] for n in range(3)}
    commands |= {f"scheduler{n}": [sys.executable, "-m", "worker.schedule"] for n in range(2)}

    def steps_sent() -> dict[int, list[int]]:
        with session_scope(services.sessions) as session:
            rows = session.execute(
                select(Delivery.subscriber_id, Delivery.number).where(
                    Delivery.kind == EmailKind.STEP, Delivery.status == DeliveryStatus.SENT
                )
            ).all()
        sent: dict[int, list[int]] = {}
        for subscriber_id, number in rows:
            sent.setdefault(subscriber_id, []).append(number)
        return sent

    with running(commands, env):
        wait_for(
            lambda: (
                len(steps_sent()) == subscribers
                and all(len(steps) >= 3 for steps in steps_sent().values())
            ),
            120,
            "three steps for every subscriber",
        )
    sent = steps_sent()
    for steps in sent.values():
        assert sorted(steps) == list(range(1, len(steps) + 1)), "a step is missing"
    received = Counter((r.envelope_to[0], r.subject) for r in smtp.messages)
    assert max(received.values()) == 1, "an email arrived twice"
    assert sum(len(steps) for steps in sent.values()) == len(smtp.messages)
