"""What every resource route shares: the resource's id in the path, its version as an
ETag and back in `If-Match`, and read-your-writes after an append."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from nebula_core.api import keys
from nebula_core.contract.errors import Invalid, NotFound

V = TypeVar("V")

#: What `If-Match` holds: the ETag (`"<version>"`), or the bare version.
IF_MATCH = re.compile(r'"?([0-9]+)"?')


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    """The UUID in path segment `name`; one that is not a UUID names nothing (`NotFound`)."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError as err:
        raise NotFound(f"no {name.removesuffix('_id')} {request.match_info[name]!r}") from err


def if_match(request: web.Request) -> int | None:
    """The version a client says it is changing (`If-Match: "<version>"`), if it says one."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    version = IF_MATCH.fullmatch(raw.strip())
    if version is None:
        raise Invalid("If-Match carries the version from the resource's ETag", ["header:If-Match"])
    return int(version.group(1))


def etag(version: int) -> dict[str, str]:
    """The header that tells a client which version it holds (what `If-Match` gives back)."""
    return {"ETag": f'"{version}"'}


async def read_your_write(
    request: web.Request,
    seq: int,
    from_read_model: Callable[[], Awaitable[V | None]],
    from_events: Callable[[], Awaitable[V]],
) -> V:
    """What a client that has just appended `seq` must see of what it wrote: the read
    models once they include `seq` (waiting briefly for the projector), else - the
    projector is stopped or behind - the aggregate as its events show it. Never a 404 or
    a 500 for one's own new resource."""
    if await request.app[keys.WRITER].projected(seq):
        view = await from_read_model()
        if view is not None:
            return view
    return await from_events()
