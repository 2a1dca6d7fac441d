"""`Idempotency-Key` on POST: a repeated request gets the first answer again.

The first answer (status and body) is kept per caller and key, with a hash of the
request; a repeat with the same request replays it (`Idempotent-Replayed: true`), a repeat
with a different request is a 422. Handlers that create something derive its id from the
key (`new_id`), so even two copies racing in parallel cannot create two things: the
second one's first event conflicts, and it answers with the first one's stored answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

from aiohttp import web

from nebula_core.api import keys
from nebula_core.api.auth import PRINCIPAL, principal
from nebula_core.contract.errors import ConcurrencyConflict, Invalid

HEADER = "Idempotency-Key"
_NAMESPACE = uuid.UUID("6f0d4c57-2a55-4f41-9d8a-61d3b1a1c0de")
_RACE_WAIT_S = 5.0
KEY = web.RequestKey("idempotency_key", str)
ID_FROM_KEY = web.RequestKey("id_from_key", bool)


def new_id(request: web.Request, kind: str) -> uuid.UUID:
    """A fresh id, or, for a request with an Idempotency-Key, the same id every time."""
    key = request.get(KEY)
    if key is None:
        return uuid.uuid4()
    request[ID_FROM_KEY] = True
    return uuid.uuid5(_NAMESPACE, f"{principal(request).key}\n{key}\n{kind}")


async def _stored(request: web.Request, key: str) -> tuple[str, int, bytes] | None:
    row = await request.app[keys.POOL].fetchrow(
        "SELECT request_hash, status, response FROM idempotency_keys WHERE principal = $1 AND key = $2",
        principal(request).key,
        key,
    )
    return None if row is None else (row["request_hash"], row["status"], bytes(row["response"]))


def _replay(status: int, body: bytes) -> web.Response:
    return web.Response(
        body=body, status=status, content_type="application/json", headers={"Idempotent-Replayed": "true"}
    )


@web.middleware
async def idempotency(request: web.Request, handler):
    key = request.headers.get(HEADER)
    if request.method != "POST" or key is None or PRINCIPAL not in request:
        return await handler(request)
    if not 1 <= len(key) <= 255:
        raise Invalid(f"{HEADER} must be 1 to 255 characters", [f"header:{HEADER}"])
    digest = hashlib.sha256(request.method.encode() + b" " + request.path.encode() + b"\n" + await request.read())
    request_hash = digest.hexdigest()
    stored = await _stored(request, key)
    if stored is not None:
        return _answer_again(stored, request_hash)
    request[KEY] = key
    try:
        response = await handler(request)
    except ConcurrencyConflict:
        if not request.get(ID_FROM_KEY):
            raise  # an ordinary conflict, not a twin of this request
        return await _answer_of_the_racing_twin(request, key, request_hash)
    if response.status < 500 and isinstance(response, web.Response) and response.body is not None:
        await request.app[keys.POOL].execute(
            """INSERT INTO idempotency_keys (principal, key, method, path, request_hash, status, response)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING""",
            principal(request).key,
            key,
            request.method,
            request.path,
            request_hash,
            response.status,
            bytes(response.body),  # type: ignore[arg-type]
        )
    return response


def _answer_again(stored: tuple[str, int, bytes], request_hash: str) -> web.Response:
    stored_hash, status, body = stored
    if stored_hash != request_hash:
        raise Invalid(f"this {HEADER} was used for a different request", [f"header:{HEADER}"])
    return _replay(status, body)


async def _answer_of_the_racing_twin(request: web.Request, key: str, request_hash: str) -> web.Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _RACE_WAIT_S
    while loop.time() < deadline:
        stored = await _stored(request, key)
        if stored is not None:
            return _answer_again(stored, request_hash)
        await asyncio.sleep(0.05)
    raise ConcurrencyConflict(f"a request with the same {HEADER} is still being handled; retry it")
