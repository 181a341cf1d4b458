"""Print how long a sign-up request takes for a new, pending, active and ended address.

Figures, not assertions: the medians should match, since the request records the
intent and queues a job whatever the address's state (app/signups.py). Run by
`make bench`, or alone: `python -m bench.signup [--database-url URL]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from app import create_app, drip
from app.config import Settings
from app.db import migrate, session_scope, utcnow
from app.dev.embedded_redis import EmbeddedRedis
from app.models import Subscriber
from app.services import Services

STATES = ("new", "pending", "active", "ended")


def prepare(services: Services, count: int) -> dict[str, list[str]]:
    """`count` addresses in each state, stored as the course rules would leave them."""
    now = utcnow()
    addresses = {state: [f"{state}{n}@example.com" for n in range(count)] for state in STATES}
    policy, keys = services.policy, services.mailbox_keys
    with session_scope(services.sessions) as session:
        for state in STATES[1:]:
            for email in addresses[state]:
                result = drip.subscribe(
                    session, email, source="bench", wording="bench", ip=None,
                    user_agent=None, policy=policy, now=now,
                )  # fmt: skip
                subscriber = session.get_one(Subscriber, result.subscriber_id)
                subscriber.next_send_at = None
                if state == "pending":
                    continue
                drip.confirm(
                    session, subscriber, ip=None, user_agent=None, now=now,
                    total_steps=policy.total_steps,
                )  # fmt: skip
                if state == "ended":
                    drip.unsubscribe(session, subscriber, keys=keys, now=now)
    return addresses


def bench_signups(services: Services, count: int) -> dict[str, float]:
    """Median milliseconds of POST /api/subscribe per state, the states interleaved."""
    addresses = prepare(services, count)
    app = create_app(services=services)
    times: dict[str, list[float]] = {state: [] for state in STATES}
    for n in range(count):
        for state in STATES:
            client = app.test_client()
            # One address per visitor, so the per-IP limit never answers instead.
            client.environ_base["REMOTE_ADDR"] = (
                f"10.{n // 250 % 250}.{n % 250}.{STATES.index(state)}"
            )
            start = time.perf_counter()
            answer = client.post("/api/subscribe", json={"email": addresses[state][n]})
            times[state].append(time.perf_counter() - start)
            if answer.status_code != 202:
                raise RuntimeError(f"sign-up answered {answer.status_code}")
    services.queue.empty()  # type: ignore[no-untyped-call]
    return {state: statistics.median(values) * 1e3 for state, values in times.items()}


def run(database_url: str | None, folder: Path, count: int = 200) -> None:
    """Set up Redis (REDIS_URL, or an embedded one) and print the medians side by side."""
    redis = None if os.environ.get("REDIS_URL") else EmbeddedRedis(folder / "redis")
    try:
        settings = Settings(
            base_url="https://onward.example",
            database_url=database_url or f"sqlite:///{folder / 'signup.db'}",
            redis_url=os.environ.get("REDIS_URL") or (redis.url if redis else None),
            queue_name="bench-signup",
        )
        services = Services(settings)
        migrate(services.engine)
        try:
            medians = bench_signups(services, count)
        finally:
            services.close()
    finally:
        if redis is not None:
            redis.stop()
    print(
        f"sign-up request ({services.engine.dialect.name}, median of {count}): "
        + ", ".join(f"{state} {ms:.2f} ms" for state, ms in medians.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run(args.database_url, Path(folder), args.count)


if __name__ == "__main__":
    main()
