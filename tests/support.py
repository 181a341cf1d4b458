"""Test helpers: a hand-moved clock, an SMTP sink, a real RQ worker run, form tokens."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, TypeVar

from aiosmtpd.controller import Controller
from flask.testing import FlaskClient
from rq import SimpleWorker
from rq.registry import FailedJobRegistry
from sqlalchemy.orm import Session

from app import drip, store
from app.config import DEFAULT_EMAILS_DIR
from app.course import load_course
from app.db import session_scope
from app.models import Subscriber, SubscriberStatus
from app.services import Services

#: The steps of the course the tests send (the course file in EMAILS_DIR's default).
TOTAL_STEPS = load_course(DEFAULT_EMAILS_DIR).step_count


def status_of(services: Services, subscriber_id: int) -> SubscriberStatus:
    """A subscription's status as the database holds it now."""
    with session_scope(services.sessions) as session:
        return session.get_one(Subscriber, subscriber_id).status


class FakeClock:
    """A clock the tests move by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


@dataclass
class Received:
    """One message the SMTP server accepted."""

    envelope_from: str
    envelope_to: list[str]
    message: EmailMessage
    raw: bytes

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content())

    @property
    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html",))
        assert part is not None
        return str(part.get_content())

    def link(self, path: str) -> str:
        """The first absolute link in the text part whose path starts with `path`."""
        match = re.search(rf"https?://[^\s()]+/{path}/[^\s()]+", self.text)
        assert match, f"no /{path}/ link in email {self.subject!r}"
        return match.group(0)


@dataclass
class SmtpSink:
    """A real SMTP server's handler: keeps messages, answers chosen codes as told."""

    messages: list[Received] = field(default_factory=list)
    #: recipient address -> (code, text) to answer RCPT TO with.
    refuse: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: stage ("mail", "rcpt", "data") -> the full answer to give there to everyone,
    #: like "554 5.7.1 Message rejected".
    answers: dict[str, str] = field(default_factory=dict)
    #: When each accepted message arrived (time.monotonic()).
    arrivals: list[float] = field(default_factory=list)
    connections: int = 0
    #: Seconds to wait before accepting each message (a slow relay).
    delay: float = 0.0
    #: Offer PIPELINING (RFC 2920) in the EHLO answer, as Postfix and most relays do
    #: (aiosmtpd reads pipelined commands one by one either way).
    pipelining: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if "mail" in self.answers:
            return self.answers["mail"]
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if "rcpt" in self.answers:
            return self.answers["rcpt"]
        if address in self.refuse:
            code, text = self.refuse[address]
            return f"{code} {text}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if "data" in self.answers:
            return self.answers["data"]
        message = BytesParser(policy=policy.default).parsebytes(envelope.content)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), message, envelope.content)
            )
            self.arrivals.append(time.monotonic())
        return "250 Message accepted"

    def to(self, address: str) -> list[Received]:
        """Messages received for one address, in order."""
        return [m for m in self.messages if address in m.envelope_to]


Handler = TypeVar("Handler")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(handler: Handler) -> Iterator[Handler]:
    """Run an SMTP handler (an SmtpSink) on a real aiosmtpd server on a free local port,
    named by the handler's `port` attribute while it runs."""
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    setattr(handler, "port", controller.port)  # noqa: B010 (any handler class)
    try:
        yield handler
    finally:
        controller.stop()


def run_worker(services: Services) -> None:
    """Run a real RQ worker until the queue is empty; fail on any failed job."""
    SimpleWorker([services.queue], connection=services.redis).work(burst=True)
    failed = FailedJobRegistry(queue=services.queue)
    job_ids = failed.get_job_ids()
    if job_ids:
        job = services.queue.fetch_job(job_ids[0])
        reason = job.latest_result().exc_string if job and job.latest_result() else "?"
        raise AssertionError(f"{len(job_ids)} job(s) failed: {reason}")


def csrf_token(client: FlaskClient) -> str:
    """The CSRF token of the subscribe form, as a browser would read it."""
    page = client.get("/").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match
    return match.group(1)


def sign_up(
    session: Session, services: Services, email: str, now: datetime
) -> drip.SubscribeResult:
    return drip.subscribe(
        session,
        email,
        first_name="",
        source="api",
        wording="test wording",
        ip="192.0.2.1",
        user_agent="pytest",
        policy=services.policy,
        now=now,
    )


def active_subscriber(services: Services, email: str, now: datetime) -> int:
    """A confirmed subscription whose step 1 is due at `now`."""
    with session_scope(services.sessions) as session:
        result = sign_up(session, services, email, now)
        subscriber = session.get_one(Subscriber, result.subscriber_id)
        assert drip.confirm(
            session,
            subscriber,
            ip=None,
            user_agent=None,
            now=now,
            total_steps=services.policy.total_steps,
        )
        return subscriber.id


def claim(services: Services, ids: list[int], now: datetime) -> list[int]:
    """Claim these subscriptions' due emails, as the tick does before queuing a batch."""
    with session_scope(services.sessions) as session:
        taken = store.claim_due(
            session,
            now=now,
            lease=services.settings.claim_lease,
            limit=len(ids),
            statuses=drip.SENDABLE,
            ids=ids,
        )
    return [] if taken is None else taken.ids


def begin(services: Services, subscriber_id: int, now: datetime) -> drip.PlannedEmail | None:
    """Claim the subscription and ask the ledger to send its due email, as a worker does."""
    claim(services, [subscriber_id], now)
    with session_scope(services.sessions) as session:
        return drip.begin_delivery(
            session,
            subscriber_id,
            policy=services.policy,
            keys=services.mailbox_keys,
            domain="onward.test",
            now=now,
        )


def click_through(browser: Any, element: Any, timeout: float = 20) -> None:
    """Click a link or button that loads a new page, and wait until that page has loaded.

    A click returns as soon as the browser has the event; on a busy machine the old
    page is still there for a moment, and a look at it would see the wrong page.
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old_page = browser.find_element(By.TAG_NAME, "html")

    def gone(_driver: Any) -> bool:
        try:
            old_page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            # chromedriver says this, not "stale", when the page goes while it looks.
            if "does not belong to the document" in str(error):
                return True
            raise
        return False

    element.click()
    wait = WebDriverWait(browser, timeout)
    wait.until(gone)
    wait.until(lambda driver: driver.execute_script("return document.readyState") == "complete")
