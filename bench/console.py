"""Print how fast the console's pages answer over a large course: `make bench-console`.

Figures, not assertions. Seeds a PostgreSQL database with N subscriptions (a million
by default) spread over every status and step, each with the ledger its state
implies, then times the overview and the funnel through the web app, signed in.

The database named by BENCH_DATABASE_URL (or --database-url) is EMPTIED and reseeded
whenever it does not hold exactly N subscriptions: point it at a database of its own.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy import Engine, func, select, text

from app import create_app, figures, operators
from app.config import Settings
from app.db import migrate, session_scope, utcnow
from app.dev.embedded_redis import EmbeddedRedis
from app.models import Delivery, Subscriber
from app.services import Services

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/onward_bench"
PASSWORD = "bench password, long enough"
BASE = "https://bench.onward.test"

#: One row per subscription: a status drawn by share, then its progress and timing.
SEED_SUBSCRIBERS = """
INSERT INTO subscriber (key, email, first_name, status, next_step, next_send_at,
                        confirmations_requested, confirmation_requested_at, send_failures,
                        created_at, paused_at, ended_at)
SELECT 'k' || n, 'reader' || n || '@example.com', '', st.status,
       CASE st.status WHEN 'completed' THEN 11 WHEN 'pending' THEN 1
            ELSE 1 + (n * 7919) % 10 END,
       CASE WHEN st.status IN ('active', 'pending')
            THEN :now + ((n % 96) - 24) * interval '1 hour' END,
       1, created, 0, created,
       CASE WHEN st.status = 'paused' THEN created + interval '3 days' END,
       CASE WHEN st.status IN ('completed', 'unsubscribed', 'bounced')
            THEN created + interval '10 days' END
FROM generate_series(1::bigint, :count) AS n
CROSS JOIN LATERAL (SELECT :now - ((n * 104729) % (365 * 24 * 60)) * interval '1 minute'
                    AS created) AS c
CROSS JOIN LATERAL (SELECT CASE
    WHEN n % 100 < 45 THEN 'completed' WHEN n % 100 < 65 THEN 'unsubscribed'
    WHEN n % 100 < 82 THEN 'active' WHEN n % 100 < 90 THEN 'paused'
    WHEN n % 100 < 94 THEN 'bounced' ELSE 'pending' END AS status) AS st
"""

SEED_CONSENT = """
INSERT INTO consent (subscriber_id, source, wording, requested_at, confirmed_at)
SELECT id, 'form', 'bench', created_at,
       CASE WHEN status <> 'pending' THEN created_at + interval '5 minutes' END
FROM subscriber
"""

#: The confirmation and every step received, sent two days apart; the bounce where it bounced.
SEED_LEDGER = """
INSERT INTO delivery (subscriber_id, kind, number, message_id, status, attempts,
                      started_at, sent_at, error, failure_class)
SELECT s.id, e.kind, e.number, '<' || e.kind || '-' || e.number || '.' || s.key || '@bench>',
       e.status, 1, s.created_at + e.number * interval '2 days',
       CASE WHEN e.status = 'sent' THEN s.created_at + e.number * interval '2 days' END,
       CASE WHEN e.status = 'failed' THEN 'recipient refused: 550 5.1.1 mailbox unknown' END,
       CASE WHEN e.status = 'failed' THEN 'recipient_permanent' END
FROM subscriber s
CROSS JOIN LATERAL (
    SELECT 'confirmation' AS kind, 1 AS number, 'sent' AS status
    UNION ALL
    SELECT 'step', g, 'sent' FROM generate_series(1, LEAST(s.next_step - 1, 10)) AS g
    UNION ALL
    SELECT 'step', s.next_step, 'failed' WHERE s.status = 'bounced'
) AS e
"""


def seed(engine: Engine, count: int) -> None:
    """Empty the database's tables and fill them with `count` subscriptions."""
    now = utcnow().replace(tzinfo=None)
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(
            text("TRUNCATE subscriber, consent, delivery, operator, operator_session, audit_entry")
        )
        connection.execute(text(SEED_SUBSCRIBERS), {"now": now, "count": count})
        connection.execute(text(SEED_CONSENT))
        connection.execute(text(SEED_LEDGER))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # Index-only scans need the visibility map that VACUUM writes.
        connection.execute(text("VACUUM ANALYZE"))
    print(f"seeded {count:,} subscriptions in {time.perf_counter() - started:.0f} s")


