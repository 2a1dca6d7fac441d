"""The OpenAPI 3.1 document, derived from the declared operations and their msgspec types."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from nebula_core.api.routing import Operation
from nebula_core.contract import http as shapes
from nebula_core.contract.jsonschema import clean_descriptions

_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content"}
_ERRORS = {
    "401": "Missing or invalid token",
    "403": "The caller's role does not allow this",
    "404": "Not found, or not visible to the caller",
    "409": "Conflict: illegal state transition, concurrent modification, quota",
    "422": "Invalid input; `fields` names the offending fields",
}


def document(operations: list[Operation]) -> dict[str, Any]:
    types: list[Any] = [shapes.Error]
    for op in operations:
        types += [t for t in (op.body, op.response, op.list_of) if t is not None]
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(unique, ref_template="#/components/schemas/{name}")
    by_type = dict(zip(unique, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, by_type)
    return clean_descriptions(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "Nebula API",
                "version": "1",
                "description": "Projects, users, images and instances of a Nebula cloud. "
                "Authenticate with `Authorization: Bearer <token>`.",
            },
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
            "security": [{"bearer": []}],
        }
    )


def _operation(op: Operation, by_type: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.handler.__name__,
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", op.path)
        ]
        + [
            {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
            for name, text in op.query.items()
        ],
    }
    if op.method == "POST":
        out["parameters"].append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "A repeat with the same key gets the first answer again",
            }
        )
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": by_type[op.body]}}}
    ok: dict[str, Any] = {"description": _STATUS_TEXT.get(op.status, "OK")}
    if op.response is not None:
        ok["content"] = {op.content_type: {"schema": by_type[op.response]}}
    elif op.list_of is not None:
        page = {
            "type": "object",
            "required": ["items", "next"],
            "properties": {
                "items": {"type": "array", "items": by_type[op.list_of]},
                "next": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        }
        ok["content"] = {op.content_type: {"schema": page}}
    elif op.content_type != "application/json":
        ok["content"] = {op.content_type: {"schema": {"type": "string"}}}
    error = {"content": {"application/json": {"schema": by_type[shapes.Error]}}}
    out["responses"] = {
        str(op.status): ok,
        **({} if op.public else {k: {"description": v, **error} for k, v in _ERRORS.items()}),
    }
    if op.public:
        out["security"] = []
    return out
