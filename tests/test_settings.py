"""Every setting is read and checked at start, in every entry point, with one line to fix it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import DEV_SECRET_KEY, ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("env", "named", "advice"),
    [
        ({"CHECK_DELIVERABILITY": "ture"}, "CHECK_DELIVERABILITY", "true or false"),
        ({"DEV_PAGES": "maybe"}, "DEV_PAGES", "true or false"),
        ({"SMTP_UTF8": "2"}, "SMTP_UTF8", "true or false"),
        ({"PORT": "70000"}, "PORT", "1 to 65535"),
        ({"PORT": "http"}, "PORT", "1 to 65535"),
        ({"MAIL_CATCHER_PORT": "-1"}, "MAIL_CATCHER_PORT", "1 to 65535"),
        ({"DATABASE_URL": "postgresql://u:pw@db:99999/x"}, "DATABASE_URL", "1 to 65535"),
        ({"DATABASE_URL": "postgresql://u:pw@db:abc/x"}, "DATABASE_URL", "postgresql://"),
        ({"DATABASE_URL": "postgresql://db/x?connect_timeout=soon"}, "DATABASE_URL", "seconds"),
        ({"DATABASE_URL": "nonsense"}, "DATABASE_URL", "sqlite:///"),
        ({"REDIS_URL": "redis://h:abc/0"}, "REDIS_URL", "redis://host:6379/0"),
        ({"REDIS_URL": "redis://h:6379/zero"}, "REDIS_URL", "redis://host:6379/0"),
        ({"REDIS_URL": "http://h:6379/0"}, "REDIS_URL", "redis://host:6379/0"),
        ({"SMTP_URL": "smtp://h:abc"}, "SMTP_URL", "smtp://user:password@host:587"),
        ({"SMTP_URL": "smtp://h:25?timeout=soon"}, "SMTP_URL", "timeout=30"),
        ({"SMTP_URL": "smtp://h:25?timeout=0"}, "SMTP_URL", "timeout=30"),
        ({"SMTP_URL": "smtp://h:25?starttls=ture"}, "starttls", "true or false"),
        ({"SMTP_URL": "smtp://h:25?tls=true"}, "SMTP_URL", "starttls=true"),
        ({"BASE_URL": "course.example.com"}, "BASE_URL", "https://course.example.com"),
        ({"BASE_URL": "https://h:99999"}, "BASE_URL", "https://course.example.com"),
        ({"TRUSTED_PROXIES": "yes"}, "TRUSTED_PROXIES", "whole number"),
        ({"BATCH_SIZE": "0"}, "BATCH_SIZE", "above zero"),
        ({"SEND_CONNECTIONS": "0"}, "SEND_CONNECTIONS", "above zero"),
    ],
)
def test_a_bad_setting_names_itself_and_what_to_write(
    env: dict[str, str], named: str, advice: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    message = str(raised.value)
    assert named in message and advice in message, message
    assert "\n" not in message
    assert ":pw@" not in message, "no password in an error message"


@pytest.mark.parametrize(
    ("text", "value"),
    [("on", True), ("YES", True), ("1", True), ("true", True), ("off", False), ("No", False)],
)
def test_booleans_take_the_usual_words(text: str, value: bool) -> None:
    settings = Settings.from_env({"DEV_PAGES": text, "CHECK_DELIVERABILITY": text})
    assert settings.dev_pages is value and settings.check_deliverability is value
    assert Settings.from_env({"SMTP_URL": f"smtp://h:25?starttls={text}"}).smtp.starttls is value


def test_empty_means_the_default() -> None:
    empty = {
        name: ""
        for name in (
            "BASE_URL", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "SMTP_URL", "PORT",
            "DEV_PAGES", "CHECK_DELIVERABILITY", "SMTP_UTF8", "TRUSTED_PROXIES", "BATCH_SIZE",
            "MAIL_FROM", "QUEUE_NAME", "LOG_FORMAT", "ONWARD_ENV", "SIGNUP_RATE", "CLAIM_LEASE",
            "SEND_CONNECTIONS",
        )
    }  # fmt: skip
    assert Settings.from_env(empty) == Settings.from_env({})
    assert Settings.from_env(empty).base_url == "http://127.0.0.1:5000"


def test_the_development_key_is_refused_unless_base_url_is_local() -> None:
    for local in ("http://localhost:8000", "http://127.0.0.1:5000", "http://[::1]:5000"):
        assert Settings.from_env({"BASE_URL": local}).secret_key == DEV_SECRET_KEY
    for env in (
        {"BASE_URL": "https://course.example.com"},
        {"BASE_URL": "https://course.example.com", "SECRET_KEY": ""},
        {"BASE_URL": "http://192.168.1.5:5000", "SECRET_KEY": DEV_SECRET_KEY},
    ):
        with pytest.raises(ConfigError, match=r"SECRET_KEY .*secrets\.token_urlsafe"):
            Settings.from_env(env)
    with pytest.raises(ConfigError, match="SECRET_KEY_FALLBACKS"):
        Settings.from_env(
            {
                "BASE_URL": "https://course.example.com",
                "SECRET_KEY": "k" * 48,
                "SECRET_KEY_FALLBACKS": DEV_SECRET_KEY,
            }
        )


# ------------------------------------------------------------------ every entry point


ENTRY_POINTS = {
    "init-db": [sys.executable, "-m", "flask", "--app", "app", "init-db"],
    "web": [sys.executable, "-c", "import app.wsgi"],
    "dev web": [sys.executable, "-m", "app.dev.server", "--port", "1"],
    "worker": [sys.executable, "-m", "worker", "--burst"],
    "scheduler": [sys.executable, "-m", "worker.schedule", "--once"],
}

BAD_SETTINGS = [
    ({"DATABASE_URL": "postgresql://u:pw@127.0.0.1:99999/x"}, "DATABASE_URL"),
    ({"SMTP_URL": "smtp://127.0.0.1:1025?timeout=soon"}, "SMTP_URL"),
    ({"REDIS_URL": "redis://127.0.0.1:port/0"}, "REDIS_URL"),
    ({"DEV_PAGES": "ture"}, "DEV_PAGES"),
    ({"BASE_URL": "https://course.example.com"}, "SECRET_KEY"),
]


def run(
    command: list[str], env: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.isupper() or key in {"PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV"}
    }
    base |= {
        "INSTANCE_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'onward.db'}",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    return subprocess.run(
        command,
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize(("env", "named"), BAD_SETTINGS)
def test_every_entry_point_stops_with_one_line_and_status_2(
    entry: str, env: dict[str, str], named: str, tmp_path: Path
) -> None:
    done = run(ENTRY_POINTS[entry], env, tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and named in lines[0], done.stderr
    assert "Traceback" not in done.stderr and ":pw@" not in done.stderr


@pytest.mark.slow
def test_init_db_that_cannot_reach_the_database_says_so_in_one_line(tmp_path: Path) -> None:
    unreachable = {"DATABASE_URL": "postgresql://onward:pw@127.0.0.1:1/onward"}
    done = run(ENTRY_POINTS["init-db"], unreachable, tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("onward init-db: cannot migrate the database at DATABASE_URL")
    assert "pw@" not in line
    (tmp_path / "a-file").write_text("")
    under_a_file = {"DATABASE_URL": f"sqlite:///{tmp_path / 'a-file' / 'onward.db'}"}
    done = run(ENTRY_POINTS["init-db"], under_a_file, tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
