"""`make soak`: send a whole course to a list while the machinery around it fails.

Starts its own PostgreSQL (initdb/pg_ctl on a free port), its own Redis (embedded)
and a real SMTP server in its own process (bench/soak_smtp.py), signs up and
confirms the subscribers, then runs the sending processes as production runs
them (`python -m worker.schedule`, `python -m worker`, ONWARD_ENV=production).
While they send, it kill -9s a random worker every ~10 s (and starts a
replacement), flushes Redis once, stops the SMTP server, makes it answer 421,
makes it refuse our sender with 554 5.7.1 after DATA, and restarts PostgreSQL.

The report counts at the SMTP server, by Message-ID: emails expected, sent, lost,
duplicated; the subscriptions bounced by mistake; the peak send rate over a
sliding 1 s window against SEND_RATE; and the recovery time after each fault.
It exits 1 if anything was lost, duplicated or bounced, or if the run did not
finish in its time bound; every process it started is stopped on the way out,
Ctrl-C included.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from redis import Redis
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from app.config import DEFAULT_EMAILS_DIR, ConfigError, Settings, parse_rate
from app.course import load_course
from app.db import make_engine, migrate, session_scope, utcnow
from app.dev.embedded_redis import EmbeddedRedis
from app.drip import confirm, subscribe
from app.models import Delivery, Subscriber, SubscriberStatus
from app.services import Services
from bench.soak_postgres import PostgresInstance, find_bindir
from bench.soak_report import (
    Accepted,
    Refused,
    parse_record,
    peak_rate,
    recovery,
    sent_by_the_killed,
    step_delays,
    tally,
)
from bench.soak_smtp import ACCEPT, REFUSE_SENDER, THROTTLE

ROOT = Path(__file__).resolve().parent.parent
#: The steps of the course the processes send (the course file in EMAILS_DIR's default).
TOTAL_STEPS = load_course(DEFAULT_EMAILS_DIR).step_count
#: A duplicate first accepted this soon before its sender was killed is put down to the kill.
KILL_WINDOW = 5.0
#: The longest wait for sending to recover from a fault before the next one starts anyway.
RECOVERY_WAIT = 300.0
DATABASE = "onward_soak"
#: Environment variables of the caller's own Onward setup (every setting in
#: app/config.py), kept from the processes: the soak sets its own.
PRIVATE_PREFIXES = (
    "ONWARD_", "DKIM_", "SMTP_", "BASE_URL", "BATCH_SIZE", "CHECK_DELIVERABILITY",
    "CLAIM_LEASE", "DATABASE_URL", "DEV_PAGES", "EMAILS_DIR", "INSTANCE_DIR", "LOG_FORMAT",
    "MAIL_FROM", "OUTBOX_DIR", "POSTAL_ADDRESS", "QUEUE_NAME", "REDIS_URL", "SECRET_KEY",
    "SEND_CONNECTIONS", "SEND_RATE", "STEP_INTERVAL", "TICK_INTERVAL", "TRUSTED_PROXIES",
)  # fmt: skip


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop everything and report what was seen so far."""


@dataclass(frozen=True)
class Plan:
    """What one soak does: the list, the processes, the faults and their timing."""

    subscribers: int
    steps: int
    workers: int
    schedulers: int
    send_rate: str
    step_interval: float
    tick_interval: float
    batch_size: int
    lease: float
    kill_every: float
    first_fault: float
    smtp_down: float
    throttle: float
    refuse_sender: float
    postgres_down: float
    gap: float
    timeout: float
    settle: float
    seed: int

    @property
    def expected(self) -> int:
        """Emails the list is owed."""
        return self.subscribers * self.steps

    def faults(self) -> list[tuple[str, float]]:
        """(name, duration) of each one-off fault, in the order they happen.

        The first begins `first_fault` seconds after the first email arrives; each
        next one `gap` seconds after sending recovered from the one before, so
        every fault meets a sender that is running (a fault during another's
        cool-down would test nothing) and each recovery is measured on its own.
        A fault given no duration is left out (the Redis flush has none: it is
        always in).
        """
        timed = [
            ("refuse-sender", self.refuse_sender),
            ("throttle", self.throttle),
            ("smtp-down", self.smtp_down),
            ("postgres", self.postgres_down),
        ]
        return [("redis", 0.0), *((name, d) for name, d in timed if d > 0)]

    def least_time(self) -> float:
        """The shortest run the faults allow, seconds after the first email arrives."""
        faults = self.faults()
        return self.first_fault + sum(d for _n, d in faults) + self.gap * (len(faults) - 1)


