"""Turning due emails into queued batches, and batches into sent, recorded emails.

Sending owns what can go wrong on the way out: the lease a batch holds, the
failure class of every answer (app/failures.py), the relay breaker (app/breaker.py)
and the global send rate (app/sendrate.py). Whatever goes wrong with one email
stays with that email; the batch goes on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr
from functools import lru_cache
from zoneinfo import ZoneInfo

from jinja2 import TemplateError
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job, JobStatus
from rq.results import Result
from rq.timeouts import JobTimeoutException
from sqlalchemy.exc import SQLAlchemyError

from app import drip, store, timing
from app.breaker import Gate
from app.db import session_scope
from app.dkim import DkimSigner
from app.emails import (
    EmailTemplateError,
    Recipient,
    build_message,
    envelope_address,
    render,
    wire_message,
)
from app.failures import FailureClass
from app.mailer import DeliveryFailure, SmtpMailer, Transaction, signing_failure
from app.services import Services

log = logging.getLogger(__name__)

SEND_BATCH_JOB = "worker.jobs.send_batch"
#: How long a finished job's record stays in Redis (the ledger is the real record).
JOB_RESULT_TTL = 3600
JOB_FAILURE_TTL = 7 * 24 * 3600
#: A batch job is stopped after this long; well inside the claim lease, so a
#: stopped job's subscriptions are not claimed again while it still runs.
JOB_TIMEOUT = 300
#: A batch hands back what it has not sent after this share of JOB_TIMEOUT and of
#: the lease (a slow SEND_RATE), so it ends well before either runs out.
BATCH_TIME_SHARE = 0.5
#: Job states in which a job with the same id will still run: queuing it again is a no-op.
#: Not STARTED: a job is queued again only once its claim lapsed, and a started job
#: renews its claim and ends within half a lease, so a started job whose claim lapsed
#: belongs to a worker that died (kill -9, out of memory) and will never finish.
_WILL_RUN = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
#: Recording a sent email keeps trying through a database outage for this share
#: of the claim lease, waiting from RECORD_FIRST_DELAY up to RECORD_MAX_DELAY seconds.
RECORD_TIME_SHARE = 0.5
RECORD_FIRST_DELAY = 0.1
RECORD_MAX_DELAY = 5.0
#: A tick claims up to this many subscriptions in one statement (whole batches):
#: each statement walks the due index from its start, past what was claimed before.
DISPATCH_ROWS = 20_000
#: Emails begun in the ledger in one transaction, then sent, then recorded in one.
SEND_CHUNK = 100
#: How long "this template is broken" is remembered, so it is logged once, not per email.
BROKEN_TEMPLATE_REPORT_TTL = 3600


@dataclass
class BatchReport:
    """What one batch did, counted by outcome."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: str, count: int = 1) -> None:
        """Count `count` subscribers with this outcome (nothing if `count` is 0)."""
        if count:
            self.counts[outcome] += count

    def as_dict(self) -> dict[str, int]:
        """The counts, for job results and logs."""
        return dict(self.counts)


def batch_job_id(claim: store.Claim) -> str:
    """The job id of a claim: the same whenever the same due work is claimed again.

    rq 3 accepts only letters, digits, `_` and `-` in job ids.
    """
    return f"send-{claim.key}"


