"""Health endpoints for load balancers and orchestrators."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.config import ConfigError
from app.web import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """200 while the process is alive and serving."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """200 when the database and Redis both answer; 503 naming the one that does not.

    `relay` names the SMTP relay's breaker state: informative only, since the web
    app serves sign-ups and links while sending waits for the relay.
    """
    svc = services()
    checks: dict[str, str] = {}
    try:
        with svc.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as error:
        checks["database"] = f"unavailable: {error.__class__.__name__}"
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
        relay = svc.breaker.state().describe()
    except (RedisError, ConfigError) as error:
        checks["redis"] = f"unavailable: {error.__class__.__name__}"
        relay = "unknown"
    ready = all(value == "ok" for value in checks.values())
    body = jsonify(status="ready" if ready else "unavailable", checks=checks, relay=relay)
    return body, 200 if ready else 503
