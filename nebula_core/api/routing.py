"""Operations: each handler is declared once with its method, path, body and answer types;
the aiohttp routes and the OpenAPI document are both derived from that declaration."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from nebula_core.contract.errors import Invalid

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type | None = None
    response: type | None = None
    status: int = 200
    list_of: type | None = None
    query: dict[str, str] = field(default_factory=dict)
    public: bool = False
    content_type: str = "application/json"


class Operations:
    """The operations of one module of the API."""

    def __init__(self) -> None:
        self.all: list[Operation] = []

    def __call__(self, method: str, path: str, *, summary: str, **options: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.all.append(Operation(method, path, handler, summary, **options))
            return handler

        return register

    def add_to(self, app: web.Application) -> None:
        for op in self.all:
            app.router.add_route(op.method, op.path, op.handler, name=route_name(op))


def route_name(op: Operation) -> str:
    return op.handler.__name__


def respond(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json", headers=headers)


_PATH = re.compile(r"(?:at|in) `(\$[^`]*)`")
_FIELD = re.compile(r"field `([^`]+)`")


def validation_fields(message: str) -> list[str]:
    """JSON paths named by a msgspec validation message (`$.vcpus`, `$.tags.x`, …)."""
    path = _PATH.search(message)
    # msgspec writes a dict value's path as `$.tags[...]`: name the dict itself.
    where = path.group(1).replace("[...]", "") if path else "$"
    named = _FIELD.search(message)
    if named and ("unknown field" in message or "missing required field" in message):
        return [f"{where}.{named.group(1)}"]
    return [where]


def decode(data: bytes, body_type: type[T]) -> T:
    """The request body as `body_type`, or `Invalid` naming the offending field."""
    if not data:
        raise Invalid("a JSON body is required", ["$"])
    try:
        return msgspec.json.decode(data, type=body_type)
    except msgspec.ValidationError as err:
        raise Invalid(str(err), validation_fields(str(err))) from err
    except msgspec.DecodeError as err:
        raise Invalid(f"malformed JSON: {err}", ["$"]) from err


async def body(request: web.Request, body_type: type[T]) -> T:
    return decode(await request.read(), body_type)