def dispatch(services: Services, *, now: datetime, ids: list[int] | None = None) -> int:
    """Claim due subscriptions and enqueue them in batches; return how many were queued.

    `ids` limits the claim to those subscriptions (the web app uses it to send a
    confirmation at once). Claims whose job cannot be queued are given back, so
    the next tick tries again: Redis holds nothing the database cannot rebuild.
    A claim that lapsed while its job still waits in the queue is claimed again
    with the same job id, and the waiting job is not queued twice.
    """
    settings = services.settings
    queued = 0
    # A tick claims many batches in one statement and queues them in one round trip.
    batches = 1 if ids is not None else max(1, DISPATCH_ROWS // settings.batch_size)
    limit = settings.batch_size * batches
    while True:
        with session_scope(services.sessions) as session:
            claims = store.claim_due_batches(
                session,
                now=now,
                lease=settings.claim_lease,
                limit=limit,
                batch=settings.batch_size,
                statuses=drip.SENDABLE,
                ids=ids,
            )
        if not claims:
            return queued
        try:
            _enqueue(services, claims)
        except RedisError:
            with session_scope(services.sessions) as session:
                store.release_claims(session, [i for claim in claims for i in claim.ids])
            raise
        claimed = sum(len(claim.ids) for claim in claims)
        queued += claimed
        if ids is not None or claimed < limit:
            return queued


def _enqueue(services: Services, claims: list[store.Claim]) -> None:
    """Queue one batch job per claim, skipping those already queued to run (a lapse)."""
    queue = services.queue
    job_ids = [batch_job_id(claim) for claim in claims]
    existing = Job.fetch_many(job_ids, connection=services.redis)
    with services.redis.pipeline() as pipe:
        fresh = []
        for claim, job_id, job in zip(claims, job_ids, existing, strict=True):
            if job is not None:
                if job.get_status(refresh=False) in _WILL_RUN:
                    continue
                discard_job(job, pipe)
            fresh.append(
                Queue.prepare_data(
                    SEND_BATCH_JOB,
                    (claim.ids,),
                    job_id=job_id,
                    timeout=JOB_TIMEOUT,
                    result_ttl=JOB_RESULT_TTL,
                    failure_ttl=JOB_FAILURE_TTL,
                    description=f"send {len(claim.ids)} due emails",
                )
            )
        queue.enqueue_many(fresh, pipeline=pipe)
        pipe.execute()


def discard_job(job: Job, pipeline: Pipeline | None = None) -> None:
    """Delete a job that will not run (finished, failed, or its worker died), so its id can
    be queued again.

    rq 3 reads every execution record of the job to delete it, and raises ValueError when
    the record of a worker killed mid-job has expired already: the job's keys are then
    deleted directly (`Job.delete` took it out of its registries before it raised).
    """
    try:
        job.delete(pipeline=pipeline)
    except ValueError as error:
        log.info(
            "job %s: its killed worker's record is gone (%s); deleting its keys", job.id, error
        )
        connection = pipeline if pipeline is not None else job.connection
        connection.delete(
            job.key,
            job.dependents_key,
            job.dependencies_key,
            job.execution_registry.key,
            Result.get_key(job.id),  # type: ignore[no-untyped-call]
        )


def enqueue_once(
    services: Services, function: str, argument: object, *, job_id: str, description: str
) -> None:
    """Queue `function(argument)` as job `job_id`, unless that job is queued and will run."""
    queue = services.queue
    existing = queue.fetch_job(job_id)
    if existing is not None:
        if existing.get_status(refresh=False) in _WILL_RUN:
            return
        discard_job(existing)
    queue.enqueue(
        function,
        argument,
        job_id=job_id,
        job_timeout=JOB_TIMEOUT,
        result_ttl=JOB_RESULT_TTL,
        failure_ttl=JOB_FAILURE_TTL,
        description=description,
    )


def send_batch(services: Services, subscriber_ids: list[int]) -> BatchReport:
    """Send each listed subscription its due email, over SEND_CONNECTIONS SMTP connections.

    The batch's claims are renewed when it starts; a subscription whose claim
    lapsed before then is left alone (it may be queued elsewhere). Emails go in
    chunks: each chunk is begun in the ledger in one transaction before any of it
    is handed to the relay, and recorded as sent in one transaction after.

    Between the two, emails go in waves, one per connection (`_send_wave`): each
    email's ledger row is marked `handed_at` (one commit for the wave) once the
    relay has all of it but its final ".", and before that "." goes out. A worker
    killed at any moment therefore leaves each email in one of two states:
    unmarked, which the relay cannot have completed, and which is sent again (same
    Message-ID) once its lease lapses; or marked, which the relay had in full, and
    which then counts as sent and is never sent twice. Only a worker killed between
    the mark's commit and the "." itself (a few microseconds), or a relay that
    refused the email after the "." just as its worker died, can lose an email; no
    kill can duplicate one.
    """
    report = BatchReport()
    settings = services.settings
    with session_scope(services.sessions) as session:
        held = store.start_claims(
            session, subscriber_ids, now=services.clock(), lease=settings.claim_lease
        )
    report.add("lapsed", len(subscriber_ids) - len(held))
    budget = min(JOB_TIMEOUT, settings.claim_lease.total_seconds()) * BATCH_TIME_SHARE
    deadline = time.monotonic() + budget
    pending = list(held)
    with contextlib.ExitStack() as stack:
        # Each opens its connection on first use: a small batch opens only what it needs.
        mailers = [stack.enter_context(services.mailer()) for _ in range(_connections(services))]
        handover = stack.enter_context(store.Handover(services.engine))
        while pending:
            now = services.clock()
            gate = services.breaker.gate(now)
            if gate == Gate.WAIT or time.monotonic() > deadline:
                retry_at = services.breaker.state().until if gate == Gate.WAIT else None
                _hand_back(services, pending, retry_at)
                report.add("waiting", len(pending))
                break
            # A probe is one email: the relay is being tried again after an outage.
            size = 1 if gate == Gate.PROBE else SEND_CHUNK
            chunk, pending = pending[:size], pending[size:]
            try:
                stop = _send_chunk(
                    services, mailers, handover, chunk, now, report, probe=gate == Gate.PROBE
                )
            finally:
                # Its verdict (if any) is in; a probe with nothing to send reached none.
                if gate == Gate.PROBE:
                    services.breaker.end_probe()
            if stop is not None:
                _hand_back(services, pending, stop.retry_at)
                report.add("waiting", len(pending))
                break
    return report


#: Under SEND_RATE, a wave holds at most this many seconds of the rate's slots: the
#: emails started together wait for their slots in the middle of DATA, which relays
#: allow for minutes, not longer.
WAVE_SECONDS = 0.5


def _connections(services: Services) -> int:
    """How many SMTP connections a batch sends over at once (SEND_CONNECTIONS, fewer
    when SEND_RATE allows fewer emails in WAVE_SECONDS)."""
    connections = services.settings.send_connections
    rate = services.settings.send_rate
    if rate is not None:
        connections = min(connections, int(WAVE_SECONDS / rate.interval))
    return max(1, connections)


@dataclass(frozen=True)
class Outcome:
    """What happened to one email, and whether the rest of the batch must wait."""

    name: str
    stop: bool = False
    retry_at: datetime | None = None


def _send_chunk(
    services: Services,
    mailers: list[SmtpMailer],
    handover: store.Handover,
    subscriber_ids: list[int],
    now: datetime,
    report: BatchReport,
    *,
    probe: bool,
) -> Outcome | None:
    """Begin, send and record one chunk; return the outcome that stops the batch, if one did.

    Emails begun but not handed over when the batch stops are given back at once.
    What the relay accepted is recorded even when the batch stops on an error.
    """
    with session_scope(services.sessions) as session:
        planned = drip.begin_deliveries(
            session,
            subscriber_ids,
            policy=services.policy,
            keys=services.mailbox_keys,
            domain=services.sender.domain,
            now=now,
        )
    # Paused, ended, not due yet (backoff), sent, being sent elsewhere, lapsed,
    # or held back by the suppression list or the confirmation cap.
    report.add("skipped", len(subscriber_ids) - len(planned))
    accepted: list[int] = []
    width = len(mailers)
    rest = planned[width:]
    made: list[Made] | None = [_make(services, email, now) for email in planned[:width]]
    try:
        while made:
            upcoming, rest = rest[:width], rest[width:]
            outcomes, unsent, made = _send_wave(services, mailers, handover, made, upcoming, now)
            for email, outcome in outcomes:
                report.add(outcome.name)
                if outcome.name == "sent":
                    accepted.append(email.delivery_id)
                    if probe:
                        services.breaker.succeeded()
            stop = next((outcome for _, outcome in outcomes if outcome.stop), None)
            if stop is not None:
                rest = unsent + upcoming + rest
                with session_scope(services.sessions) as session:
                    drip.release_deliveries(session, [e.delivery_id for e in rest])
                    store.release_claims(
                        session, [e.subscriber_id for e in rest], retry_at=stop.retry_at
                    )
                report.add("waiting", len(rest))
                return stop
    finally:
        # Marked `handed_at`, these count as sent even if this fails for good.
        _record_sent(services, accepted, now)
    return None


@dataclass
class Made:
    """One email made ahead of its turn: its wire form, its DKIM signature (being made
    in a thread), or what went wrong making it."""

    email: drip.PlannedEmail
    wire: bytes = b""
    error: Exception | None = None
    #: The DKIM tags and the RSA signature being made (`DkimSigner.prepare`).
    tags: bytes = b""
    signature: Future[bytes] | None = None

    def message(self) -> bytes:
        """The signed wire form; raises what went wrong making it."""
        if self.error is not None:
            raise self.error
        if self.signature is None:
            return self.wire
        try:
            signature = self.signature.result()
        except (UnicodeError, ValueError) as error:
            raise signing_failure(error) from error
        return DkimSigner.assemble(self.tags, signature, self.wire)


def _make(services: Services, planned: drip.PlannedEmail, now: datetime) -> Made:
    """Render and assemble one email, and start its DKIM signature in a thread.

    Nothing here writes anywhere: a made email that the batch stops before may be
    dropped, and what went wrong is dealt with when the email's turn comes.
    """
    try:
        recipient = _recipient(services, planned, now)
        rendered = render(services.catalog.get(planned.template), services.sender, recipient)
        wire = wire_message(rendered, services.sender, recipient, now=now)
    except JobTimeoutException:
        raise  # the job's time is up (rq raises it anywhere): not this email's fault
    except Exception as error:  # dealt with in its turn (`_begin_one`)
        return Made(planned, error=error)
    dkim = services.dkim
    if dkim is None:
        return Made(planned, wire)
    try:
        tags, signed = dkim.prepare(wire)
    except (UnicodeError, ValueError) as error:
        return Made(planned, error=signing_failure(error))
    return Made(
        planned, wire, tags=tags, signature=services.signing_threads.submit(dkim.signature, signed)
    )


def _send_wave(
    services: Services,
    mailers: list[SmtpMailer],
    handover: store.Handover,
    wave: list[Made],
    upcoming: list[drip.PlannedEmail],
    now: datetime,
) -> tuple[list[tuple[drip.PlannedEmail, Outcome]], list[drip.PlannedEmail], list[Made] | None]:
    """Send up to one email per connection at once; return each one's outcome, the
    emails not started because an outcome stopped the wave, and the `upcoming` emails
    made for the next wave (None if the wave stopped).

    Each email goes to the relay but for its final "."; one commit marks them all
    `handed_at`; then each gets its "." and its answer. A database that cannot take
    the mark stops the batch (the error propagates): the started emails are
    abandoned, so the relay drops them, and they wait for their lease.

    Each step goes out on every connection before any answer is read (envelopes,
    then messages, then final dots), so the relay's round trips overlap. The next
    wave is made before the mark, so its DKIM signatures are made in threads while
    this wave waits for the database and the relay; nothing runs between a mark and
    its final dots.
    """
    outcomes: list[tuple[drip.PlannedEmail, Outcome]] = []
    begun: list[tuple[drip.PlannedEmail, SmtpMailer, Transaction]] = []
    unsent: list[drip.PlannedEmail] = []
    for index, (made, mailer) in enumerate(zip(wave, mailers, strict=False)):
        outcome = _begin_one(services, mailer, made, now)
        if isinstance(outcome, Transaction):
            begun.append((made.email, mailer, outcome))
            continue
        outcomes.append((made.email, outcome))
        if outcome.stop:
            unsent = [later.email for later in wave[index + 1 :]]
            break
    started: list[tuple[drip.PlannedEmail, SmtpMailer, Transaction]] = []
    for index, (email, mailer, transaction) in enumerate(begun):
        outcome = _proceed_one(services, mailer, email, transaction, now)
        if isinstance(outcome, Transaction):
            started.append((email, mailer, outcome))
            continue
        outcomes.append((email, outcome))
        if outcome.stop:
            # The envelopes after it went out, unanswered: drop them unsent.
            for _, later_mailer, _ in begun[index + 1 :]:
                later_mailer.abandon()
            unsent = [later for later, _, _ in begun[index + 1 :]] + unsent
            break
    stopped = any(outcome.stop for _, outcome in outcomes)
    following = None if stopped else [_make(services, email, now) for email in upcoming]
    # SEND_RATE governs when each email is completed (its "." is what the relay
    # counts). A wait never falls between a mark and its ".": the emails whose slot
    # has come are marked and completed together first.
    group: list[tuple[drip.PlannedEmail, SmtpMailer, Transaction]] = []
    for index, item in enumerate(started):
        delay = services.send_rate.reserve() if services.send_rate is not None else 0.0
        if delay > 0:
            _complete(services, handover, group, started[index:], outcomes, now)
            group = []
            time.sleep(delay)
        group.append(item)
    _complete(services, handover, group, [], outcomes, now)
    return outcomes, unsent, following


def _complete(
    services: Services,
    handover: store.Handover,
    group: list[tuple[drip.PlannedEmail, SmtpMailer, Transaction]],
    waiting: list[tuple[drip.PlannedEmail, SmtpMailer, Transaction]],
    outcomes: list[tuple[drip.PlannedEmail, Outcome]],
    now: datetime,
) -> None:
    """Mark started emails `handed_at` in one commit, then send each one's final "."
    and add its outcome. If the mark cannot be written, the group and the `waiting`
    rest of its wave are abandoned (the relay drops them) and the error propagates."""
    if not group:
        return
    try:
        marked = handover.mark([email.delivery_id for email, _, _ in group], now)
    except BaseException:
        for _, mailer, _ in group + waiting:
            mailer.abandon()
        raise
    ended: list[tuple[drip.PlannedEmail, SmtpMailer, Transaction]] = []
    for email, mailer, transaction in group:
        if email.delivery_id not in marked:
            # Erased, or taken over after its lease lapsed, while the batch ran.
            mailer.abandon()
            outcomes.append((email, Outcome("skipped")))
            continue
        try:
            mailer.send_end(transaction)
        except DeliveryFailure as failure:
            outcomes.append((email, _failed(services, email, failure, now)))
            continue
        ended.append((email, mailer, transaction))
    for email, mailer, transaction in ended:
        try:
            mailer.read_end(transaction)
        except DeliveryFailure as failure:
            outcomes.append((email, _failed(services, email, failure, now)))
            continue
        outcomes.append((email, Outcome("sent")))


def _begin_one(
    services: Services, mailer: SmtpMailer, made: Made, now: datetime
) -> Transaction | Outcome:
    """Send a made email's envelope (its transaction, to go on with `_proceed_one`);
    whatever went wrong making it, or goes wrong now, stays with this email (its outcome)."""
    planned = made.email
    try:
        message = made.message()
        to = envelope_address(planned.email)
        envelope_from = services.return_path(planned.message_id) or _from_address(services)
        return mailer.begin(message, to=to, envelope_from=envelope_from)
    except (TemplateError, EmailTemplateError) as error:
        # Our template or settings: never the subscriber's fault. The step waits
        # (without counting) until the template is fixed; reported once per template.
        _report_broken_template(services, planned.template, error)
        _defer(
            services,
            planned,
            f"template {planned.template}: {error!r}",
            now,
            counts=False,
            failure_class=FailureClass.OURS,
        )
        return Outcome("deferred")
    except DeliveryFailure as failure:
        return _failed(services, planned, failure, now)
    except JobTimeoutException:
        raise  # the job's time is up: the email waits for its lease, never poison
    except Exception as error:  # one poison email must not stop the batch
        return _poison(services, planned, error, now)


def _proceed_one(
    services: Services,
    mailer: SmtpMailer,
    planned: drip.PlannedEmail,
    transaction: Transaction,
    now: datetime,
) -> Transaction | Outcome:
    """Hand a begun email to the relay but for its final "." (its transaction), or its
    outcome if the relay refused it."""
    try:
        return mailer.proceed(transaction)
    except DeliveryFailure as failure:
        return _failed(services, planned, failure, now)
    except JobTimeoutException:
        raise  # the job's time is up: the email waits for its lease, never poison
    except Exception as error:  # one poison email must not stop the batch
        return _poison(services, planned, error, now)


def _from_address(services: Services) -> str:
    """The From address, the envelope sender when bounces need no return path of their own."""
    return _address_of(services.sender.mail_from)


@lru_cache(maxsize=16)
def _address_of(mailbox: str) -> str:
    return parseaddr(mailbox)[1]


def _recipient(services: Services, planned: drip.PlannedEmail, now: datetime) -> Recipient:
    return Recipient(
        email=planned.email,
        first_name=planned.first_name,
        links=services.links(planned.subscriber_key),
        message_id=planned.message_id,
        next_step_when=next_step_when(planned, now),
        finished=planned.finished,
        track=services.click_tracker(planned.subscriber_key),
    )


def send_notice(services: Services, subscriber_id: int, number: int) -> str:
    """Send notice `number` to the subscription's address, once; return what happened.

    A notice is a courtesy: it is not retried, and it never moves the course's
    schedule. A recipient's permanent failure bounces the address, as any email's
    does; a sender or relay failure informs the breaker and the send rate.
    """
    now = services.clock()
    if services.breaker.gate(now) == Gate.WAIT:
        return "waiting"
    with session_scope(services.sessions) as session:
        planned = drip.begin_notice(
            session,
            subscriber_id,
            number,
            policy=services.policy,
            keys=services.mailbox_keys,
            domain=services.sender.domain,
            now=now,
        )
    if planned is None:
        return "skipped"
    recipient = _recipient(services, planned, now)
    error: str | None = None
    failure_class: FailureClass | None = None
    try:
        rendered = render(services.catalog.get(planned.template), services.sender, recipient)
        message = build_message(rendered, services.sender, recipient, now=now)
        if services.send_rate is not None:
            services.send_rate.wait()
        with services.mailer() as mailer:
            mailer.send(
                message,
                to=envelope_address(planned.email),
                envelope_from=services.return_path(planned.message_id),
            )
    except DeliveryFailure as failure:
        error, failure_class = str(failure), failure.cls
        if failure_class == FailureClass.RECIPIENT_PERMANENT:
            _bounce(services, planned, error, now)
            return "bounced"
        if failure_class == FailureClass.THROTTLED and services.send_rate is not None:
            services.send_rate.slow_down(error)
        elif failure_class not in (FailureClass.RECIPIENT_TEMPORARY, FailureClass.OURS):
            services.breaker.failed(now, f"{error} ({failure.rule.why})")
    except Exception as unexpected:  # a notice that cannot be built or sent is dropped
        error, failure_class = f"cannot send: {unexpected!r}", FailureClass.OURS
        log.error("cannot send notice %s: %r", planned.delivery_id, unexpected)
    with session_scope(services.sessions) as session:
        drip.end_notice(
            session, planned.delivery_id, now=now, error=error, failure_class=failure_class
        )
    return "sent" if error is None else "failed"


def _bounce(services: Services, planned: drip.PlannedEmail, error: str, now: datetime) -> None:
    """The relay refused the recipient for good: fail the email, bounce the address."""
    with session_scope(services.sessions) as session:
        drip.fail_delivery(
            session,
            planned.delivery_id,
            error=error,
            now=now,
            bounce=True,
            keys=services.mailbox_keys,
            failure_class=FailureClass.RECIPIENT_PERMANENT,
        )


def _failed(
    services: Services, planned: drip.PlannedEmail, failure: DeliveryFailure, now: datetime
) -> Outcome:
    """Act on a classified SMTP failure of one email."""
    error = str(failure)
    cls = failure.cls
    if cls == FailureClass.RECIPIENT_PERMANENT:
        _bounce(services, planned, error, now)
        log.info("subscriber %s bounced: %s", planned.subscriber_id, error)
        return Outcome("bounced")
    if cls in (FailureClass.RECIPIENT_TEMPORARY, FailureClass.OURS):
        retry_at = _defer(
            services, planned, error, now, counts=True, bounces=cls.bounces, failure_class=cls
        )
        if retry_at is not None:
            return Outcome("deferred")
        return Outcome("bounced" if cls.bounces else "failed")
    if cls == FailureClass.THROTTLED:
        if services.send_rate is not None:
            services.send_rate.slow_down(error)
        else:
            log.warning("relay is throttling us and SEND_RATE is unset, pausing: %s", error)
        retry_at = now + drip.RETRY_DELAYS[0]
        _defer(services, planned, error, now, counts=False, retry_at=retry_at, failure_class=cls)
        return Outcome("deferred", stop=True, retry_at=retry_at)
    # The sender, the message's policy or the relay: stop everyone, bounce nobody.
    until = services.breaker.failed(now, f"{error} ({failure.rule.why})")
    _defer(services, planned, error, now, counts=False, retry_at=until, failure_class=cls)
    return Outcome("deferred", stop=True, retry_at=until)


def _poison(
    services: Services, planned: drip.PlannedEmail, error: Exception, now: datetime
) -> Outcome:
    """An email we could not build or encode: counted towards its cap, never a bounce."""
    log.error("cannot send delivery %s (%s): %r", planned.delivery_id, planned.template, error)
    retry_at = _defer(
        services,
        planned,
        f"cannot send: {error!r}",
        now,
        counts=True,
        failure_class=FailureClass.OURS,
    )
    return Outcome("deferred" if retry_at is not None else "failed")


def _report_broken_template(services: Services, template: str, error: Exception) -> None:
    key = f"{services.settings.queue_name}:broken-template:{template}"
    try:
        first = services.redis.set(key, "1", nx=True, ex=BROKEN_TEMPLATE_REPORT_TTL)
    except RedisError:
        first = True
    if first:
        log.error("email template %s cannot be rendered; its emails wait: %r", template, error)


def _hand_back(services: Services, ids: list[int], retry_at: datetime | None) -> None:
    """Give the batch's unsent claims back; with `retry_at` they wait until then."""
    with session_scope(services.sessions) as session:
        store.release_claims(session, ids, retry_at=retry_at)


def next_step_when(planned: drip.PlannedEmail, now: datetime) -> str:
    """When the step after this email arrives, in the subscriber's words and zone."""
    if planned.next_step_at is None:
        return "soon"
    return timing.describe(planned.next_step_at, now=now, zone=ZoneInfo(planned.time_zone))


def _record_sent(services: Services, delivery_ids: list[int], now: datetime) -> None:
    """Mark these emails sent in one transaction, trying again while the database is away.

    The relay already has them, and their rows are marked `handed_at`: if this
    fails for good, they count as sent once their lease lapses (never sent twice),
    but their subscriptions move on only then. Recording keeps trying for
    RECORD_TIME_SHARE of the lease, so a database restart or failover in that time
    delays nothing.
    """
    if not delivery_ids:
        return
    budget = services.settings.claim_lease.total_seconds() * RECORD_TIME_SHARE
    deadline = time.monotonic() + budget
    delay = RECORD_FIRST_DELAY
    while True:
        try:
            with session_scope(services.sessions) as session:
                drip.finish_deliveries(session, delivery_ids, policy=services.policy, now=now)
            return
        except SQLAlchemyError as error:
            if time.monotonic() + delay > deadline:
                # The ledger rows stay `sending`, marked `handed_at`: when their lease
                # lapses the next batch counts them as sent.
                raise
            log.warning(
                "recording %d deliveries as sent failed, retrying in %.1fs: %s",
                len(delivery_ids),
                delay,
                error.__class__.__name__,
            )
        time.sleep(delay)
        delay = min(delay * 2, RECORD_MAX_DELAY)


def _defer(
    services: Services,
    planned: drip.PlannedEmail,
    error: str,
    now: datetime,
    *,
    counts: bool,
    bounces: bool = False,
    retry_at: datetime | None = None,
    failure_class: FailureClass,
) -> datetime | None:
    with session_scope(services.sessions) as session:
        retry = drip.defer_delivery(
            session,
            planned.delivery_id,
            error=error,
            now=now,
            counts=counts,
            bounces=bounces,
            retry_at=retry_at,
            keys=services.mailbox_keys,
            failure_class=failure_class,
        )
    if retry is None:
        log.warning(
            "delivery %s given up after %d tries: %s", planned.delivery_id, drip.MAX_ATTEMPTS, error
        )
    else:
        log.info("delivery %s deferred until %s: %s", planned.delivery_id, retry, error)
    return retry