FULL = Plan(
    subscribers=2000, steps=TOTAL_STEPS, workers=4, schedulers=2, send_rate="50/s",
    step_interval=30, tick_interval=1, batch_size=50, lease=30, kill_every=10,
    first_fault=20, smtp_down=60, throttle=30, refuse_sender=30, postgres_down=10,
    gap=20, timeout=3600, settle=10, seed=7,
)  # fmt: skip
#: CI's form: a smaller list, shorter faults, and no SMTP outage (the refusal of
#: our sender already opens the relay breaker, for its 30 s cool-down).
SHORT = Plan(
    subscribers=100, steps=5, workers=4, schedulers=2, send_rate="40/s",
    step_interval=3, tick_interval=1, batch_size=25, lease=15, kill_every=10,
    first_fault=5, smtp_down=0, throttle=5, refuse_sender=5, postgres_down=3,
    gap=5, timeout=240, settle=5, seed=7,
)  # fmt: skip


@dataclass
class Fault:
    """A fault as it happened: when it began and ended, and how much was still due."""

    name: str
    began: float
    ended: float
    still_due: int
    #: For a killed worker: the SMTP client ports it had open.
    ports: frozenset[int] = frozenset()


@dataclass
class Record:
    """Everything the soak saw: receptions, refusals, faults, process exits."""

    accepted: list[Accepted] = field(default_factory=list)
    refusals: list[Refused] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    kills: list[Fault] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)
    by_recipient: dict[str, set[str]] = field(default_factory=dict)
    received: int = 0

    def add(self, accepted: Accepted, owed: int) -> None:
        self.accepted.append(accepted)
        seen = self.by_recipient.setdefault(accepted.recipient, set())
        if accepted.message_id not in seen and len(seen) < owed:
            self.received += 1
        seen.add(accepted.message_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Processes:
    """The sending processes and the SMTP server, each logging to its own file."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.commands: dict[str, list[str]] = {}
        self._files: list[IO[bytes]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        self._files.append(log)
        # A session of its own: a Ctrl-C in the terminal reaches the soak, which
        # stops everything in order, not each process on its own.
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        self.running[name] = process
        self.commands[name] = command
        return process

    def stop(self, name: str, timeout: float = 30) -> None:
        process = self.running.pop(name)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        process.kill()
        process.wait()

    def restart_exited(self) -> list[str]:
        """Start again, as a supervisor would, any process that exited; say which and how."""
        exited = []
        for name, process in list(self.running.items()):
            code = process.poll()
            if code is not None:
                exited.append(f"{name} exited with {code}")
                self.start(name, self.commands[name])
        return exited

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 30
        for process in self.running.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running.clear()
        for log in self._files:
            log.close()


class SmtpServer:
    """The soak's SMTP server process, which can be stopped and started on its port."""

    def __init__(self, processes: Processes, folder: Path) -> None:
        self.processes = processes
        self.port = free_port()
        self.control = folder / "smtp-mode"
        self.record = folder / "smtp-record.jsonl"
        self.control.write_text(ACCEPT)
        self.record.touch()

    def start(self) -> None:
        command = [
            sys.executable, "-m", "bench.soak_smtp", "--port", str(self.port),
            "--control", str(self.control), "--record", str(self.record),
        ]  # fmt: skip
        self.processes.start("smtp", command)
        wait_until(lambda: listening(self.port), 20, "the SMTP server to listen")

    def stop(self) -> None:
        self.processes.stop("smtp")

    def mode(self, mode: str) -> None:
        self.control.write_text(mode)


def client_ports(pid: int, server_port: int) -> frozenset[int]:
    """The local ports of process `pid`'s TCP connections to 127.0.0.1:`server_port`.

    Read from /proc (Linux): the process's socket inodes, matched in its network
    namespace's TCP table. Empty where /proc cannot be read.
    """
    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return frozenset()
    ports = set()
    for line in lines:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.split(":")[1], 16) == server_port:
            ports.add(int(local.split(":")[1], 16))
    return frozenset(ports)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


