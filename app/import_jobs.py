"""The console's imports: the uploaded file and the progress kept in Redis, run as RQ jobs.

The upload and its progress live in Redis for a day (the web app and the workers may
not share a disk); the subscriptions an import creates are in the database, and a
lost upload is simply uploaded again (a second import changes nothing).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import secrets
from typing import TYPE_CHECKING

from app import importing

if TYPE_CHECKING:
    from app.services import Services

log = logging.getLogger(__name__)

#: The RQ job that runs an uploaded import (see worker/jobs.py).
IMPORT_JOB = "worker.jobs.import_subscribers"
#: How long an upload and its progress are kept.
KEEP_SECONDS = 24 * 3600
#: The largest file the console takes (the command line has no limit).
MAX_UPLOAD = 50 * 1024 * 1024
#: A whole import of the largest upload fits in this many seconds.
JOB_TIMEOUT = 3600


def _key(services: Services, import_id: str) -> str:
    return f"{services.settings.queue_name}:import:{import_id}"


def start(services: Services, data: bytes, *, consent: str | None, dry_run: bool) -> str:
    """Keep the upload, queue its import and return the import's id (RedisError if down)."""
    import_id = secrets.token_hex(8)
    key = _key(services, import_id)
    total = max(data.count(b"\n") + (not data.endswith(b"\n")) - 1, 0)
    redis = services.redis
    redis.set(f"{key}:file", data, ex=KEEP_SECONDS)
    redis.hset(
        key,
        mapping={
            "state": "queued",
            "rows": 0,
            "total": total,
            "dry_run": int(dry_run),
            "consent": consent or "",
        },
    )
    redis.expire(key, KEEP_SECONDS)
    services.queue.enqueue(
        IMPORT_JOB,
        import_id,
        job_id=f"import-{import_id}",
        job_timeout=JOB_TIMEOUT,
        description="import subscribers from an uploaded file",
    )
    return import_id


def run(services: Services, import_id: str) -> dict[str, object]:
    """Run a queued import, recording its progress and then its report."""
    key = _key(services, import_id)
    redis = services.redis
    raw: dict[bytes, bytes] = redis.hgetall(key)  # type: ignore[assignment]
    state = {name.decode(): value.decode() for name, value in raw.items()}
    data = redis.get(f"{key}:file")
    if not state or data is None:
        log.warning("import %s: its upload expired before it ran", import_id)
        return {"state": "expired"}
    redis.hset(key, "state", "running")
    try:
        report = importing.import_csv(
            services,
            io.TextIOWrapper(io.BytesIO(bytes(data)), encoding="utf-8-sig", newline=""),  # type: ignore[arg-type]
            consent=state.get("consent") or None,
            dry_run=state.get("dry_run") == "1",
            on_rows=lambda count: _advance(services, key, count),
        )
    except (importing.ImportFileError, UnicodeDecodeError, csv.Error) as error:
        message = (
            "The file is not UTF-8 text." if isinstance(error, UnicodeDecodeError) else str(error)
        )
        redis.hset(key, mapping={"state": "failed", "error": message})
        redis.delete(f"{key}:file")
        return {"state": "failed"}
    redis.hset(key, mapping={"state": "done", "report": json.dumps(report.as_dict())})
    redis.delete(f"{key}:file")
    return {"state": "done", "imported": report.total_imported}


def _advance(services: Services, key: str, rows: int) -> None:
    services.redis.hincrby(key, "rows", rows)


def status(services: Services, import_id: str) -> dict[str, object] | None:
    """An import's state, rows done, total, and (once done) its report; None if unknown."""
    raw: dict[bytes, bytes] = services.redis.hgetall(_key(services, import_id))  # type: ignore[assignment]
    if not raw:
        return None
    found = {name.decode(): value.decode() for name, value in raw.items()}
    result: dict[str, object] = {
        "state": found["state"],
        "rows": int(found.get("rows", 0)),
        "total": int(found.get("total", 0)),
        "dry_run": found.get("dry_run") == "1",
        "error": found.get("error"),
        "report": json.loads(found["report"]) if "report" in found else None,
    }
    return result
