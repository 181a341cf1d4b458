"""Startup checks: in production, refuse settings that would be unsafe, with what to fix."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.config import DEV_SECRET_KEY, ConfigError, Settings
from app.course import CourseError
from app.emails import EmailTemplateError
from app.logs import configure_logging
from app.services import Services


def check_production(services: Services) -> None:
    """Raise ConfigError, in one line that says what to fix, if production would be unsafe.

    Only with ONWARD_ENV=production; development runs with the defaults.
    """
    settings = services.settings
    if not settings.production:
        return
    if settings.secret_key == DEV_SECRET_KEY or len(settings.secret_key) < 32:
        raise ConfigError(
            "SECRET_KEY is the development default or shorter than 32 characters: set it to "
            "a long random value, e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    if not settings.base_url.startswith("https://"):
        raise ConfigError(
            "BASE_URL must be https in production (unsubscribe links need it), "
            f"got {settings.base_url!r}"
        )
    if settings.dev_pages:
        raise ConfigError("DEV_PAGES must be off in production: unset it")
    try:
        with services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        reason = str(error.orig if hasattr(error, "orig") else error).strip().splitlines()[0]
        raise ConfigError(f"cannot reach the database at DATABASE_URL: {reason}") from None


def check_course(services: Services) -> None:
    """Load the course file and compile and render every email it names, or raise ConfigError."""
    try:
        services.catalog  # noqa: B018
    except (CourseError, EmailTemplateError) as error:
        raise ConfigError(f"the course in EMAILS_DIR cannot be used: {error}") from None


def start_process(name: str) -> Services:
    """Settings, logging and services for a sending process, checked before it starts.

    Loads what every job needs (the queue, the DKIM key, the compiled emails) at once,
    so a bad setting stops the process now, not at its first job; raises ConfigError
    with a one-line reason.
    """
    settings = Settings.from_env()
    configure_logging(settings.log_format, process=name)
    services = Services(settings)
    try:
        check_production(services)
        services.queue  # noqa: B018
        services.dkim  # noqa: B018
        check_course(services)
    except ConfigError:
        services.close()
        raise
    return services
