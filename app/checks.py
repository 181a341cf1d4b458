"""Startup checks: in production, refuse settings that would be unsafe, with what to fix."""

from __future__ import annotations

from jinja2 import TemplateError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.config import DEV_SECRET_KEY, ConfigError, Settings, check_base_url
from app.course import CourseError
from app.db import utcnow
from app.emails import EmailTemplateError, build_message, render
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


def check_emails(services: Services) -> None:
    """Raise ConfigError unless the course loads and every email builds for a sample recipient."""
    try:
        catalog = services.catalog
        sender = services.sender
    except (CourseError, EmailTemplateError) as error:
        raise ConfigError(f"the course in EMAILS_DIR cannot be used: {error}") from None
    recipient = services.sample_recipient()
    for name in catalog.names:
        try:
            rendered = render(catalog.get(name), sender, recipient)
            build_message(rendered, sender, recipient, now=utcnow()).as_bytes()
        except Exception as error:  # any failure here would fail every send of this email
            detail = f"{name}.mjml: {error}" if isinstance(error, TemplateError) else repr(error)
            raise ConfigError(f"email {name} cannot be built: {detail}") from None
        if not rendered.subject or not rendered.text.strip():
            raise ConfigError(f"email {name} renders an empty subject or body")


def start_process(name: str) -> Services:
    """Settings, logging and services for a sending process, checked before it starts.

    Loads what every job needs (the queue, the DKIM key, the compiled emails) at once,
    and renders every email for a sample recipient, so a bad setting or template
    stops the process now, not at its first job; raises ConfigError with a one-line reason.
    """
    settings = Settings.from_env()
    configure_logging(settings.log_format, process=name)
    services = Services(settings)
    try:
        check_base_url(settings.base_url)
        check_production(services)
        services.queue  # noqa: B018
        services.dkim  # noqa: B018
        check_emails(services)
    except ConfigError:
        services.close()
        raise
    return services
