"""The OpenAPI document: valid OpenAPI 3.1, complete, and what the app really answers."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import apitokens
from app.db import session_scope
from app.services import Services
from tests.admin_support import OPERATOR, seed_course

#: Operations the document must hold: the public sign-up and the whole admin API.
OPERATIONS = {
    ("post", "/api/subscribe"),
    ("get", "/api/v1/subscribers"),
    ("post", "/api/v1/subscribers"),
    ("get", "/api/v1/subscribers/{subscriber_id}"),
    ("delete", "/api/v1/subscribers/{subscriber_id}"),
    ("post", "/api/v1/subscribers/{subscriber_id}/pause"),
    ("post", "/api/v1/subscribers/{subscriber_id}/resume"),
    ("post", "/api/v1/subscribers/{subscriber_id}/unsubscribe"),
    ("get", "/api/v1/stats"),
    ("get", "/api/v1/funnel"),
}


def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def test_the_document_is_valid_openapi_3_1_and_complete(client: FlaskClient) -> None:
    spec = document(client)
    assert spec["openapi"].startswith("3.1")
    validate(spec)
    found = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert found == OPERATIONS
    for path, item in spec["paths"].items():
        for operation in item.values():
            assert operation.get("security") == ([{"token": []}] if "/v1/" in path else None)
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.split("/")[-1].startswith("ErrorBody")


def test_the_validator_would_catch_a_broken_document(client: FlaskClient) -> None:
    spec = document(client)
    spec["paths"]["/api/v1/stats"]["get"]["responses"] = "none"
    with pytest.raises(OpenAPIValidationError):
        validate(spec)


def test_the_page_for_people_lists_every_operation_without_a_cdn(client: FlaskClient) -> None:
    response = client.get("/api/docs")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for method, path in OPERATIONS:
        assert f"{method.upper()} {path}" in page
    assert "cdn" not in page.lower() and "<script src=" not in page


@pytest.fixture
def write_token(services: Services) -> str:
    with session_scope(services.sessions) as session:
        seed_course(session, 12, now=services.clock())
        _row, token = apitokens.create_token(
            session, "contract", "write", operator_email=OPERATOR, now=services.clock()
        )
    return token


def test_every_answer_matches_the_document(app: Flask, write_token: str) -> None:
    """Generated requests to every operation, with a write token: no 500s, and every
    answer (status, headers, body) as the document says."""
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    headers = {"Authorization": f"Bearer {write_token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.lower(), op.path) for op in operations} == OPERATIONS
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            # A body the schema allows may still be refused with a documented 400: the
            # address and the time zone are checked beyond what JSON Schema can say.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()
