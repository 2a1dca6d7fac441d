"""The OpenAPI document says what the API enforces (fast checks, no servers; the fuzz run
in test_openapi_fuzz.py holds the whole API to it)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from nebula_core import config
from nebula_core.api.app import make_app, openapi_document
from nebula_core.api.routing import decode
from nebula_core.contract import http as shapes
from nebula_core.contract.errors import Invalid

DOCUMENT = openapi_document()
ERROR = {"$ref": "#/components/schemas/Error"}


def _operation(method: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = DOCUMENT["paths"][path][method]
    return operation


def _parameter(method: str, path: str, name: str) -> dict[str, Any]:
    (parameter,) = [p for p in _operation(method, path)["parameters"] if p["name"] == name]
    return parameter


def test_each_operation_lists_the_refusals_it_may_answer() -> None:
    create = _operation("post", "/v1/instances")["responses"]
    assert sorted(create) == ["202", "401", "403", "404", "409", "422", "429", "503"]
    assert all(create[status]["content"]["application/json"]["schema"] == ERROR for status in create if status != "202")
    assert create["429"]["headers"]["Retry-After"]["required"] and create["503"]["headers"]["Retry-After"]["required"]
    assert sorted(_operation("get", "/v1/users/me")["responses"]) == ["200", "401", "429", "503"]
    assert sorted(_operation("get", "/v1/projects/{project_id}")["responses"]) == ["200", "401", "404", "429", "503"]
    health = _operation("get", "/healthz")["responses"]
    assert sorted(health) == ["200", "503"]
    assert health["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Health"}


def test_what_no_schema_can_say_is_listed_with_the_422() -> None:
    refusal = _operation("post", "/v1/instances")["responses"]["422"]
    assert set(refusal["x-also-checked"]) == {
        "$.image",
        "$.disk_gb",
        "$.user_data",
        "$.keypairs",
        "header:Idempotency-Key",
    }
    assert "`$.image`: names an image that exists" in refusal["description"]
    assert set(_operation("get", "/v1/images")["responses"]["422"]["x-also-checked"]) == {"query:cursor"}


def test_query_and_header_parameters_have_the_schemas_the_handlers_enforce() -> None:
    assert _parameter("get", "/v1/users", "limit")["schema"] == {"type": "integer", "minimum": 1, "maximum": 500}
    assert "running" in _parameter("get", "/v1/instances", "state")["schema"]["enum"]
    tag = _parameter("get", "/v1/projects", "tag")["schema"]
    assert tag["type"] == "array" and tag["items"]["pattern"].startswith("^[^=")
    assert _parameter("get", "/v1/nodes", "region")["schema"]["pattern"] == shapes.QueryText.__metadata__[0].pattern
    assert _parameter("post", "/v1/users", "Idempotency-Key")["schema"] == {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
    }
    assert _parameter("patch", "/v1/projects/{project_id}", "If-Match")["schema"]["pattern"] == '^"?([0-9]+)"?$'
    assert _parameter("get", "/v1/images/{image_id}", "image_id")["schema"]["format"] == "uuid"


def test_the_event_stream_documents_each_event() -> None:
    event = _operation("get", "/v1/events")["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert event["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/EventRecord"}


async def test_a_fixed_path_is_never_taken_for_an_id() -> None:
    app = make_app(config.load({}, admin_token="x"))
    for method in ("PATCH", "DELETE"):
        match = await app.router.resolve(make_mocked_request(method, "/v1/users/me", app=app))
        assert isinstance(match.http_exception, web.HTTPMethodNotAllowed)
        assert match.http_exception.allowed_methods == {"GET"}
    match = await app.router.resolve(make_mocked_request("GET", "/v1/users/not-an-id", app=app))
    assert isinstance(match.http_exception, web.HTTPNotFound)


def test_a_number_without_a_fraction_is_an_integer_as_json_schema_says() -> None:
    body = b'{"project_id": "9b6f1c3e-8a51-4a3e-9f5e-0c7d2b1a4e6f", "name": "a", "image": "tiny", "vcpus": 2.0, '
    created = decode(body + b'"ram_mb": 512, "disk_gb": 1e1}', shapes.InstanceCreate)
    assert (created.vcpus, created.ram_mb, created.disk_gb) == (2, 512, 10)
    with pytest.raises(Invalid) as refused:
        decode(body + b'"ram_mb": 512.5, "disk_gb": 1}', shapes.InstanceCreate)
    assert refused.value.fields == ["$.ram_mb"]
