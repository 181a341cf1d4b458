"""The long-lived pieces one process shares: settings, database, Redis queue, emails, clock."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from redis import Redis
from rq import Queue
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app import timing
from app.breaker import Breaker
from app.config import ClickTracking, ConfigError, Settings
from app.course import Course, load_course
from app.db import make_engine, make_sessionmaker, utcnow
from app.dkim import DkimSigner
from app.drip import Policy
from app.dsn import verp_address
from app.emails import EmailCatalog, Recipient, Sender
from app.mailbox import MailboxKeys
from app.mailer import SmtpMailer
from app.sendrate import SendRate
from app.stopping import keep_stop_signals_from_this_thread
from app.tokens import Links, LinkSigner, TrackedLink


@dataclass
class Services:
    """Built once per process from the settings; the web app and the worker both use one."""

    settings: Settings
    clock: Callable[[], datetime] = field(default=utcnow)

    @classmethod
    def from_env(cls) -> Services:
        """Services for the settings in the environment."""
        return cls(Settings.from_env())

    @cached_property
    def engine(self) -> Engine:
        """The database engine (one pool per process)."""
        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        """The session factory; its sessions write webhook events to the outbox as they commit."""
        from app import outbound

        maker = make_sessionmaker(self.engine)
        outbound.install(maker, self.clock)
        return maker

    @cached_property
    def redis(self) -> Redis:
        """The Redis connection that holds the job queue."""
        if not self.settings.redis_url:
            raise ConfigError("REDIS_URL is not set: start Onward with `make run` or set REDIS_URL")
        return Redis.from_url(self.settings.redis_url, socket_connect_timeout=5, socket_timeout=10)

    @cached_property
    def queue(self) -> Queue:
        """The RQ queue the sending jobs go to."""
        return Queue(self.settings.queue_name, connection=self.redis)

    @cached_property
    def breaker(self) -> Breaker:
        """The relay breaker, shared by every sending process through Redis."""
        return Breaker(self.redis, prefix=self.settings.queue_name)

    @cached_property
    def send_rate(self) -> SendRate | None:
        """The global send rate (SEND_RATE), shared through Redis; None when unlimited."""
        rate = self.settings.send_rate
        return None if rate is None else SendRate(self.redis, rate, prefix=self.settings.queue_name)

    @cached_property
    def policy(self) -> Policy:
        """The course timing rules."""
        return Policy(
            step_interval=self.settings.step_interval,
            total_steps=self.course.step_count,
            confirm_resend_after=self.settings.confirm_resend_after,
            claim_lease=self.settings.claim_lease,
            send_window=self.settings.send_window,
            default_time_zone=self.settings.default_time_zone,
            confirmations_per_day=self.settings.hygiene.confirmations_per_day,
            soft_bounce_limit=self.settings.hygiene.soft_bounce_limit,
            soft_bounce_window=self.settings.hygiene.soft_bounce_window,
        )

    @cached_property
    def mailbox_keys(self) -> MailboxKeys:
        """Keyed hashes of mailboxes, for the suppression list and the caps."""
        return MailboxKeys(self.settings.secret_key)

    @cached_property
    def signer(self) -> LinkSigner:
        """Signs and reads the links in emails."""
        return LinkSigner(
            self.settings.secret_key,
            confirm_max_age=self.settings.confirm_max_age,
            fallbacks=self.settings.secret_key_fallbacks,
        )

    @cached_property
    def course(self) -> Course:
        """The course: its steps, subjects and wording, from EMAILS_DIR/course.toml."""
        return load_course(self.settings.emails_dir)

    @cached_property
    def catalog(self) -> EmailCatalog:
        """Every email of the course, compiled from MJML once per process.

        `checks.check_emails` renders each for a sample recipient when a process starts.
        """
        return EmailCatalog(self.course)

    @cached_property
    def sender(self) -> Sender:
        """Who the emails come from."""
        settings = self.settings
        return Sender(
            mail_from=settings.mail_from,
            postal_address=settings.postal_address,
            base_url=settings.base_url,
            confirm_max_age=settings.confirm_max_age,
            # REPLY_TO, where set, overrides the course file's address.
            reply_to=settings.reply_to or self.course.reply_to,
            list_title=self.course.title,
            list_id=self.course.list_id,
            cadence=timing.cadence(settings.step_interval, settings.send_window),
        )

    @cached_property
    def dkim(self) -> DkimSigner | None:
        """The DKIM signer, when DKIM_KEY_FILE is set (the key is read once)."""
        settings = self.settings
        if settings.dkim_key_file is None:
            return None
        return DkimSigner.from_file(
            settings.dkim_key_file,
            domain=settings.dkim_domain or self.sender.domain,
            selector=settings.dkim_selector,
        )

    @cached_property
    def signing_threads(self) -> ThreadPoolExecutor:
        """Threads for DKIM's RSA signatures, which run in OpenSSL without Python's lock:
        a batch signs the next emails while it waits for the relay and the database."""
        return ThreadPoolExecutor(
            max_workers=min(2, os.cpu_count() or 1),
            thread_name_prefix="onward-dkim",
            initializer=keep_stop_signals_from_this_thread,
        )

    def sample_recipient(self) -> Recipient:
        """A made-up subscriber, Ada, for previews, benchmarks and checks of the emails."""
        return Recipient(
            email="ada@example.com",
            first_name="Ada",
            links=self.links("sample-subscriber"),
            message_id=f"<sample@{self.sender.domain}>",
        )

    def return_path(self, message_id: str) -> str | None:
        """The envelope sender (VERP) of the email with `message_id`, if RETURN_PATH is set."""
        template = self.settings.hygiene.return_path
        return None if template is None else verp_address(template, message_id)

    def links(self, subscriber_key: str) -> Links:
        """The signed links of one subscription."""
        return Links.for_key(self.signer, self.settings.base_url, subscriber_key)

    def click_tracker(self, subscriber_key: str) -> Callable[[str, str, str], str] | None:
        """With CLICK_TRACKING on: what turns a link of this subscription's email into one
        that counts its click (naming the subscription only with `per-person`)."""
        mode = self.settings.click_tracking
        if mode == ClickTracking.OFF:
            return None
        key = subscriber_key if mode == ClickTracking.PER_PERSON else None
        base_url = self.settings.base_url
        signer = self.signer

        def track(template: str, link: str, url: str) -> str:
            token = signer.sign_click(TrackedLink(template, link, url, key))
            return f"{base_url}/c/{token}"

        return track

    def close(self) -> None:
        """Close the database pool and the Redis connection, if they were opened."""
        if "engine" in self.__dict__:
            self.engine.dispose()
        if "redis" in self.__dict__:
            self.redis.close()
        if "signing_threads" in self.__dict__:
            self.signing_threads.shutdown()

    def mailer(self) -> SmtpMailer:
        """A fresh SMTP mailer (one connection, reused for a batch)."""
        return SmtpMailer(self.settings.smtp, signer=self.dkim)
