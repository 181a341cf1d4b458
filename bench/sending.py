"""Print how fast Onward renders and sends: `make bench`.

Figures, not assertions: per-message render and MIME build time, and the rate of
a real batch (ledger writes included) into an SMTP server on this machine.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.config import Settings
from app.db import migrate, session_scope, utcnow
from app.drip import SENDABLE, confirm, subscribe
from app.emails import render, wire_message
from app.models import Subscriber
from app.sending import send_batch
from app.services import Services
from app.store import claim_due
from bench import signup


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_render(services: Services, rounds: int) -> None:
    recipient = services.sample_recipient()
    email = services.catalog.get("step-03")
    now = utcnow()
    render_times, build_times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        rendered = render(email, services.sender, recipient)
        middle = time.perf_counter()
        wire_message(rendered, services.sender, recipient, now=now)
        end = time.perf_counter()
        render_times.append(middle - start)
        build_times.append(end - middle)
    size = len(rendered.html.encode())
    print(f"render (Jinja, HTML+text):   median {statistics.median(render_times) * 1e6:8.0f} µs")
    print(f"MIME assembly (wire bytes):  median {statistics.median(build_times) * 1e6:8.0f} µs")
    print(f"HTML size of step-03:        {size / 1024:.1f} KB")
    link_times = []
    for n in range(rounds):
        start = time.perf_counter()
        services.links(f"subscriber-key-{n:08}")
        link_times.append(time.perf_counter() - start)
    print(f"signed links (5, per email): median {statistics.median(link_times) * 1e6:8.0f} µs")


def bench_batch(services: Services, count: int, port: int) -> None:
    now = utcnow()
    with session_scope(services.sessions) as session:
        for n in range(count):
            result = subscribe(
                session,
                f"reader{n}@example.com",
                source="bench",
                wording="bench",
                ip=None,
                user_agent=None,
                policy=services.policy,
                now=now,
            )
            confirm(
                session,
                session.get_one(Subscriber, result.subscriber_id),
                ip=None,
                user_agent=None,
                now=now,
                total_steps=services.policy.total_steps,
            )
    with session_scope(services.sessions) as session:
        claim = claim_due(
            session, now=now, lease=services.settings.claim_lease, limit=count, statuses=SENDABLE
        )
    ids = claim.ids if claim else []
    start = time.perf_counter()
    report = send_batch(services, ids)
    elapsed = time.perf_counter() - start
    print(
        f"batch of {count} into SMTP on 127.0.0.1:{port}: {elapsed:.2f} s, "
        f"{count / elapsed:.0f} emails/s ({report.as_dict()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--emails", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    port = free_port()
    # The SMTP server runs in its own process, as a relay would, so it does not
    # compete with the sender for this interpreter's lock.
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "aiosmtpd.handlers.Sink",
        ],
    )
    with tempfile.TemporaryDirectory() as folder:
        try:
            wait_for_port(port)
            from bench.throughput import redis_url

            with redis_url(Path(folder)) as redis:
                settings = Settings(
                    base_url="https://onward.example",
                    database_url=args.database_url or f"sqlite:///{Path(folder) / 'bench.db'}",
                    smtp_url=f"smtp://127.0.0.1:{port}",
                    redis_url=redis,
                )
                services = Services(settings)
                migrate(services.engine)
                start = time.perf_counter()
                services.catalog.get("step-01")
                compile_ms = (time.perf_counter() - start) * 1e3
                print(f"compile all MJML templates:  {compile_ms:8.1f} ms (once per process)")
                bench_render(services, args.rounds)
                bench_batch(services, args.emails, port)
                services.close()
            signup.run(args.database_url, Path(folder))
        finally:
            relay.terminate()
            relay.wait()


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"SMTP server on port {port} did not start")


if __name__ == "__main__":
    main()
