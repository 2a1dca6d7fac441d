"""The OpenAPI 3.1 document, derived from the declared operations and their msgspec types.

It says what the API enforces, so that generated clients and fuzzers agree with it: the
schema of each body, path, query and header parameter is what the handler accepts, and
each operation lists the refusals it may answer (`routing.Operation` says which). What no
schema can say is in the 422's description, field by field, and in its `x-also-checked`."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from nebula_core.api.idempotency import HEADER as IDEMPOTENCY_KEY
from nebula_core.api.queries import DEFAULT_LIMIT, MAX_LIMIT
from nebula_core.api.resources import IF_MATCH
from nebula_core.api.routing import UUID_PATTERN, Operation, Query
from nebula_core.contract import http as shapes
from nebula_core.contract.jsonschema import clean_descriptions

_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content"}
_ERRORS = {
    401: "Missing or invalid token",
    403: "The caller's role does not allow this",
    404: "Not found, or not visible to the caller",
    409: "Conflict: an illegal state transition, a concurrent change (or a stale If-Match), a quota, "
    "or a request with the same Idempotency-Key still in flight",
    422: "Invalid input; `fields` names the offending fields: `$.<path>` in the body, `query:<name>`, `header:<name>`",
    429: "Over the caller's request rate or its open event streams; retry after `Retry-After` seconds",
    503: "A dependency (Postgres, NATS, a node) is away or did not answer in time; retry after `Retry-After` seconds",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}
_PAGE = {
    "limit": Query(f"How many at most (default {DEFAULT_LIMIT})", Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]),
    "cursor": Query("Where to go on from: the `next` of the page before (empty: from the start)"),
}
_CURSOR_CHECK = {"query:cursor": "a cursor this API gave out (`next`), as it gave it"}
_IDEMPOTENCY_CHECK = {
    f"header:{IDEMPOTENCY_KEY}": "not a key the caller used for a different request in the last 24 hours"
}


def document(operations: list[Operation]) -> dict[str, Any]:
    types: list[Any] = [shapes.Error]
    for op in operations:
        types += [t for t in (op.body, op.response, op.list_of, op.stream_of) if t is not None]
        types += [answer_type for _, answer_type in op.responses.values()]
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


def refusals(op: Operation) -> set[int]:
    """The error statuses `op` may answer (each with an `Error` body)."""
    if op.public:
        return set(op.errors)
    found = {401, 429, 503, *op.errors}
    if op.path_parameters:
        found.add(404)
    if op.method == "POST" or op.if_match:
        found.add(409)
    if op.body is not None or op.query or op.paged or op.if_match or op.method == "POST" or op.also_checked:
        found.add(422)
    return found


def _query(op: Operation) -> dict[str, Query]:
    return {**op.query, **(_PAGE if op.paged else {})}


def _also_checked(op: Operation) -> dict[str, str]:
    return {
        **op.also_checked,
        **(_CURSOR_CHECK if op.paged else {}),
        **(_IDEMPOTENCY_CHECK if op.method == "POST" else {}),
    }


def _parameters(op: Operation) -> list[dict[str, Any]]:
    path = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "format": "uuid", "pattern": f"^{UUID_PATTERN}$"},
        }
        for name in op.path_parameters
    ]
    query = []
    for name, param in _query(op).items():
        schema = msgspec.json.schema(param.type)
        assert "$defs" not in schema, f"query parameter {name} of {op.path}: a plain value, not a structure"
        query.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": param.description,
                "schema": {"type": "array", "items": schema} if param.repeatable else schema,
            }
        )
    headers = []
    if op.method == "POST":
        headers.append(
            {
                "name": IDEMPOTENCY_KEY,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "A repeat with the same key (within 24 hours) gets the first answer again; "
                "a key used for a different request is a 422",
            }
        )
    if op.if_match:
        headers.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": f"^{IF_MATCH.pattern}$"},
                "description": "The version this change is based on (the resource's ETag); "
                "a stale one is a 409 and changes nothing",
            }
        )
    return path + query + headers


def _success(op: Operation, by_type: dict[Any, Any]) -> dict[str, Any]:
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
    elif op.stream_of is not None:
        # Each event of the stream, as OpenAPI 3.1 tools read an event stream's schema.
        event = {
            "type": "object",
            "required": ["id", "event", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$", "description": "Its stream sequence"},
                "event": {"type": "string", "description": "Its type"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": by_type[op.stream_of],
                },
            },
        }
        ok["content"] = {op.content_type: {"schema": event}}
    elif op.content_type != "application/json":
        ok["content"] = {op.content_type: {"schema": {"type": "string"}}}
    return ok


def _refusal(op: Operation, status: int, by_type: dict[Any, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": _ERRORS[status],
        "content": {"application/json": {"schema": by_type[shapes.Error]}},
    }
    if status in (429, 503):
        answer["headers"] = _RETRY_AFTER
    checked = _also_checked(op)
    if status == 422 and checked:
        answer["description"] += ". Besides the schemas, the API checks: " + "; ".join(
            f"`{name}`: {what}" for name, what in checked.items()
        )
        answer["x-also-checked"] = checked
    return answer


def _operation(op: Operation, by_type: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "operationId": op.handler.__name__, "parameters": _parameters(op)}
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": by_type[op.body]}}}
    out["responses"] = {str(op.status): _success(op, by_type)}
    for status in sorted(refusals(op)):
        out["responses"][str(status)] = _refusal(op, status, by_type)
    for status, (description, answer_type) in op.responses.items():
        out["responses"][str(status)] = {
            "description": description,
            "content": {"application/json": {"schema": by_type[answer_type]}},
        }
    if op.public:
        out["security"] = []
    return out
