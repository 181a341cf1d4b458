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
    """200 when the database and Redis both answer; 503 naming the one that does not."""
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
    except (RedisError, ConfigError) as error:
        checks["redis"] = f"unavailable: {error.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ready" if ready else "unavailable", checks=checks), 200 if ready else 503
