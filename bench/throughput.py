"""End-to-end sending rate, beside bare smtplib into the same relay: the last lines of `make bench`.

Due subscriptions are claimed by a tick, queued in Redis, taken by K worker
processes (rq's SimpleWorker, modules preloaded), rendered, assembled, handed to
the relay and recorded in the ledger; the clock stops when the ledger holds every
email as sent. Settings come from the environment: BENCH_SMTP_URL (an existing
relay; default Postfix's smtp-sink if installed, else aiosmtpd in its own process),
BENCH_DATABASE_URL (default a temporary SQLite file), REDIS_URL (default an
embedded Redis).

"worker peak RSS" is the largest VmHWM (Linux's peak resident memory) of any worker
process, read just before it is stopped. `--memory 100000` measures that figure
alone: one worker sends 100,000 emails in one run, and no rate is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from rq import Worker
from sqlalchemy import func, insert, select, text

from app.config import Settings
from app.db import migrate, session_scope, utcnow
from app.emails import render, wire_message
from app.models import Consent, Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from app.sending import dispatch
from app.services import Services
from bench.sending import free_port, wait_for_port


@contextmanager
def relay() -> Iterator[str]:
    """The SMTP URL to send to: BENCH_SMTP_URL, else a sink started here."""
    url = os.environ.get("BENCH_SMTP_URL")
    if url:
        yield url
        return
    port = free_port()
    sink = shutil.which("smtp-sink") or (
        "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None
    )
    if sink:
        # smtp-sink refuses to keep root's privileges.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        command = [sink, *user, f"127.0.0.1:{port}", "1000"]
    else:
        command = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}"]
        command += ["-c", "aiosmtpd.handlers.Sink"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"smtp://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


@contextmanager
def redis_url(folder: Path) -> Iterator[str]:
    """REDIS_URL, else an embedded Redis for the length of the bench."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from app.dev.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(folder / "redis")
    try:
        yield server.url
    finally:
        server.stop()


def baseline(smtp_url: str, payload: bytes, count: int) -> float:
    """Messages a second bare smtplib hands over one reused connection (prebuilt bytes)."""
    parts = urlsplit(smtp_url)
    connection = smtplib.SMTP(parts.hostname or "127.0.0.1", parts.port or 25)
    connection.ehlo()
    start = time.perf_counter()
    for n in range(count):
        connection.sendmail("course@onward.example", [f"reader{n}@example.com"], payload)
    elapsed = time.perf_counter() - start
    connection.quit()
    return count / elapsed


def seed(services: Services, count: int) -> None:
    """`count` confirmed subscriptions at step 3, all due now (a few statements)."""
    now = utcnow()
    with services.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Not DELETE: a table full of dead rows would slow every later run down.
            connection.execute(text("TRUNCATE subscriber, consent, delivery CASCADE"))
        else:
            for table in ("delivery", "consent", "subscriber"):
                connection.execute(text(f"DELETE FROM {table}"))
        ids = connection.scalars(
            insert(Subscriber).returning(Subscriber.id),
            [
                {
                    "key": f"bench{n:08d}{os.urandom(6).hex()}",
                    "email": f"reader{n}@example.com",
                    "first_name": "Ada",
                    "status": SubscriberStatus.ACTIVE,
                    "next_step": 3,
                    "next_send_at": now - timedelta(minutes=1),
                    "created_at": now,
                }
                for n in range(count)
            ],
        ).all()
        connection.execute(
            insert(Consent),
            [
                {
                    "subscriber_id": subscriber_id,
                    "source": "bench",
                    "wording": "bench",
                    "requested_at": now,
                    "confirmed_at": now,
                }
                for subscriber_id in ids
            ],
        )


