"""Print how fast `flask subscribers import` goes: 100,000 rows on SQLite and PostgreSQL.

PostgreSQL is the database at BENCH_DATABASE_URL (or --database-url), which is EMPTIED
first: point it at a database of its own. Without one, its line says it was skipped.
Figures, not assertions: the first import (all new) and the second (all unchanged).
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from app.config import Settings
from app.db import migrate
from app.importing import import_csv
from app.services import Services

ZONES = ("Europe/London", "America/New_York", "Asia/Tokyo", "")


def write_file(path: Path, rows: int) -> None:
    """A CSV of `rows` distinct people, in the column order an export writes."""
    with path.open("w", newline="") as target:
        writer = csv.writer(target)
        writer.writerow(["email", "first_name", "time_zone", "ip"])
        for n in range(rows):
            writer.writerow([f"Reader.{n}@Example.com", f"Reader {n}", ZONES[n % 4], "192.0.2.7"])


def bench(database_url: str, file: Path, rows: int, label: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        services = Services(
            Settings(
                base_url="https://onward.example",
                database_url=database_url,
                instance_dir=Path(folder),
            )
        )
        if services.engine.dialect.name == "postgresql":
            with services.engine.begin() as connection:
                connection.execute(text("DROP SCHEMA public CASCADE"))
                connection.execute(text("CREATE SCHEMA public"))
        migrate(services.engine)
        for attempt in ("new", "again"):
            start = time.perf_counter()
            with file.open(newline="") as stream:
                report = import_csv(services, stream)
            elapsed = time.perf_counter() - start
            done = report.total_imported if attempt == "new" else report.unchanged
            assert done == rows, report.summary()
            print(
                f"import {rows:,} rows, {label:10s} ({attempt}): {elapsed:6.2f} s, "
                f"{rows / elapsed:8,.0f} rows/s"
            )
        services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "people.csv"
        write_file(file, args.rows)
        bench(f"sqlite:///{Path(folder) / 'bench.db'}", file, args.rows, "SQLite")
        if args.database_url and args.database_url.startswith("postgresql"):
            bench(args.database_url, file, args.rows, "PostgreSQL")
        else:
            print("import on PostgreSQL: skipped (set BENCH_DATABASE_URL to a database of its own)")


if __name__ == "__main__":
    main()