class RecordReader:
    """Reads the SMTP server's record as it grows (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""

    def read(self, record: Record, owed: int) -> None:
        with self.path.open(encoding="utf-8") as stream:
            stream.seek(self.offset)
            chunk = stream.read()
            self.offset = stream.tell()
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            parsed = parse_record(line)
            if isinstance(parsed, Accepted):
                record.add(parsed, owed)
            else:
                record.refusals.append(parsed)


def prepare_database(url: str, plan: Plan) -> dict[str, int]:
    """Create the soak's database, migrate it, sign up and confirm the list.

    Returns recipient -> emails owed. With fewer steps than the course has, each
    subscription starts that many steps before the end.
    """
    admin = make_engine(url)
    with admin.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            text(f"CREATE DATABASE {DATABASE}")
        )
    admin.dispose()
    settings = Settings(database_url=url.rsplit("/", 1)[0] + f"/{DATABASE}")
    services = Services(settings)
    try:
        migrate(services.engine)
        now = utcnow()
        emails = [f"soak{n}@example.com" for n in range(plan.subscribers)]
        for start in range(0, len(emails), 200):
            with session_scope(services.sessions) as session:
                for email in emails[start : start + 200]:
                    result = subscribe(
                        session, email, first_name="", source="soak", wording="soak",
                        ip="192.0.2.1", user_agent="soak", policy=services.policy, now=now,
                    )  # fmt: skip
                    subscriber = session.get_one(Subscriber, result.subscriber_id)
                    confirm(
                        session, subscriber, ip=None, user_agent=None, now=now,
                        total_steps=services.policy.total_steps,
                    )  # fmt: skip
        if plan.steps < TOTAL_STEPS:
            with session_scope(services.sessions) as session:
                session.execute(update(Subscriber).values(next_step=TOTAL_STEPS - plan.steps + 1))
    finally:
        services.close()
    return dict.fromkeys(emails, plan.steps)


def ledger_summary(url: str) -> tuple[int, list[str]]:
    """Subscriptions bounced, and lines describing the ledger, read from the database."""
    engine = make_engine(url)
    lines = []
    try:
        with engine.connect() as connection:
            statuses = dict(
                connection.execute(
                    select(Subscriber.status, func.count()).group_by(Subscriber.status)
                ).all()
            )
            deliveries = dict(
                connection.execute(
                    select(Delivery.status, func.count()).group_by(Delivery.status)
                ).all()
            )
            errors = connection.execute(
                select(Subscriber.last_error, func.count())
                .where(Subscriber.status != SubscriberStatus.COMPLETED)
                .where(Subscriber.last_error.is_not(None))
                .group_by(Subscriber.last_error)
                .order_by(func.count().desc())
                .limit(3)
            ).all()
            claimed = connection.scalar(
                select(func.count()).where(
                    Subscriber.claimed_until > utcnow(),
                    Subscriber.status == SubscriberStatus.ACTIVE,
                )
            )
    finally:
        engine.dispose()
    lines.append("subscriptions: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    lines.append("ledger rows:   " + ", ".join(f"{k} {v}" for k, v in sorted(deliveries.items())))
    if claimed:
        lines.append(f"active subscriptions claimed right now: {claimed}")
    lines.extend(f"last error x{count}: {str(error)[:160]}" for error, count in errors)
    return int(statuses.get(SubscriberStatus.BOUNCED, 0)), lines


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into Interrupted for the duration."""

    def _interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise Interrupted

    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Soak:
    """One run: the servers, the processes, the faults, and what was seen."""

    def __init__(self, plan: Plan, folder: Path, pg_folder: Path, bindir: Path) -> None:
        self.plan = plan
        self.folder = folder
        self.random = random.Random(plan.seed)
        self.postgres = PostgresInstance(pg_folder, free_port(), bindir)
        self.redis_server: EmbeddedRedis | None = None
        self.processes: Processes | None = None
        self.record = Record()
        self.due: dict[str, int] = {}
        self.database_url = ""
        self.started = 0.0
        self.sending_since = 0.0
        self.smtp_port = 0
        self.finished: float | None = None
        self.worker_count = 0

    def setup(self) -> dict[str, str]:
        """Start PostgreSQL, Redis and the SMTP server; prepare the list; return the env."""
        plan = self.plan
        print(f"starting PostgreSQL on 127.0.0.1:{self.postgres.port} ...", flush=True)
        self.postgres.create()
        self.postgres.start()
        print(f"signing up and confirming {plan.subscribers} subscribers ...", flush=True)
        self.due = prepare_database(self.postgres.url, plan)
        self.database_url = self.postgres.url.rsplit("/", 1)[0] + f"/{DATABASE}"
        redis = EmbeddedRedis(self.folder / "redis")
        self.redis_server = redis
        env = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_PREFIXES)}
        env.update(
            ONWARD_ENV="production",
            DATABASE_URL=self.database_url,
            REDIS_URL=redis.url,
            QUEUE_NAME="soak",
            SECRET_KEY=secrets.token_urlsafe(48),
            BASE_URL="https://course.example.com",
            STEP_INTERVAL=f"{plan.step_interval}s",
            TICK_INTERVAL=f"{plan.tick_interval}s",
            BATCH_SIZE=str(plan.batch_size),
            CLAIM_LEASE=f"{plan.lease}s",
            SEND_RATE=plan.send_rate,
            LOG_FORMAT="text",
            PYTHONUNBUFFERED="1",
        )
        return env

    def run(self) -> None:
        """Start the processes, inject the faults, and wait for the list to be served."""
        plan = self.plan
        env = self.setup()
        self.processes = processes = Processes(env, self.folder)
        smtp = SmtpServer(processes, self.folder)
        self.smtp_port = smtp.port
        env["SMTP_URL"] = f"smtp://127.0.0.1:{smtp.port}?timeout=10"
        smtp.start()
        reader = RecordReader(smtp.record)
        for n in range(plan.schedulers):
            processes.start(f"scheduler-{n}", [sys.executable, "-m", "worker.schedule"])
        for _ in range(plan.workers):
            self._start_worker()
        self.started = time.time()
        print(
            f"sending {plan.expected} emails: {plan.workers} workers, {plan.schedulers} "
            f"schedulers, SEND_RATE={plan.send_rate}, STEP_INTERVAL={plan.step_interval}s",
            flush=True,
        )
        self._wait_for_first_email(reader)
        pending = list(plan.faults())
        next_fault: float | None = self.sending_since + plan.first_fault
        last_fault: Fault | None = None
        next_kill = self.sending_since + self._jitter()
        next_progress = time.time() + 10
        complete_at: float | None = None
        while True:
            now = time.time()
            elapsed = now - self.started
            reader.read(self.record, plan.steps)
            self.record.exits.extend(processes.restart_exited())
            if self.record.received >= plan.expected and not pending:
                complete_at = complete_at or now
                if now - complete_at >= plan.settle:
                    self.finished = complete_at
                    return
            if elapsed > plan.timeout:
                return
            if next_fault is None and last_fault is not None and self._recovered(last_fault, now):
                next_fault = now + plan.gap
            if pending and next_fault is not None and now >= next_fault:
                name, duration = pending.pop(0)
                last_fault = self._fault(name, duration, smtp)
                next_fault = None
                continue
            if complete_at is None and now >= next_kill:
                self._kill_a_worker()
                next_kill = time.time() + self._jitter()
            if now >= next_progress:
                print(
                    f"  t={elapsed:5.0f}s  received {self.record.received}/{plan.expected}",
                    flush=True,
                )
                next_progress = now + 10
            time.sleep(0.2)

    def _wait_for_first_email(self, reader: RecordReader) -> None:
        """Wait until the processes are up and the first email arrived; faults start then."""
        assert self.processes is not None
        deadline = self.started + self.plan.timeout
        while not self.record.accepted:
            if time.time() > deadline:
                raise RuntimeError("no email arrived: see the process logs")
            self.record.exits.extend(self.processes.restart_exited())
            time.sleep(0.2)
            reader.read(self.record, self.plan.steps)
        self.sending_since = self.record.accepted[0].at
        print(f"  t={self.sending_since - self.started:5.0f}s  first email arrived", flush=True)

    def _recovered(self, fault: Fault, now: float) -> bool:
        """Whether an email arrived after `fault` ended (or none was due, or it took too long)."""
        if not self._still_due() or now - fault.ended > RECOVERY_WAIT:
            return True
        return bool(self.record.accepted) and self.record.accepted[-1].at >= fault.ended

    def _jitter(self) -> float:
        return self.plan.kill_every * self.random.uniform(0.8, 1.2)

    def _still_due(self) -> int:
        return self.plan.expected - self.record.received

    def _start_worker(self) -> None:
        assert self.processes is not None
        self.worker_count += 1
        self.processes.start(f"worker-{self.worker_count}", [sys.executable, "-m", "worker"])

    def _kill_a_worker(self) -> None:
        assert self.processes is not None
        workers = sorted(name for name in self.processes.running if name.startswith("worker-"))
        victim = self.random.choice(workers)
        ports = client_ports(self.processes.running[victim].pid, self.smtp_port)
        now = time.time()
        self.processes.kill(victim)
        self.record.kills.append(
            Fault(f"kill -9 {victim}", now, now, self._still_due(), frozenset(ports))
        )
        self._start_worker()

    def _fault(self, name: str, duration: float, smtp: SmtpServer) -> Fault:
        began = time.time()
        still_due = self._still_due()
        elapsed = began - self.started
        print(f"  t={elapsed:5.0f}s  fault: {name} ({duration:.0f} s)", flush=True)
        if name == "redis":
            assert self.redis_server is not None
            client = Redis.from_url(self.redis_server.url)
            client.flushall()
            client.close()
            label = "Redis flushed"
        elif name == "smtp-down":
            smtp.stop()
            self._sleep(duration)
            smtp.start()
            label = f"SMTP server stopped {duration:.0f} s"
        elif name == "throttle":
            smtp.mode(THROTTLE)
            self._sleep(duration)
            smtp.mode(ACCEPT)
            label = f"421 answered {duration:.0f} s"
        elif name == "refuse-sender":
            smtp.mode(REFUSE_SENDER)
            self._sleep(duration)
            smtp.mode(ACCEPT)
            label = f"554 5.7.1 sender refused {duration:.0f} s"
        else:
            self.postgres.restart(duration)
            label = f"PostgreSQL restarted ({duration:.0f} s down)"
        fault = Fault(label, began, time.time(), still_due)
        self.record.faults.append(fault)
        return fault

    def _sleep(self, seconds: float) -> None:
        """Wait out a fault while the kills go on and the record is read."""
        assert self.processes is not None
        end = time.time() + seconds
        next_kill = time.time() + self._jitter()
        while time.time() < end:
            self.record.exits.extend(self.processes.restart_exited())
            if time.time() >= next_kill:
                self._kill_a_worker()
                next_kill = time.time() + self._jitter()
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop every process and server this run started."""
        if self.processes is not None:
            self.processes.stop_all()
        if self.redis_server is not None:
            self.redis_server.stop()
        self.postgres.destroy()


def report(soak: Soak, bounced: int, ledger: list[str]) -> bool:
    """Print the figures; return whether the run passed."""
    plan = soak.plan
    record = soak.record
    figures = tally(record.accepted, soak.due)
    times = sorted(a.at for a in record.accepted)
    peak = peak_rate(times)
    rate = 1 / parse_rate(plan.send_rate).interval
    took = (soak.finished or time.time()) - soak.started
    print("\n== fault soak ==")
    print(
        f"{plan.subscribers} subscribers x {plan.steps} steps on PostgreSQL; {plan.workers} "
        f"workers, {plan.schedulers} schedulers; STEP_INTERVAL={plan.step_interval}s, "
        f"BATCH_SIZE={plan.batch_size}, CLAIM_LEASE={plan.lease}s, SEND_RATE={plan.send_rate}"
    )
    finished = soak.finished is not None
    status = f"in {took:.0f} s" if finished else f"NOT within {plan.timeout:.0f} s"
    print(f"finished {status} (bound {plan.timeout:.0f} s)")
    print(f"emails expected        {figures.expected}")
    print(f"sent (unique IDs)      {figures.sent}")
    print(f"lost                   {figures.lost}")
    print(f"duplicated             {figures.duplicated}")
    print(f"resent under a new ID  {figures.extra}")
    print(f"bounced by mistake     {bounced}")
    print(
        f"peak send rate         {peak}/s over a sliding 1 s window "
        f"(SEND_RATE {rate:g}/s: {peak / rate:.2f}x)"
    )
    print("faults: recovery (fault end -> next accepted message), refusals answered during it")
    for fault in record.faults:
        refused = Counter(r.codes for r in record.refusals if fault.began <= r.at <= fault.ended)
        answered = ", ".join(f"{codes} x{n}" for codes, n in sorted(refused.items()))
        print(f"  {fault.name:<34} {_recovery(times, fault):<34} {answered}")
    kills = [recovery(times, kill.ended) for kill in record.kills if kill.still_due]
    measured = [k for k in kills if k is not None]
    if record.kills:
        summary = (
            f"median {statistics.median(measured):.1f} s, max {max(measured):.1f} s"
            if measured
            else "no message after them"
        )
        print(f"  {'worker kill -9 x' + str(len(record.kills)):<34} {summary}")
    delays = step_delays(record.accepted, plan.step_interval)
    if delays:
        print(
            f"steps later than STEP_INTERVAL after the one before: median "
            f"{statistics.median(delays):.1f} s, 99th percentile "
            f"{delays[int(0.99 * (len(delays) - 1))]:.1f} s, max {delays[-1]:.1f} s"
        )
    short = [
        f"{recipient} got {len(record.by_recipient.get(recipient, ()))}/{owed}"
        for recipient, owed in soak.due.items()
        if len(record.by_recipient.get(recipient, ())) < owed
    ]
    if short:
        print(f"short of their emails: {len(short)} subscribers, e.g. " + "; ".join(short[:5]))
    print("processes that exited on their own: " + ("; ".join(record.exits) or "none"))
    for line in ledger:
        print(line)
    duplicates = [mid for mid, n in Counter(a.message_id for a in record.accepted).items() if n > 1]
    killed: list[str] = []
    if duplicates:
        killed = sent_by_the_killed(
            record.accepted, [(k.began, k.ports) for k in record.kills], KILL_WINDOW
        )
        print(
            f"duplicated Message-IDs: {len(duplicates)}; {len(killed)} of them first accepted "
            f"from a worker that was kill -9'd within {KILL_WINDOW:.0f} s after"
        )
    for message_id in duplicates[:10]:
        arrivals = [a.at - soak.started for a in record.accepted if a.message_id == message_id]
        kills_near = [
            f"{k.name} at t={k.began - soak.started:.2f}s"
            for k in record.kills
            if any(abs(k.began - (soak.started + at)) < 2 for at in arrivals)
        ]
        print(
            f"duplicate {message_id} at t="
            + ", ".join(f"{at:.2f}s" for at in arrivals)
            + (f" (near {'; '.join(kills_near)})" if kills_near else "")
        )
    failures = [
        what
        for what, bad in (
            (f"lost {figures.lost}", figures.lost),
            (f"duplicated {figures.duplicated}", figures.duplicated),
            (f"resent under a new ID {figures.extra}", figures.extra),
            (f"bounced by mistake {bounced}", bounced),
            (f"did not finish within {plan.timeout:.0f} s", not finished),
        )
        if bad
    ]
    print("result: " + ("PASS" if not failures else "FAIL (" + ", ".join(failures) + ")"))
    return not failures


def _recovery(times: list[float], fault: Fault) -> str:
    if not fault.still_due:
        return "(nothing was due: not measured)"
    seconds = recovery(times, fault.ended)
    return "no message after it" if seconds is None else f"{seconds:.1f} s"


def parse_args(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(description="Send a course while its servers fail.")
    parser.add_argument("--short", action="store_true", help="the CI form (a couple of minutes)")
    for name, kind, what in (
        ("subscribers", int, "subscribers signed up and confirmed"),
        ("steps", int, f"course steps each is owed (at most {TOTAL_STEPS})"),
        ("workers", int, "`python -m worker` processes"),
        ("schedulers", int, "`python -m worker.schedule` processes"),
        ("send-rate", str, "SEND_RATE given to the processes, e.g. 50/s"),
        ("step-interval", float, "STEP_INTERVAL, seconds"),
        ("batch-size", int, "BATCH_SIZE"),
        ("lease", float, "CLAIM_LEASE, seconds"),
        ("kill-every", float, "seconds between worker kills (+-20%%)"),
        ("first-fault", float, "seconds from the first email to the first fault"),
        ("gap", float, "seconds from a fault's recovery to the next fault"),
        ("smtp-down", float, "seconds the SMTP server is stopped (0: no such fault)"),
        ("throttle", float, "seconds the SMTP server answers 421 (0: none)"),
        ("refuse-sender", float, "seconds it refuses our sender with 554 5.7.1 (0: none)"),
        ("postgres-down", float, "seconds PostgreSQL stays down in its restart"),
        ("timeout", float, "seconds the sending may take before the run fails"),
        ("seed", int, "random seed (which worker is killed, and when)"),
    ):
        parser.add_argument(f"--{name}", type=kind, help=what)
    args = parser.parse_args(argv)
    plan = SHORT if args.short else FULL
    changes = {
        key: value
        for key, value in vars(args).items()
        if key != "short" and value is not None and hasattr(plan, key)
    }
    plan = Plan(**(vars(plan) | changes))
    if not 1 <= plan.steps <= TOTAL_STEPS:
        parser.error(f"--steps must be between 1 and {TOTAL_STEPS}")
    if plan.timeout <= plan.least_time():
        parser.error(f"--timeout must be longer than the faults take ({plan.least_time():.0f} s)")
    if plan.workers < 1 or plan.schedulers < 1 or plan.subscribers < 1:
        parser.error("--workers, --schedulers and --subscribers must be at least 1")
    try:
        parse_rate(plan.send_rate)
    except ConfigError as error:
        parser.error(str(error))
    return plan


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 if nothing was lost, duplicated or bounced in time, else 1 (2: setup)."""
    plan = parse_args(argv)
    bindir = find_bindir()
    if bindir is None:
        print("soak: no PostgreSQL binaries (initdb, pg_ctl) found", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="onward-soak-"))
    soak = Soak(plan, folder, Path(tempfile.mkdtemp(prefix="onward-soak-pg-")), bindir)
    outcome = 2
    try:
        with signals_interrupt():
            soak.run()
            try:
                bounced, ledger = ledger_summary(soak.database_url)
            except SQLAlchemyError as error:
                bounced, ledger = 0, [f"ledger unreadable: {error}"]
            outcome = 0 if report(soak, bounced, ledger) else 1
    except Interrupted:
        print("\ninterrupted: stopping everything", flush=True)
        outcome = 130
    except (RuntimeError, OSError, SQLAlchemyError) as error:
        print(f"soak: {error}", file=sys.stderr)
    finally:
        # A second Ctrl-C must not leave servers behind: the stop runs to its end.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        soak.stop()
        if outcome == 0:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"process logs and the SMTP record are kept in {folder}", flush=True)
    return outcome


if __name__ == "__main__":
    raise SystemExit(main())
