"""One scheduler tick over a million subscriptions, 50,000 due, on PostgreSQL: `make bench-tick`.

BENCH_DATABASE_URL names a PostgreSQL database of its own: it is emptied and
reseeded. REDIS_URL (default an embedded Redis) receives the queued jobs.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import resource
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from app.config import Settings
from app.db import migrate
from app.services import Services
from bench.throughput import redis_url
from worker.schedule import tick

SEED = """
INSERT INTO subscriber (key, email, first_name, status, next_step, next_send_at,
                        confirmations_requested, send_failures, created_at, course_round)
SELECT 'tick' || n, 'reader' || n || '@example.com', '', 'active', 2,
       CASE WHEN n % (:total / :due) = 0 THEN now() - interval '1 minute'
            ELSE now() + interval '1 day' + (n % 1000) * interval '1 minute' END,
       1, 0, now(), 1
FROM generate_series(1, :total) AS n
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=50_000)
    parser.add_argument("--profile", help="write a cProfile of the tick to this file")
    args = parser.parse_args()
    database_url = os.environ.get("BENCH_DATABASE_URL")
    if not database_url or not database_url.startswith("postgresql"):
        raise SystemExit("BENCH_DATABASE_URL must name a PostgreSQL database of its own")
    with tempfile.TemporaryDirectory() as folder, redis_url(Path(folder)) as redis:
        services = Services(
            Settings(base_url="https://onward.example", database_url=database_url, redis_url=redis)
        )
        with services.engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        migrate(services.engine)
        with services.engine.begin() as connection:
            connection.execute(text(SEED), {"total": args.subscribers, "due": args.due})
        # A long-lived table, as in production: freshly loaded rows would have the
        # tick write their hint bits and visibility map as it reads them.
        with services.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM ANALYZE subscriber")
            )
        services.queue.empty()  # type: ignore[no-untyped-call]
        profile = cProfile.Profile() if args.profile else None
        start = time.perf_counter()
        if profile is not None:
            profile.enable()
        queued = tick(services)
        elapsed = time.perf_counter() - start
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
        services.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"queued {queued} in batches of {services.settings.batch_size}; peak RSS {peak:.0f} MB")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"tick: {elapsed:.1f} s for {args.due} due of {args.subscribers}")


if __name__ == "__main__":
    main()
