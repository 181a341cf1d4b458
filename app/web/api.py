"""The JSON API: sign up from another site or app."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app.web.pages import sign_up

bp = Blueprint("api", __name__, url_prefix="/api")

ACCEPTED_MESSAGE = (
    "Thanks. If this address can receive the course, a confirmation email is on its way."
)


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify(error={"code": code, "message": message}), status


@bp.post("/subscribe")
def subscribe() -> tuple[Response, int]:
    """Sign up `{"email": ..., "first_name": ...}`: 202 for every valid address, 400 if not."""
    if not request.is_json:
        return _error(
            415, "unsupported_media_type", "Send a JSON body (Content-Type: application/json)."
        )
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        return _error(400, "invalid_json", "The body must be a JSON object.")
    email, first_name = payload.get("email", ""), payload.get("first_name") or ""
    if not isinstance(email, str) or not isinstance(first_name, str):
        return _error(400, "invalid_field", "email and first_name must be strings.")
    error = sign_up(email, first_name, source="api")
    if error:
        return _error(400, "invalid_email", error)
    return jsonify(status="accepted", message=ACCEPTED_MESSAGE), 202
