"""Settings read from the environment, in one place."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from email.utils import formataddr, getaddresses
from enum import StrEnum
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import idna

from app import timing

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE_DIR = PROJECT_ROOT / "instance"
DEFAULT_EMAILS_DIR = PROJECT_ROOT / "emails"
DEV_SECRET_KEY = "dev-only-secret-change-me"

_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(ValueError):
    """A setting has a value Onward cannot use; the message says which and how to fix it."""


def parse_interval(text: str) -> timedelta:
    """Parse `30s`, `10m`, `6h`, `2d` (or bare seconds) into a timedelta."""
    match = _INTERVAL.match(text)
    if not match:
        raise ConfigError(f"cannot read interval {text!r}: use a number and s, m, h or d, like 2d")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"interval {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def parse_reply_to(text: str, *, setting: str = "REPLY_TO") -> str | None:
    """One address (optionally with a name) that replies go to; empty: none.

    An internationalised domain is written in IDNA (punycode); `setting` names the
    value in the ConfigError raised for anything but exactly one usable address.
    """
    value = text.strip()
    if not value:
        return None
    refused = ConfigError(
        f"{setting} must be one email address, like help@example.com, got {text!r}"
    )
    pairs = getaddresses([value])
    if "\r" in value or "\n" in value or len(pairs) != 1:
        raise refused
    name, address = pairs[0]
    local, _, domain = address.rpartition("@")
    if not local or not local.isascii() or "." not in domain:
        raise refused
    try:
        domain = idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise refused from None
    return formataddr((name, f"{local}@{domain}"))


def schedule_settings(env: Mapping[str, str]) -> tuple[timing.SendWindow | None, str]:
    """SEND_WINDOW with SEND_DAYS, and DEFAULT_TIME_ZONE; a bad one raises ConfigError."""
    window_text, days_text = env.get("SEND_WINDOW", "").strip(), env.get("SEND_DAYS", "").strip()
    try:
        start, end = timing.parse_window(window_text) if window_text else (0, timing.DAY_SECONDS)
    except ValueError as error:
        raise ConfigError(f"SEND_WINDOW: {error}") from None
    try:
        days = timing.parse_days(days_text) if days_text else frozenset(range(7))
    except ValueError as error:
        raise ConfigError(f"SEND_DAYS: {error}") from None
    window = timing.SendWindow(start, end, days) if window_text or days_text else None
    zone_name = env.get("DEFAULT_TIME_ZONE", "").strip() or "UTC"
    if not timing.is_time_zone(zone_name):
        raise ConfigError(
            f"DEFAULT_TIME_ZONE must be an IANA time zone like Europe/London, got {zone_name!r}"
        )
    return window, zone_name


@dataclass(frozen=True)
class SmtpSettings:
    """Where to hand messages over: host, port, optional login and STARTTLS/TLS."""

    host: str = "127.0.0.1"
    port: int = 1025
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    tls: bool = False
    timeout: float = 30.0

    @classmethod
    def from_url(cls, url: str) -> SmtpSettings:
        """Read `smtp://user:pass@host:port?starttls=true&timeout=30` (`smtps://`: implicit TLS)."""
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            raise ConfigError(f"SMTP_URL must look like smtp://host:port, got {url!r}")
        query = dict(parse_qsl(parts.query))
        tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if tls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            starttls=query.get("starttls", "false").lower() in {"1", "true", "yes"},
            tls=tls,
            timeout=float(query.get("timeout", "30")),
        )


class ClickTracking(StrEnum):
    """CLICK_TRACKING: what following a link in an email records (app/clicks.py)."""

    OFF = "off"
    PER_LINK = "per-link"
    PER_PERSON = "per-person"


@dataclass(frozen=True)
class Settings:
    """Everything Onward reads from its environment, with the defaults `make run` uses."""

    base_url: str = "http://127.0.0.1:5000"
    secret_key: str = DEV_SECRET_KEY
    database_url: str = f"sqlite:///{DEFAULT_INSTANCE_DIR / 'onward.db'}"
    redis_url: str | None = None
    smtp_url: str | None = None
    mail_from: str = "Onward <course@onward.localhost>"
    postal_address: str = "Onward, 1 Example Street, Springfield"
    step_interval: timedelta = timedelta(days=2)
    confirm_max_age: timedelta = timedelta(days=7)
    confirm_resend_after: timedelta = timedelta(minutes=10)
    tick_seconds: float = 5.0
    batch_size: int = 100
    claim_lease: timedelta = timedelta(minutes=10)
    #: What following a link in an email records (app/clicks.py): off, per-link, per-person.
    click_tracking: ClickTracking = ClickTracking.OFF
    #: How long the console's counted figures are kept (app/figures.py); 0: count per page.
    console_cache: timedelta = timedelta(minutes=1)
    queue_name: str = "onward"
    check_deliverability: bool = False
    instance_dir: Path = DEFAULT_INSTANCE_DIR
    emails_dir: Path = DEFAULT_EMAILS_DIR
    outbox_dir: Path | None = None
    dev_pages: bool = False
    trusted_proxies: int = 0
    environment: str = "development"
    log_format: str = "text"
    dkim_key_file: Path | None = None
    dkim_selector: str = "onward"
    dkim_domain: str | None = None
    #: Where replies to the course emails go; None: no Reply-To, no invitation to reply.
    reply_to: str | None = None
    # When steps go, in each subscriber's local time (see timing.py).
    send_window: timing.SendWindow | None = None
    default_time_zone: str = "UTC"
    #: Suppression, caps, provider webhooks and bounce mail (README, List hygiene).
    hygiene: HygieneSettings = field(default_factory=lambda: HygieneSettings())
    # The operator's console (/admin) and /metrics.
    admin_session_idle: timedelta = timedelta(minutes=30)
    metrics_token: str | None = field(default=None, repr=False)

    # --- Delivery safety: the global send rate and SMTPUTF8 (README, Configuration) ---
    #: SEND_RATE: emails per period for all workers together; None: unlimited.
    send_rate: Rate | None = None
    #: SMTP_UTF8: the relay carries addresses with non-ASCII local parts (SMTPUTF8).
    smtp_utf8: bool = False

    @property
    def production(self) -> bool:
        """Whether ONWARD_ENV=production: the startup checks refuse unsafe settings."""
        return self.environment == "production"

    @property
    def smtp(self) -> SmtpSettings:
        """The SMTP relay; the built-in catcher on 127.0.0.1:1025 when SMTP_URL is unset."""
        return SmtpSettings.from_url(self.smtp_url or "smtp://127.0.0.1:1025")

    def with_changes(self, **changes: object) -> Settings:
        """A copy with some settings changed (tests and the launcher use this)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from environment variables (see README, Configuration)."""
        env = os.environ if environ is None else environ
        defaults = cls()

        def interval(name: str, default: str) -> timedelta:
            try:
                return parse_interval(env.get(name, default))
            except ConfigError as error:
                raise ConfigError(f"{name}: {error}") from None

        port = env.get("PORT", "5000")
        instance_dir = Path(env.get("INSTANCE_DIR", str(DEFAULT_INSTANCE_DIR)))
        outbox = env.get("OUTBOX_DIR")

        def choice(name: str, allowed: set[str], default: str) -> str:
            value = env.get(name, default).strip().lower()
            if value not in allowed:
                raise ConfigError(
                    f"{name} must be one of {', '.join(sorted(allowed))}, got {value!r}"
                )
            return value

        def whole_number(name: str, default: int) -> int:
            text = env.get(name, str(default)).strip()
            if not text.isdigit():
                raise ConfigError(f"{name} must be a whole number, got {text!r}")
            return int(text)

        def positive_int(name: str, default: int) -> int:
            text = env.get(name, str(default))
            if not text.isdigit() or int(text) < 1:
                raise ConfigError(f"{name} must be a whole number above zero, got {text!r}")
            return int(text)

        send_window, default_time_zone = schedule_settings(env)
        smtp_url = env.get("SMTP_URL") or None
        if smtp_url:
            SmtpSettings.from_url(smtp_url)  # refuse a malformed URL at start, not at send
        send_rate, smtp_utf8 = delivery_settings(env)
        return cls(
            base_url=env.get("BASE_URL", f"http://127.0.0.1:{port}").rstrip("/"),
            secret_key=env.get("SECRET_KEY", defaults.secret_key),
            database_url=env.get("DATABASE_URL", f"sqlite:///{instance_dir / 'onward.db'}"),
            redis_url=env.get("REDIS_URL") or None,
            smtp_url=smtp_url,
            mail_from=env.get("MAIL_FROM", defaults.mail_from),
            postal_address=env.get("POSTAL_ADDRESS", defaults.postal_address),
            step_interval=interval("STEP_INTERVAL", "2d"),
            tick_seconds=interval("TICK_INTERVAL", "5s").total_seconds(),
            batch_size=positive_int("BATCH_SIZE", defaults.batch_size),
            claim_lease=claim_lease(env),
            console_cache=console_cache(env),
            click_tracking=ClickTracking(
                choice("CLICK_TRACKING", {m.value for m in ClickTracking}, "off")
            ),
            queue_name=env.get("QUEUE_NAME", defaults.queue_name),
            check_deliverability=env.get("CHECK_DELIVERABILITY", "false").lower()
            in {"1", "true", "yes"},
            instance_dir=instance_dir,
            emails_dir=Path(env.get("EMAILS_DIR", str(DEFAULT_EMAILS_DIR))),
            outbox_dir=Path(outbox) if outbox else None,
            dev_pages=env.get("DEV_PAGES", "false").lower() in {"1", "true", "yes"},
            trusted_proxies=whole_number("TRUSTED_PROXIES", 0),
            environment=choice("ONWARD_ENV", {"development", "production"}, "development"),
            log_format=choice("LOG_FORMAT", {"text", "json"}, "text"),
            dkim_key_file=Path(env["DKIM_KEY_FILE"]) if env.get("DKIM_KEY_FILE") else None,
            dkim_selector=env.get("DKIM_SELECTOR", defaults.dkim_selector),
            dkim_domain=env.get("DKIM_DOMAIN") or None,
            reply_to=parse_reply_to(env.get("REPLY_TO", "")),
            send_window=send_window,
            default_time_zone=default_time_zone,
            # The operator's console (/admin) and /metrics.
            admin_session_idle=interval("ADMIN_SESSION_IDLE", "30m"),
            metrics_token=env.get("METRICS_TOKEN") or None,
            send_rate=send_rate,
            smtp_utf8=smtp_utf8,
            hygiene=HygieneSettings.from_env(env),
        )


# --- Delivery safety settings: SEND_RATE and SMTP_UTF8 ---

_RATE_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smhd])\s*$")


@dataclass(frozen=True)
class Rate:
    """A number of emails per period, like 14/s or 50000/h."""

    count: float
    period: float

    @property
    def interval(self) -> float:
        """Seconds between two emails at this rate."""
        return self.period / self.count

    def __str__(self) -> str:
        unit = {seconds: name for name, seconds in _RATE_PERIODS.items()}[self.period]
        return f"{self.count:g}/{unit}"


def parse_rate(text: str) -> Rate:
    """Read `14/s`, `600/m`, `50000/h` or `100000/d`; ConfigError if it is not one."""
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(
            f"SEND_RATE must be a number of emails per s, m, h or d, like 14/s, got {text!r}"
        )
    return Rate(float(match.group(1)), _RATE_PERIODS[match.group(2)])


#: The shortest CLAIM_LEASE: a batch gets half the lease to send in.
MIN_CLAIM_LEASE = timedelta(seconds=10)


def console_cache(env: Mapping[str, str]) -> timedelta:
    """CONSOLE_CACHE (default 1m): how long the console's counts are kept; 0: not kept."""
    text = env.get("CONSOLE_CACHE", "").strip() or "1m"
    if text.rstrip("smhd") in {"0", "0.0"}:
        return timedelta(0)
    try:
        return parse_interval(text)
    except ConfigError as error:
        raise ConfigError(f"CONSOLE_CACHE: {error}, or 0 to count on every page") from None


