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


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: Hosts whose BASE_URL marks a local development run (the development key is fine there).
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def parse_bool(name: str, text: str | None, default: bool) -> bool:
    """true/false, 1/0, yes/no or on/off (any case); empty: `default`; else ConfigError."""
    value = (text or "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false (or yes/no, on/off, 1/0), got {text!r}")


def parse_port(name: str, text: str) -> int:
    """A TCP port, 1 to 65535; ConfigError naming `name` otherwise."""
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigError(f"{name} must be a port number from 1 to 65535, like 5000, got {text!r}")
    return int(value)


def _positive_number(text: str) -> bool:
    try:
        return 0 < float(text) < float("inf")
    except ValueError:
        return False


def _masked(url: str) -> str:
    """The URL with any password replaced, fit for an error message."""
    return re.sub(r"(\w+://[^:/@\s]*:)[^@\s]*@", r"\1***@", url)


def check_base_url(base_url: str) -> None:
    """Raise ConfigError unless BASE_URL is a full http(s) URL that links can be built on."""
    parts = urlsplit(base_url)
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
        valid_port = True
    except ValueError:
        valid_port = False
    if (
        parts.scheme not in {"http", "https"}
        or not parts.hostname
        or not valid_port
        or any(char.isspace() or char in "<>\"'" for char in base_url)
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(
            f"BASE_URL must be a full URL like https://course.example.com, got {base_url!r}"
        )


def is_local_url(base_url: str) -> bool:
    """Whether BASE_URL points at this machine (localhost, 127.0.0.1 or ::1)."""
    return (urlsplit(base_url).hostname or "").lower() in LOCAL_HOSTS


def check_database_url(url: str) -> None:
    """Raise ConfigError unless DATABASE_URL is a SQLAlchemy URL with a usable port and timeouts."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "postgresql://user:password@host:5432/onward or sqlite:///instance/onward.db"
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise ConfigError(f"DATABASE_URL must be like {example}, got {_masked(url)!r}") from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ConfigError(
            f"DATABASE_URL has port {parsed.port}: write a port from 1 to 65535, like {example}"
        )
    for key, value in parsed.query.items():
        if "timeout" in key and not all(_positive_number(v) for v in _values(value)):
            raise ConfigError(
                f"DATABASE_URL has {key}={value!r}: write a number of seconds, like {key}=10"
            )


def _values(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def check_redis_url(url: str) -> None:
    """Raise ConfigError unless REDIS_URL is a redis://, rediss:// or unix:// URL redis-py reads."""
    from redis.connection import parse_url

    refused = ConfigError(
        f"REDIS_URL must be like redis://host:6379/0 (or rediss://, unix:///path?db=0), "
        f"got {_masked(url)!r}"
    )
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refused from None
    if parts.scheme != "unix" and (not parts.hostname or port == 0):
        raise refused
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise refused


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
        example = "smtp://user:password@host:587?starttls=true"
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = 0
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname or port == 0:
            raise ConfigError(
                f"SMTP_URL must look like smtp://host:port, e.g. {example}, got {_masked(url)!r}"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(query) - {"starttls", "timeout"})
        if unknown:
            raise ConfigError(
                f"SMTP_URL has {unknown[0]}=: only starttls=true|false and timeout=<seconds> "
                f"are read, like {example}&timeout=30"
            )
        timeout = query.get("timeout") or "30"
        if not _positive_number(timeout):
            raise ConfigError(
                f"SMTP_URL has timeout={timeout!r}: write a number of seconds, like timeout=30"
            )
        tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=port or (465 if tls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            starttls=parse_bool("SMTP_URL's starttls", query.get("starttls"), False),
            tls=tls,
            timeout=float(timeout),
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
    secret_key: str = field(default=DEV_SECRET_KEY, repr=False)
    #: Older keys that still verify links (SECRET_KEY_FALLBACKS); SECRET_KEY signs.
    secret_key_fallbacks: tuple[str, ...] = field(default=(), repr=False)
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
    #: SMTP connections one batch sends over at once (app/sending.py, `_send_wave`).
    send_connections: int = 4
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

        def get(name: str, default: str = "") -> str:
            # An empty value (NAME= in .env or compose) means the default.
            return (env.get(name) or "").strip() or default

        def interval(name: str, default: str) -> timedelta:
            try:
                return parse_interval(get(name, default))
            except ConfigError as error:
                raise ConfigError(f"{name}: {error}") from None

        port = str(parse_port("PORT", get("PORT", "5000")))
        parse_port("MAIL_CATCHER_PORT", get("MAIL_CATCHER_PORT", "1025"))
        instance_dir = Path(get("INSTANCE_DIR", str(DEFAULT_INSTANCE_DIR)))
        outbox = get("OUTBOX_DIR")

        def choice(name: str, allowed: set[str], default: str) -> str:
            value = get(name, default).lower()
            if value not in allowed:
                raise ConfigError(
                    f"{name} must be one of {', '.join(sorted(allowed))}, got {value!r}"
                )
            return value

        def whole_number(name: str, default: int) -> int:
            text = get(name, str(default))
            if not text.isdigit():
                raise ConfigError(f"{name} must be a whole number, like {default}, got {text!r}")
            return int(text)

        def positive_int(name: str, default: int) -> int:
            text = get(name, str(default))
            if not text.isdigit() or int(text) < 1:
                raise ConfigError(
                    f"{name} must be a whole number above zero, like {default}, got {text!r}"
                )
            return int(text)

        base_url = get("BASE_URL", f"http://127.0.0.1:{port}").rstrip("/")
        check_base_url(base_url)
        secret_key, fallbacks = secret_keys(env, base_url)
        database_url = get("DATABASE_URL", f"sqlite:///{instance_dir / 'onward.db'}")
        check_database_url(database_url)
        redis_url = get("REDIS_URL") or None
        if redis_url:
            check_redis_url(redis_url)
        send_window, default_time_zone = schedule_settings(env)
        smtp_url = get("SMTP_URL") or None
        if smtp_url:
            SmtpSettings.from_url(smtp_url)  # refuse a malformed URL at start, not at send
        send_rate, smtp_utf8 = delivery_settings(env)
        return cls(
            base_url=base_url,
            secret_key=secret_key,
            secret_key_fallbacks=fallbacks,
            database_url=database_url,
            redis_url=redis_url,
            smtp_url=smtp_url,
            mail_from=get("MAIL_FROM", defaults.mail_from),
            postal_address=get("POSTAL_ADDRESS", defaults.postal_address),
            step_interval=interval("STEP_INTERVAL", "2d"),
            tick_seconds=interval("TICK_INTERVAL", "5s").total_seconds(),
            batch_size=positive_int("BATCH_SIZE", defaults.batch_size),
            send_connections=positive_int("SEND_CONNECTIONS", defaults.send_connections),
            claim_lease=claim_lease(env),
            console_cache=console_cache(env),
            click_tracking=ClickTracking(
                choice("CLICK_TRACKING", {m.value for m in ClickTracking}, "off")
            ),
            queue_name=get("QUEUE_NAME", defaults.queue_name),
            check_deliverability=parse_bool(
                "CHECK_DELIVERABILITY", env.get("CHECK_DELIVERABILITY"), False
            ),
            instance_dir=instance_dir,
            emails_dir=Path(get("EMAILS_DIR", str(DEFAULT_EMAILS_DIR))),
            outbox_dir=Path(outbox) if outbox else None,
            dev_pages=parse_bool("DEV_PAGES", env.get("DEV_PAGES"), False),
            trusted_proxies=whole_number("TRUSTED_PROXIES", 0),
            environment=choice("ONWARD_ENV", {"development", "production"}, "development"),
            log_format=choice("LOG_FORMAT", {"text", "json"}, "text"),
            dkim_key_file=Path(get("DKIM_KEY_FILE")) if get("DKIM_KEY_FILE") else None,
            dkim_selector=get("DKIM_SELECTOR", defaults.dkim_selector),
            dkim_domain=get("DKIM_DOMAIN") or None,
            reply_to=parse_reply_to(env.get("REPLY_TO", "")),
            send_window=send_window,
            default_time_zone=default_time_zone,
            # The operator's console (/admin) and /metrics.
            admin_session_idle=interval("ADMIN_SESSION_IDLE", "30m"),
            metrics_token=get("METRICS_TOKEN") or None,
            send_rate=send_rate,
            smtp_utf8=smtp_utf8,
            hygiene=HygieneSettings.from_env(env),
        )


#: How to make a key, said wherever one is asked for.
MAKE_A_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"


def secret_keys(env: Mapping[str, str], base_url: str) -> tuple[str, tuple[str, ...]]:
    """SECRET_KEY (empty: the development key) and SECRET_KEY_FALLBACKS, newest first.

    The development key is published with the code: anyone holding it can sign links
    (one leaked List-Unsubscribe URL would be enough to make a manage link), so it is
    refused wherever BASE_URL is not this machine.
    """
    secret_key = (env.get("SECRET_KEY") or "").strip() or DEV_SECRET_KEY
    fallbacks = tuple(
        key.strip() for key in (env.get("SECRET_KEY_FALLBACKS") or "").split(",") if key.strip()
    )
    if not is_local_url(base_url):
        if secret_key == DEV_SECRET_KEY:
            raise ConfigError(
                f"SECRET_KEY is unset or the published development key while BASE_URL "
                f"({base_url}) is not local: set it to a long random value, e.g. {MAKE_A_KEY}"
            )
        if DEV_SECRET_KEY in fallbacks:
            raise ConfigError("SECRET_KEY_FALLBACKS holds the published development key: remove it")
    return secret_key, fallbacks


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


def parse_rate(
    text: str, *, setting: str = "SEND_RATE", what: str = "emails", example: str = "14/s"
) -> Rate:
    """Read `14/s`, `600/m`, `50000/h` or `100000/d`; ConfigError naming `setting` if not one."""
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(
            f"{setting} must be a number of {what} per s, m, h or d, like {example}, got {text!r}"
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
    text = (env.get("CLAIM_LEASE") or "").strip() or "10m"
    try:
        lease = parse_interval(text)
    except ConfigError as error:
        raise ConfigError(f"CLAIM_LEASE: {error}") from None
    if lease < MIN_CLAIM_LEASE:
        raise ConfigError(f"CLAIM_LEASE must be at least 10s, got {text!r}")
    return lease


def delivery_settings(env: Mapping[str, str]) -> tuple[Rate | None, bool]:
    """SEND_RATE (unset: unlimited) and SMTP_UTF8 (default false) from the environment."""
    send_rate = (env.get("SEND_RATE") or "").strip()
    smtp_utf8 = parse_bool("SMTP_UTF8", env.get("SMTP_UTF8"), False)
    return (parse_rate(send_rate) if send_rate else None), smtp_utf8


# --- List hygiene: suppression, caps, provider webhooks and bounce mail ---


@dataclass(frozen=True)
class HygieneSettings:
    """Limits and the credentials of the ways bounces and complaints reach Onward."""

    #: Sign-ups one IP address (IPv6: one /64 network) may make per period (SIGNUP_RATE).
    signup_rate: Rate = field(default_factory=lambda: Rate(20, 3600))
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
            signup_rate=signup_rate(env),
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


def signup_rate(env: Mapping[str, str]) -> Rate:
    """SIGNUP_RATE (default 20/h), or the older SIGNUPS_PER_IP_PER_HOUR as a count per hour."""
    text = (env.get("SIGNUP_RATE") or "").strip()
    if not text:
        older = (env.get("SIGNUPS_PER_IP_PER_HOUR") or "").strip()
        if not older:
            return Rate(20, 3600)
        if not older.isdigit() or int(older) < 1:
            raise ConfigError(
                f"SIGNUPS_PER_IP_PER_HOUR must be a whole number above zero, got {older!r}; "
                "better, write SIGNUP_RATE=20/h"
            )
        return Rate(int(older), 3600)
    rate = parse_rate(text, setting="SIGNUP_RATE", what="sign-ups", example="20/h")
    if not rate.count.is_integer():
        raise ConfigError(f"SIGNUP_RATE must count whole sign-ups, like 20/h, got {text!r}")
    return rate
