"""Flask CLI commands: `flask --app app init-db`, `stats`, `dkim-dns`, `admin create`,
`subscribers import` and `subscribers export`."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from redis.exceptions import RedisError
from rich.progress import Progress

from app import apitokens, drip, importing, operators, store
from app.bounces import BounceSourceError, ImapMailbox, apply_letters, from_maildir, from_mbox
from app.config import ConfigError
from app.db import current_revision, migrate, session_scope
from app.logs import redact
from app.models import SubscriberStatus
from app.services import Services


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database tables, or upgrade them to the latest revision."""
    services: Services = current_app.extensions["onward"]
    try:
        migrate(services.engine)
        revision = current_revision(services.engine)
    except Exception as error:  # whatever stops the migration, the operator gets one line
        reason = str(getattr(error, "orig", None) or error).strip().splitlines() or [repr(error)]
        click.echo(
            f"onward init-db: cannot migrate the database at DATABASE_URL "
            f"({redact(services.settings.database_url)}): {redact(reason[0])}",
            err=True,
        )
        raise SystemExit(2) from None
    click.echo(f"database ready at revision {revision}")


@click.command("stats")
@with_appcontext
def stats_command() -> None:
    """Print figures: subscriptions by status, emails by outcome, work due and queued.

    Then the relay's state, the send rate in force and the emails given up on. With
    SEND_WINDOW and SEND_RATE set: the most steps due in one window's length over the
    next day, and how many the rate sends in a window (more go after it closes).
    """
    services: Services = current_app.extensions["onward"]
    with session_scope(services.sessions) as session:
        figures: dict[str, object] = dict(store.counts(session, now=services.clock()))
        failed = [
            (d.id, d.subscriber_id, d.template, d.error or "")
            for d in store.failed_deliveries(session)
        ]
        volume = drip.window_volume(
            session, policy=services.policy, rate=services.settings.send_rate, now=services.clock()
        )
    if volume is not None:
        figures["window_busiest_due"], figures["window_capacity"] = volume
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
    with session_scope(services.sessions) as session:
        hygiene = drip.hygiene_counts(session, now=services.clock())
    for line in hygiene_lines(hygiene):
        click.echo(line)


def hygiene_lines(figures: drip.HygieneFigures) -> list[str]:
    """Bounces and complaints per email and per day, and the complaint rate against Gmail's."""
    lines = [f"bounces and complaints, last {figures.days} days:"]
    kinds = [str(kind) for kind in drip.HYGIENE_KINDS]
    lines.append(f"  {'':12s} " + " ".join(f"{kind:>11s}" for kind in kinds))
    for title, table in (("per email", figures.per_step), ("per day", figures.per_day)):
        lines.append(f"  {title}:")
        for row in sorted({key for key, _kind in table}):
            counts = " ".join(f"{table.get((row, kind), 0):>11d}" for kind in kinds)
            lines.append(f"  {row:12s} {counts}")
    limit = drip.GMAIL_COMPLAINT_LIMIT
    verdict = "OVER" if figures.complaint_rate >= limit else "under"
    lines.append(
        f"complaint rate {figures.complaint_rate:.2%} ({figures.complaints} of {figures.sent} "
        f"sent): {verdict} Gmail's {limit:.1%} limit"
    )
    return lines


bounces = click.Group("bounces", help="Bounce and feedback-loop mail (DSN, ARF).")