def claim_lease(env: Mapping[str, str]) -> timedelta:
    """CLAIM_LEASE (default 10m): how long a batch holds its subscriptions."""
    text = env.get("CLAIM_LEASE", "10m")
    try:
        lease = parse_interval(text)
    except ConfigError as error:
        raise ConfigError(f"CLAIM_LEASE: {error}") from None
    if lease < MIN_CLAIM_LEASE:
        raise ConfigError(f"CLAIM_LEASE must be at least 10s, got {text!r}")
    return lease


def delivery_settings(env: Mapping[str, str]) -> tuple[Rate | None, bool]:
    """SEND_RATE (unset: unlimited) and SMTP_UTF8 (default false) from the environment."""
    send_rate = env.get("SEND_RATE", "").strip()
    smtp_utf8 = env.get("SMTP_UTF8", "false").strip().lower()
    if smtp_utf8 not in {"1", "true", "yes", "0", "false", "no"}:
        raise ConfigError(f"SMTP_UTF8 must be true or false, got {smtp_utf8!r}")
    return (parse_rate(send_rate) if send_rate else None), smtp_utf8 in {"1", "true", "yes"}


# --- List hygiene: suppression, caps, provider webhooks and bounce mail ---


@dataclass(frozen=True)
class HygieneSettings:
    """Limits and the credentials of the ways bounces and complaints reach Onward."""

    #: Sign-ups one IP address (IPv6: one /64 network) may make per hour.
    signups_per_ip_per_hour: int = 20
    #: Confirmation emails one mailbox (however spelled) may receive per UTC day.
    confirmations_per_day: int = 3
    #: Soft bounces of one mailbox within `soft_bounce_window` that suppress it.
    soft_bounce_limit: int = 3
    soft_bounce_window: timedelta = timedelta(days=7)
    #: The envelope sender, with `{token}` where each email's own token goes (VERP).
    return_path: str | None = None
    #: The IMAP mailbox that receives bounce and feedback-loop mail.
    bounce_imap_url: str | None = field(default=None, repr=False)
    bounce_poll_seconds: float = 60.0
    #: SNS topics whose SES notifications are accepted.
    ses_topic_arns: tuple[str, ...] = ()
    postmark_webhook_auth: str | None = field(default=None, repr=False)
    mailgun_signing_key: str | None = field(default=None, repr=False)
    sendgrid_public_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HygieneSettings:
        """Read the caps, RETURN_PATH, BOUNCE_IMAP_URL and the webhook keys."""

        def count(name: str, default: int) -> int:
            text = env.get(name) or str(default)
            if not text.isdigit() or int(text) < 1:
                raise ConfigError(f"{name} must be a whole number above zero, got {text!r}")
            return int(text)

        def interval(name: str, default: str) -> timedelta:
            try:
                return parse_interval(env.get(name) or default)
            except ConfigError as error:
                raise ConfigError(f"{name}: {error}") from None

        return_path = env.get("RETURN_PATH") or None
        if return_path is not None and (
            "{token}" not in return_path or "@" not in return_path.replace("{token}", "")
        ):
            raise ConfigError(
                f"RETURN_PATH must be an address with {{token}} in it, like "
                f"bounces+{{token}}@example.com, got {return_path!r}"
            )
        imap_url = env.get("BOUNCE_IMAP_URL") or None
        if imap_url is not None:
            parts = urlsplit(imap_url)
            if parts.scheme not in {"imap", "imaps"} or not parts.hostname or not parts.username:
                raise ConfigError("BOUNCE_IMAP_URL must look like imaps://user:password@host/INBOX")
        auth = env.get("POSTMARK_WEBHOOK_AUTH") or None
        if auth is not None and ":" not in auth:
            raise ConfigError("POSTMARK_WEBHOOK_AUTH must be user:password")
        return cls(
            signups_per_ip_per_hour=count("SIGNUPS_PER_IP_PER_HOUR", cls.signups_per_ip_per_hour),
            confirmations_per_day=count("CONFIRMATIONS_PER_DAY", cls.confirmations_per_day),
            soft_bounce_limit=count("SOFT_BOUNCE_LIMIT", cls.soft_bounce_limit),
            soft_bounce_window=interval("SOFT_BOUNCE_WINDOW", "7d"),
            return_path=return_path,
            bounce_imap_url=imap_url,
            bounce_poll_seconds=interval("BOUNCE_POLL_INTERVAL", "60s").total_seconds(),
            ses_topic_arns=tuple(
                arn.strip() for arn in (env.get("SES_TOPIC_ARN") or "").split(",") if arn.strip()
            ),
            postmark_webhook_auth=auth,
            mailgun_signing_key=env.get("MAILGUN_SIGNING_KEY") or None,
            sendgrid_public_key=env.get("SENDGRID_WEBHOOK_PUBLIC_KEY") or None,
        )
