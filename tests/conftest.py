"""Fixtures with real servers: a database, Redis, and an SMTP server in this process.

- Database: a SQLite file per test, or TEST_DATABASE_URL (PostgreSQL) emptied per test;
  either is brought to the latest migration.
- Redis: REDIS_URL when set, otherwise one embedded redis-server for the session.
- SMTP: an aiosmtpd server per test that keeps what it receives and can refuse on demand.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

import worker.jobs
from app import create_app
from app.config import Settings
from app.db import migrate
from app.dev.embedded_redis import EmbeddedRedis
from app.services import Services
from tests.support import FakeClock, SmtpSink, serving


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real Redis at REDIS_URL, or an embedded one for the whole session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A fresh, empty database: PostgreSQL at TEST_DATABASE_URL, otherwise SQLite."""
    return os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{tmp_path / 'onward.db'}"


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    """A real SMTP server on a free local port."""
    with serving(SmtpSink()) as sink:
        yield sink


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str, smtp: SmtpSink) -> Settings:
    return Settings(
        base_url="https://onward.test",
        secret_key="test-secret-key",
        database_url=database_url,
        redis_url=redis_url,
        smtp_url=f"smtp://127.0.0.1:{smtp.port}",  # type: ignore[attr-defined]
        mail_from="Onward <course@onward.test>",
        postal_address="Onward, 1 Test Street, Testville",
        queue_name=f"test-{uuid.uuid4().hex[:12]}",
        instance_dir=tmp_path / "instance",
        batch_size=50,
    )


def drop_postgresql_schema(engine: Engine) -> None:
    """Empty the test database: every table, alembic_version included."""
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")


@pytest.fixture
def services(settings: Settings, clock: FakeClock) -> Iterator[Services]:
    """Services on real servers with a fresh schema; the worker jobs use them too."""
    svc = Services(settings, clock=clock)
    if svc.engine.dialect.name == "postgresql":
        drop_postgresql_schema(svc.engine)
    migrate(svc.engine)
    worker.jobs.use_services(svc)
    try:
        yield svc
    finally:
        worker.jobs.use_services(None)
        svc.queue.empty()
        svc.close()


@pytest.fixture
def app(services: Services) -> Flask:
    flask_app = create_app(services=services)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(autouse=True)
def keep_root_logging() -> Iterator[None]:
    """Undo what a command's `configure_logging` did to the root logger during a test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