@bounces.command("read")
@click.option("--mbox", type=click.Path(path_type=Path), help="an mbox file")
@click.option("--maildir", type=click.Path(path_type=Path), help="a Maildir folder")
@click.option("--imap", help="imaps://user:password@host/INBOX (unseen messages)")
@with_appcontext
def read_bounces_command(mbox: Path | None, maildir: Path | None, imap: str | None) -> None:
    """Apply every bounce (DSN) and complaint (ARF) report found, once each."""
    if sum(option is not None for option in (mbox, maildir, imap)) != 1:
        raise click.UsageError("give exactly one of --mbox, --maildir or --imap")
    services: Services = current_app.extensions["onward"]
    if mbox is not None:
        letters = from_mbox(mbox)
    elif maildir is not None:
        letters = from_maildir(maildir)
    else:
        letters = ImapMailbox.from_url(str(imap)).unseen()
    try:
        done = apply_letters(services, letters)
    except (BounceSourceError, OSError) as error:
        raise click.ClickException(str(error)) from None
    for line in done:
        click.echo(line)
    click.echo(f"{len(done)} messages and reports read")


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


subscribers = click.Group("subscribers", help="Import subscribers from CSV, export them to CSV.")


@subscribers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check the file and report; change nothing.")
@click.option(
    "--consent",
    metavar="TEXT",
    help="Where and how these people agreed to the course: recorded in each consent record; "
    "then the file's status and step apply (active by default) and no confirmation is sent.",
)
@with_appcontext
def import_subscribers_command(file: Path, dry_run: bool, consent: str | None) -> None:
    """Import the subscribers in a CSV FILE whose header row names its columns."""
    services: Services = current_app.extensions["onward"]
    with file.open("rb") as counting:
        lines = max(sum(1 for _ in counting) - 1, 0)
    with file.open(newline="", encoding="utf-8-sig") as stream, Progress(transient=True) as bar:
        task = bar.add_task("Checking" if dry_run else "Importing", total=lines)
        try:
            report = importing.import_csv(
                services,
                stream,
                consent=consent,
                dry_run=dry_run,
                on_problem=lambda problem: bar.console.print(str(problem), highlight=False),
                on_rows=lambda count: bar.advance(task, count),
            )
        except (importing.ImportFileError, UnicodeDecodeError, csv.Error) as error:
            raise click.ClickException(f"{file}: {error}") from None
    for line in report.summary():
        click.echo(line)


@subscribers.command("export")
@click.option(
    "--status", type=click.Choice([str(s) for s in SubscriberStatus]), help="only this status"
)
@click.option("--step", type=click.IntRange(min=1), help="only subscriptions at this next step")
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="a file (default: stdout)"
)
@with_appcontext
def export_subscribers_command(status: str | None, step: int | None, output: Path | None) -> None:
    """Write every subscription and its consent record as CSV (the columns import reads)."""
    services: Services = current_app.extensions["onward"]
    lines = importing.export_csv(
        services, status=SubscriberStatus(status) if status else None, step=step
    )
    if output is None:
        for line in lines:
            click.echo(line, nl=False)
        return
    with output.open("w", newline="", encoding="utf-8") as target:
        target.writelines(lines)


@admin_group.command("token")
@click.argument("label")
@click.option("--scope", type=click.Choice(["read", "write"]), default="read", show_default=True)
@click.option("--operator", "operator_email", required=True, help="The operator it acts for.")
@with_appcontext
def admin_token_command(label: str, scope: str, operator_email: str) -> None:
    """Make an API token for /api/v1; it is printed once and never stored."""
    services: Services = current_app.extensions["onward"]
    address = operators.operator_address(operator_email)
    try:
        with session_scope(services.sessions) as session:
            if address is None or not operators.operator_exists(session, address):
                raise click.ClickException(f"there is no operator {operator_email}")
            _row, token = apitokens.create_token(
                session, label, scope, operator_email=address, now=services.clock()
            )
    except apitokens.TokenError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"API token {label!r} ({scope}); copy it now, it is not shown again:")
    click.echo(token)


def init_app(app: Flask) -> None:
    """Register the commands."""
    app.cli.add_command(init_db_command)
    app.cli.add_command(admin_group)
    app.cli.add_command(stats_command)
    app.cli.add_command(dkim_dns_command)
    app.cli.add_command(bounces)
    app.cli.add_command(subscribers)
