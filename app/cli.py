"""Flask CLI commands: `flask --app app init-db`, `stats`, `dkim-dns`, `admin create`."""

from __future__ import annotations

import sys

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from redis.exceptions import RedisError

from app import operators, store
from app.config import ConfigError
from app.db import current_revision, migrate, session_scope
from app.services import Services


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database tables, or upgrade them to the latest revision."""
    services: Services = current_app.extensions["onward"]
    migrate(services.engine)
    click.echo(f"database ready at revision {current_revision(services.engine)}")


@click.command("stats")
@with_appcontext
def stats_command() -> None:
    """Print figures: subscriptions by status, emails by outcome, work due and queued.

    Then the relay's state, the send rate in force and the emails given up on.
    """
    services: Services = current_app.extensions["onward"]
    with session_scope(services.sessions) as session:
        figures: dict[str, object] = dict(store.counts(session, now=services.clock()))
        failed = [
            (d.id, d.subscriber_id, d.template, d.error or "")
            for d in store.failed_deliveries(session)
        ]
    try:
        figures["jobs_queued"] = services.queue.count
        figures["relay"] = services.breaker.state().describe()
        rate = services.send_rate
        figures["send_rate"] = "unlimited" if rate is None else f"{rate.rate} x {rate.factor():.3g}"
    except (RedisError, ConfigError) as error:
        click.echo(f"(Redis unavailable: {error})", err=True)
    for name in sorted(figures):
        click.echo(f"{name:28s} {figures[name]}")
    for delivery_id, subscriber_id, template, reason in failed:
        click.echo(f"failed email {delivery_id}: subscriber {subscriber_id} {template}: {reason}")


@click.command("dkim-dns")
@with_appcontext
def dkim_dns_command() -> None:
    """Print the DNS TXT record for the DKIM key in DKIM_KEY_FILE."""
    services: Services = current_app.extensions["onward"]
    if services.dkim is None:
        raise click.ClickException("DKIM_KEY_FILE is not set: see README, Deliverability")
    name, value = services.dkim.dns_record()
    click.echo(f"{name}. IN TXT")
    # DNS strings hold at most 255 characters: publish the value in quoted pieces.
    click.echo(" ".join(f'"{value[i : i + 250]}"' for i in range(0, len(value), 250)))


@click.group("admin")
def admin_group() -> None:
    """Operators of the console at /admin."""


@admin_group.command("create")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
def admin_create_command(email: str, password_stdin: bool) -> None:
    """Create an operator who signs in at /admin with EMAIL and a password."""
    services: Services = current_app.extensions["onward"]
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    try:
        with session_scope(services.sessions) as session:
            operator = operators.create_operator(session, email, password, now=services.clock())
    except operators.OperatorError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"operator {operator.email} created; sign in at {services.settings.base_url}/admin/")


def init_app(app: Flask) -> None:
    """Register the commands."""
    app.cli.add_command(init_db_command)
    app.cli.add_command(admin_group)
    app.cli.add_command(stats_command)
    app.cli.add_command(dkim_dns_command)
