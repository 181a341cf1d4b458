"""The JSON API: sign up from another site or app."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, Field

from app import drip
from app.web.openapi import responses, spec
from app.web.pages import sign_up

bp = Blueprint("api", __name__, url_prefix="/api")

ACCEPTED_MESSAGE = (
    "Thanks. If this address can receive the course, a confirmation email is on its way."
)


class SignUp(BaseModel):
    """A sign-up."""

    email: str = Field(
        description="The address that receives the course.", json_schema_extra={"format": "email"}
    )
    first_name: str | None = Field(None, description="Optional; used in the emails.")
    time_zone: str | None = Field(None, description="An IANA name; default DEFAULT_TIME_ZONE.")


class Accepted(BaseModel):
    """The one answer to every accepted sign-up, whether the address was new or known."""

    status: str = Field(description="Always accepted.")
    message: str


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify(error={"code": code, "message": message}), status


@bp.post("/subscribe")
# The view checks its body itself (its error codes predate the OpenAPI document).
@spec.validate(
    json=SignUp,
    resp=responses(400, 415, 429, 503, HTTP_202=Accepted),
    tags=["Sign-up (public)"],
    skip_validation=True,
)
def subscribe() -> tuple[Response, int]:
    """Sign up `{"email": ..., "first_name": ..., "time_zone": ...}`: 202, or 400 if invalid.

    `time_zone` (optional) is an IANA name like Europe/London; without it the
    course follows DEFAULT_TIME_ZONE.
    """
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
    time_zone = payload.get("time_zone")
    if time_zone is not None and not isinstance(time_zone, str):
        return _error(400, "invalid_field", "time_zone must be a string.")
    if time_zone:
        try:
            drip.check_time_zone(time_zone)
        except drip.InvalidTimeZone as zone_error:
            return _error(400, "invalid_time_zone", str(zone_error))
    error = sign_up(email, first_name, source="api", time_zone=time_zone or None)
    if error:
        return _error(400, "invalid_email", error)
    return jsonify(status="accepted", message=ACCEPTED_MESSAGE), 202
