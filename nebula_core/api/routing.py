"""Operations: each handler is declared once with its method, path, body and answer types,
its query parameters and the refusals it may answer; the aiohttp routes and the OpenAPI
document are both derived from that declaration.

Every path parameter is a UUID (an id): the route matches only a UUID there, so a fixed
path beside a templated one (`/v1/users/me`, `/v1/users/{user_id}`) is never taken for it."""

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

#: What a path parameter matches: a UUID, in the form `resources.path_uuid` reads and the API writes.
UUID_PATTERN = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_PATH_PARAMETER = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class Query:
    """A query parameter: what it means, and the msgspec type of its value (its schema is
    what the handler accepts: a value of that type is never refused for its form)."""

    description: str
    type: Any = str
    repeatable: bool = False


@dataclass(frozen=True)
class Operation:
    """One operation. Beyond the answer, the document lists the refusals it may give:
    401, 429 and 503 for every authenticated one; 404 for one with a path parameter; 422
    for one that reads a body, a query or a header; 409 for a POST (a twin with the same
    Idempotency-Key in flight); and `errors`, what the handler itself refuses with.
    `also_checked` names what the API checks that no schema can say (a reference to
    something that must exist, a size in bytes): field → what is checked."""

    method: str
    path: str
    handler: Handler
    summary: str
    body: type | None = None
    response: type | None = None
    status: int = 200
    list_of: type | None = None
    query: dict[str, Query] = field(default_factory=dict)
    #: `?limit=` and `?cursor=` page through the list.
    paged: bool = False
    #: Reads `If-Match: "<version>"` (a stale version is a 409).
    if_match: bool = False
    errors: tuple[int, ...] = ()
    also_checked: dict[str, str] = field(default_factory=dict)
    #: Of a `text/event-stream`: the type of each event's `data` (JSON).
    stream_of: type | None = None
    #: Other answers whose body is not an `Error`: status → (what it means, its type).
    responses: dict[int, tuple[str, type]] = field(default_factory=dict)
    public: bool = False
    content_type: str = "application/json"

    @property
    def path_parameters(self) -> list[str]:
        return _PATH_PARAMETER.findall(self.path)

    @property
    def route(self) -> str:
        """The path as aiohttp matches it: each parameter a UUID."""
        return _PATH_PARAMETER.sub(lambda m: f"{{{m.group(1)}:{UUID_PATTERN}}}", self.path)


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
            app.router.add_route(op.method, op.route, op.handler, name=route_name(op))


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


def _whole_numbers(value: Any) -> Any:
    """`value` with every float that is a whole number as an int: JSON has one kind of number,
    and JSON Schema counts 2.0 an integer, as many clients write it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def decode(data: bytes, body_type: type[T]) -> T:
    """The request body as `body_type`, or `Invalid` naming the offending field."""
    if not data:
        raise Invalid("a JSON body is required", ["$"])
    try:
        return msgspec.convert(_whole_numbers(msgspec.json.decode(data)), body_type)
    except msgspec.ValidationError as err:
        raise Invalid(str(err), validation_fields(str(err))) from err
    except msgspec.DecodeError as err:
        raise Invalid(f"malformed JSON: {err}", ["$"]) from err


async def body(request: web.Request, body_type: type[T]) -> T:
    return decode(await request.read(), body_type)