def sent(services: Services) -> int:
    with session_scope(services.sessions) as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.status == DeliveryStatus.SENT)
            )
            or 0
        )


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (Linux's VmHWM), in MB; 0 where unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


#: The largest peak RSS of any bench worker so far, in MB.
PEAK_RSS: list[float] = [0.0]


def end_to_end(env: dict[str, str], count: int, workers: int) -> float:
    """Emails a second from due to recorded, with `workers` worker processes."""
    services = Services(Settings.from_env(env))
    seed(services, count)
    services.queue.empty()  # type: ignore[no-untyped-call]
    processes = [
        subprocess.Popen([sys.executable, "-m", "bench.throughput", "--serve"], env=env)
        for _ in range(workers)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(Worker.all(queue=services.queue)) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("the bench workers did not start")
            time.sleep(0.05)
        start = time.perf_counter()
        queued = dispatch(services, now=utcnow())
        while sent(services) < queued:
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        PEAK_RSS[0] = max([PEAK_RSS[0], *(peak_rss_mb(p.pid) for p in processes)])
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        services.close()
    return count / elapsed


def serve() -> None:
    """One preloaded worker process: builds its services once, then takes jobs until stopped."""
    from rq import SimpleWorker

    from worker import jobs

    services = jobs.services()
    services.catalog.get("step-01")
    SimpleWorker([services.queue], connection=services.redis).work(logging_level="WARNING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--emails", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=1, help="the end-to-end line's workers")
    parser.add_argument("--dkim", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure (median)")
    parser.add_argument(
        "--memory",
        type=int,
        metavar="N",
        help="only the peak RSS of one worker sending N emails in one run (e.g. 100000)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    with tempfile.TemporaryDirectory() as name, relay() as smtp_url:
        folder = Path(name)
        key = folder / "dkim.pem"
        key.write_bytes(
            rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        with redis_url(folder) as redis:
            env = {
                **os.environ,
                "BASE_URL": "https://onward.example",
                "SECRET_KEY": "bench-secret-key-bench-secret-key",
                "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL")
                or f"sqlite:///{folder / 'throughput.db'}",
                "REDIS_URL": redis,
                "SMTP_URL": smtp_url,
                "BATCH_SIZE": os.environ.get("BATCH_SIZE", "500"),
            }
            services = Services(Settings.from_env(env))
            migrate(services.engine)
            if args.memory:
                services.close()
                # All N are claimed at once: the last batches must not lapse while they wait.
                end_to_end({**env, "CLAIM_LEASE": "6h"}, args.memory, 1)
                print(f"worker peak RSS: {PEAK_RSS[0]:.0f} MB after {args.memory} emails")
                return
            recipient = services.sample_recipient()
            rendered = render(services.catalog.get("step-03"), services.sender, recipient)
            payload = wire_message(rendered, services.sender, recipient, now=utcnow())
            services.close()
            base = statistics.median(baseline(smtp_url, payload, args.emails) for _ in range(3))
            figures: dict[str, float] = {}
            for workers in sorted({1, 2, 4, args.workers}):
                runs = [end_to_end(env, args.emails, workers) for _ in range(args.rounds)]
                figures[f"{workers}"] = statistics.median(runs)
                print(f"end-to-end, {workers} worker(s): {figures[f'{workers}']:.0f} emails/s")
            dkim = 0.0
            if args.dkim:
                signed = {**env, "DKIM_KEY_FILE": str(key)}
                runs = [end_to_end(signed, args.emails, args.workers) for _ in range(args.rounds)]
                dkim = statistics.median(runs)
    print(
        f"worker peak RSS: {PEAK_RSS[0]:.0f} MB (a worker sends up to {args.emails} emails a run)"
    )
    load = os.getloadavg()
    print(f"emails per run: {args.emails}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rate = figures[f"{args.workers}"]
    print(f"baseline: {base:.0f} emails/s (smtplib)")
    print(f"end-to-end: {rate:.0f} emails/s ({rate / base * 100:.1f} % of smtplib)")
    print(f"end-to-end dkim: {dkim:.0f} emails/s ({dkim / base * 100:.1f} % of smtplib)")


if __name__ == "__main__":
    main()
