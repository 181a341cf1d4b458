"""The OpenAPI 3.1 document, generated from the API views by spectree, and a page for people.

spectree fits the app as it is: plain Flask blueprints, pydantic models (whose JSON
Schema is the 2020-12 dialect OpenAPI 3.1 uses), and validation by decorator. Its
documentation pages load Swagger UI or Redoc from a CDN, so they are turned off and
/api/docs renders the operations on the server instead.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, jsonify, render_template
from pydantic import BaseModel, Field
from spectree import Response as Responses
from spectree import SecurityScheme, SpecTree
from spectree.models import SecureType, SecuritySchemeData


class ErrorDetail(BaseModel):
    """What went wrong: a code for programs, a message for people."""

    code: str = Field(description="A machine-readable code, like invalid_request.")
    message: str = Field(description="What went wrong, in plain words.")


class ErrorBody(BaseModel):
    """Every error answer."""

    error: ErrorDetail


class ApiError(Exception):
    """An error answer: `{"error": {"code": ..., "message": ...}}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def refuse_invalid(
    _request: Any, _response: Any, error: Exception | None, _instance: Any, _adapter: Any
) -> None:
    """spectree's hook after request validation: answer a bad request in the one error shape."""
    if error is None:
        return
    problems: list[dict[str, Any]] = getattr(error, "errors", list)()
    where = ", ".join(
        ".".join(str(part) for part in problem.get("loc", ())) + ": " + str(problem.get("msg", ""))
        for problem in problems[:5]
    )
    raise ApiError(400, "invalid_request", f"The request is not valid ({where}).")


spec = SpecTree(
    "flask",
    title="Onward API",
    version="1",
    description=(
        "Sign up to the course (public), and manage subscribers with an API token "
        "(`Authorization: Bearer ...`)."
    ),
    # spectree leaves out of the document every route under its own path: give it one
    # that holds no route, and serve the document from this blueprint instead.
    path="_spectree",
    page_templates={},
    mode="strict",
    annotations=False,
    validation_error_status=400,
    validation_error_model=ErrorBody,
    before=refuse_invalid,
    security_schemes=[
        SecurityScheme(
            name="token",
            data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer"),
        ),
    ],
)


def responses(*errors: int, **ok: type[BaseModel] | None) -> Responses:
    """spectree's Response: the success models given, and the error shape for `errors`."""
    return Responses(**ok, **{f"HTTP_{status}": ErrorBody for status in errors})


bp = Blueprint("openapi", __name__, url_prefix="/api")


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document."""
    return jsonify(spec.spec)


@bp.get("/docs")
def docs() -> str:
    """The API's operations, for people, rendered here from the OpenAPI document."""
    document = spec.spec
    operations = [
        (path, method.upper(), operation)
        for path, item in document.get("paths", {}).items()
        for method, operation in item.items()
        if isinstance(operation, dict)
    ]
    return render_template("api_docs.html", document=document, operations=operations)


def api_error(error: ApiError) -> tuple[Response, int]:
    """The one error shape."""
    response = jsonify(error={"code": error.code, "message": error.message})
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="onward"'
    return response, error.status


def init_app(app: Flask) -> None:
    """Serve /api/openapi.json and /api/docs; answer ApiError in the one error shape."""
    # What spectree's `register` does, without the routes it would add.
    spec.app = app
    app.register_blueprint(bp)
    app.register_error_handler(ApiError, api_error)
