"""Flask CLI commands: `flask --app app init-db`."""

from __future__ import annotations

import click
from flask import Flask, current_app

from app.db import create_schema
from app.services import Services


@click.command("init-db")
def init_db_command() -> None:
    """Create the database tables that do not exist yet."""
    services: Services = current_app.extensions["onward"]
    create_schema(services.engine)
    click.echo("database ready")


def init_app(app: Flask) -> None:
    """Register the commands."""
    app.cli.add_command(init_db_command)