def signed_in_client(services: Services) -> FlaskClient:
    """A test client of the real app, signed in as a fresh operator."""
    with session_scope(services.sessions) as session:
        session.execute(text("DELETE FROM operator"))
        operators.create_operator(session, "bench@onward.test", PASSWORD, now=utcnow())
    app = create_app(services=services)
    client = app.test_client()
    page = client.get("/admin/login", base_url=BASE).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token, "no CSRF token on the sign-in page"
    answer = client.post(
        "/admin/login",
        data={"email": "bench@onward.test", "password": PASSWORD, "csrf_token": token[1]},
        base_url=BASE,
        headers={"Referer": f"{BASE}/admin/login"},
    )
    assert answer.status_code == 302, "sign-in failed"
    return client


def time_page(
    client: FlaskClient, path: str, rounds: int, headers: dict[str, str] | None = None
) -> list[float]:
    """Milliseconds each GET of `path` took, after one warm-up request."""
    assert client.get(path, base_url=BASE, headers=headers).status_code == 200
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        response = client.get(path, base_url=BASE, headers=headers)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, path
    return times


def time_metrics(services: Services, rounds: int) -> list[float]:
    """Milliseconds each scrape of /metrics took, with a token set."""
    services.settings = services.settings.with_changes(metrics_token="bench-metrics-token")
    client = create_app(services=services).test_client()
    return time_page(
        client, "/metrics", rounds, headers={"Authorization": "Bearer bench-metrics-token"}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args(argv)
    if not args.database_url.startswith("postgresql"):
        print("bench-console needs PostgreSQL: set BENCH_DATABASE_URL", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        # The pages read the figures the scheduler keeps in Redis: without REDIS_URL,
        # an embedded server of this run's own holds them.
        embedded = None if os.environ.get("REDIS_URL") else EmbeddedRedis(Path(folder) / "redis")
        settings = Settings(
            base_url=BASE,
            secret_key="bench",
            database_url=args.database_url,
            redis_url=os.environ.get("REDIS_URL") or (embedded.url if embedded else None),
            instance_dir=Path(folder),
            queue_name=f"bench-console-{os.getpid()}",
        )
        services = Services(settings)
        try:
            migrate(services.engine)
            with session_scope(services.sessions) as session:
                held = session.scalar(select(func.count()).select_from(Subscriber))
            if held != args.subscribers:
                seed(services.engine, args.subscribers)
            with session_scope(services.sessions) as session:
                subscribers = session.scalar(select(func.count()).select_from(Subscriber)) or 0
                ledger = session.scalar(select(func.count()).select_from(Delivery)) or 0
            print(f"database: {subscribers:,} subscriptions, {ledger:,} ledger rows")
            counts = [figures.compute(services, now=utcnow()).seconds_to_compute * 1000]
            counts += [
                figures.compute(services, now=utcnow()).seconds_to_compute * 1000 for _ in range(2)
            ]
            print(
                f"scheduler's count of every figure (in the background, every CONSOLE_CACHE): "
                f"median {statistics.median(counts):7.1f} ms   max {max(counts):7.1f} ms"
                f"   (3 counts)"
            )
            client = signed_in_client(services)
            figures.refresh(services, now=utcnow())
            for path, name in (("/admin/", "overview"), ("/admin/funnel", "funnel")):
                times = time_page(client, path, args.rounds)
                print(
                    f"{name:9s} GET {path:14s} median {statistics.median(times):7.1f} ms"
                    f"   max {max(times):7.1f} ms   ({args.rounds} requests)"
                )
            metrics = time_metrics(services, args.rounds)
            print(
                f"metrics   GET /metrics        median {statistics.median(metrics):7.1f} ms"
                f"   max {max(metrics):7.1f} ms   ({args.rounds} requests)"
            )
        finally:
            figures.forget(services)
            services.close()
            if embedded is not None:
                embedded.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
