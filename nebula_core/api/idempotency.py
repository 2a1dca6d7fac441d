"""`Idempotency-Key` on POST: a repeated request gets the first answer again, for 24 hours.

A request with a key claims it (per caller) before it is handled, with a hash of the
request; its answer (status and body) is kept with the claim. A repeat with the same
request replays that answer (`Idempotent-Replayed: true`); a repeat with a different
request is a 422. A request that failed (a 4xx) frees its key; one whose answer was a 5xx,
or that is still in flight, leaves the key claimed without an answer, and a repeat runs
again - except a create whose first attempt got as far as its first event.

Handlers that create something derive its id from the key (`new_id`), so two attempts
cannot create two things: the second one's first event conflicts. Then, and whenever a
repeat finds that the first attempt's resource exists, the answer is that first result:
the resource as created (from the read models, once they include it), with the create's
status - whether the first attempt is still in flight or its answer was lost to a 5xx.

Records expire after `RETENTION`: an expired key is a new one (though a create under it
still finds the resource its id names). Each API process purges expired records every
`PURGE_EVERY_S`, in bounded batches (`purging`, in the app's cleanup context).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

import asyncpg
from aiohttp import web

from nebula_core.api import keys, queries
from nebula_core.api.auth import PRINCIPAL, principal
from nebula_core.api.resources import etag
from nebula_core.api.routing import respond
from nebula_core.contract.errors import ConcurrencyConflict, Conflict, Invalid, NebulaError

log = logging.getLogger("nebula.api.idempotency")

HEADER = "Idempotency-Key"
#: How long a key's answer is kept (then the key is new again).
RETENTION = timedelta(hours=24)
#: How often each API process deletes expired records, at most how many per statement,
#: and at most how many statements per round (the rest waits for the next round).
PURGE_EVERY_S = 600.0
PURGE_BATCH = 1000
PURGE_BATCHES_MAX = 50
_NAMESPACE = uuid.UUID("6f0d4c57-2a55-4f41-9d8a-61d3b1a1c0de")
KEY = web.RequestKey("idempotency_key", str)
CREATED = web.RequestKey("created_from_key", uuid.UUID)


async def _instance(pool: asyncpg.Pool, instance_id: uuid.UUID) -> Any:
    row = await queries.instance(pool, instance_id)
    return None if row is None else queries.instance_shape(row)


async def _keypair(pool: asyncpg.Pool, keypair_id: uuid.UUID) -> Any:
    row = await pool.fetchrow("SELECT * FROM keypairs WHERE id = $1 AND NOT deleted", keypair_id)
    return None if row is None else queries.keypair_shape(row)


@dataclass(frozen=True)
class Create:
    """A create whose id `new_id` derives from the key: the kind of aggregate, how its
    resource is read back, and the status of the create's answer."""

    kind: str
    read: Callable[[asyncpg.Pool, uuid.UUID], Awaitable[Any]]
    status: int


#: The creates, by the collection they are POSTed to.
CREATES = {
    "/v1/projects": Create("project", queries.project, 201),
    "/v1/users": Create("user", queries.user, 201),
    "/v1/images": Create("image", queries.image, 201),
    "/v1/instances": Create("instance", _instance, 202),
    "/v1/keypairs": Create("keypair", _keypair, 201),
}


def _derived_id(who: str, key: str, kind: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{who}\n{key}\n{kind}")


def new_id(request: web.Request, kind: str) -> uuid.UUID:
    """A fresh id, or, for a request with an Idempotency-Key, the same id every time."""
    key = request.get(KEY)
    if key is None:
        return uuid.uuid4()
    request[CREATED] = created = _derived_id(principal(request).key, key, kind)
    return created


class Stored(NamedTuple):
    request_hash: str
    status: int | None
    response: bytes | None


class Claim:
    """One caller's record of one key."""

    def __init__(self, pool: asyncpg.Pool, who: str, key: str) -> None:
        self.pool, self.who, self.key = pool, who, key

    async def take(self, method: str, path: str, request_hash: str) -> Stored | None:
        """Claim the key (an expired record counts as none); None when this request has it,
        else the record that holds it."""
        claimed = await self.pool.fetchval(
            """INSERT INTO idempotency_keys (principal, key, method, path, request_hash)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (principal, key) DO UPDATE
                 SET method = EXCLUDED.method, path = EXCLUDED.path, request_hash = EXCLUDED.request_hash,
                     status = NULL, response = NULL, created_at = now()
                 WHERE idempotency_keys.created_at < now() - $6::interval
               RETURNING true""",
            self.who,
            self.key,
            method,
            path,
            request_hash,
            RETENTION,
        )
        if claimed:
            return None
        row = await self.pool.fetchrow(
            "SELECT request_hash, status, response FROM idempotency_keys WHERE principal = $1 AND key = $2",
            self.who,
            self.key,
        )
        if row is None:  # purged in between: nothing holds it
            return None
        response = row["response"]
        return Stored(row["request_hash"], row["status"], None if response is None else bytes(response))

    async def answer(self, status: int, body: bytes) -> None:
        """Keep the answer (the first one, if two attempts raced)."""
        await self.pool.execute(
            """UPDATE idempotency_keys SET status = $3, response = $4
               WHERE principal = $1 AND key = $2 AND response IS NULL""",
            self.who,
            self.key,
            status,
            body,
        )

    async def failed(self, status: int) -> None:
        """The attempt ended without an answer to keep: a 4xx frees the key (the request was
        refused; a corrected one may use it), a 5xx keeps it claimed with no answer."""
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            if status < 500:
                await self.pool.execute(
                    "DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND response IS NULL",
                    self.who,
                    self.key,
                )
            else:
                await self.pool.execute(
                    """UPDATE idempotency_keys SET status = $3
                       WHERE principal = $1 AND key = $2 AND response IS NULL""",
                    self.who,
                    self.key,
                    status,
                )


def _replay(status: int, body: bytes) -> web.Response:
    return web.Response(
        body=body, status=status, content_type="application/json", headers={"Idempotent-Replayed": "true"}
    )


def _status_of(err: Exception) -> int:
    if isinstance(err, NebulaError):
        return err.http_status
    if isinstance(err, web.HTTPException):
        return err.status
    return 500


@web.middleware
async def idempotency(request: web.Request, handler):
    key = request.headers.get(HEADER)
    if request.method != "POST" or key is None or PRINCIPAL not in request:
        return await handler(request)
    if not 1 <= len(key) <= 255:
        raise Invalid(f"{HEADER} must be 1 to 255 characters", [f"header:{HEADER}"])
    digest = hashlib.sha256(request.method.encode() + b" " + request.path.encode() + b"\n" + await request.read())
    request_hash = digest.hexdigest()
    claim = Claim(request.app[keys.POOL], principal(request).key, key)
    stored = await claim.take(request.method, request.path, request_hash)
    if stored is not None:
        if stored.request_hash != request_hash:
            raise Invalid(f"this {HEADER} was used for a different request", [f"header:{HEADER}"])
        if stored.status is not None and stored.response is not None:
            return _replay(stored.status, stored.response)
        # In flight, or its answer was a 5xx: if it got as far as creating, answer that.
        first = await _first_result(request, key)
        if first is not None:
            await claim.answer(first.status, bytes(first.body))  # type: ignore[arg-type]
            return first
    request[KEY] = key
    try:
        response = await handler(request)
    except ConcurrencyConflict as err:
        # A create under this key conflicts with the event of an earlier attempt of it.
        first = await _first_result(request, key) if CREATED in request else None
        if first is None:
            await claim.failed(_status_of(err))
            raise
        response = first
    except Exception as err:
        await claim.failed(_status_of(err))
        raise
    if response.status < 500 and isinstance(response, web.Response) and response.body is not None:
        await claim.answer(response.status, bytes(response.body))  # type: ignore[arg-type]
    else:
        await claim.failed(response.status)
    return response


async def _first_result(request: web.Request, key: str) -> web.Response | None:
    """The answer of a create under this key whose first event is stored: the resource as
    the read models show it once they include the resource's events. None when the request
    is not such a create, or it created nothing (yet)."""
    create = CREATES.get(request.path)
    if create is None:
        return None
    resource_id = _derived_id(principal(request).key, key, create.kind)
    writer = request.app[keys.WRITER]
    history = await writer.store.history(create.kind, resource_id)
    if not history:
        return None
    if not await writer.projected(history[-1].seq):
        raise ConcurrencyConflict(
            f"{create.kind} {resource_id} was created under this {HEADER}; its answer is not ready yet: retry"
        )
    view = await create.read(request.app[keys.POOL], resource_id)
    if view is None:
        raise Conflict(f"this {HEADER} created {create.kind} {resource_id}, which is gone")
    version = getattr(view, "version", None)
    return respond(
        view, create.status, headers={**(etag(version) if version is not None else {}), "Idempotent-Replayed": "true"}
    )


# --- expiry ------------------------------------------------------------------------------


async def purge_expired(pool: asyncpg.Pool) -> int:
    """Delete the records older than `RETENTION`, `PURGE_BATCH` at a time, at most
    `PURGE_BATCHES_MAX` batches; how many were deleted."""
    deleted = 0
    for _ in range(PURGE_BATCHES_MAX):
        status = await pool.execute(
            """DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
                 SELECT ctid FROM idempotency_keys WHERE created_at < now() - $1::interval LIMIT $2))""",
            RETENTION,
            PURGE_BATCH,
        )
        count = int(status.split()[-1])
        deleted += count
        if count < PURGE_BATCH:
            break
    return deleted


async def _purge_periodically(pool: asyncpg.Pool, every: float) -> None:
    while True:
        try:
            if deleted := await purge_expired(pool):
                log.info("idempotency: purged %d expired record(s)", deleted)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
            log.warning("idempotency: purge failed (retrying in %.0fs): %r", every, err)
        await asyncio.sleep(every)


async def purging(app: web.Application) -> AsyncIterator[None]:
    """The app's purge of expired records: at start, then every `PURGE_EVERY_S`; a task owned
    by the app, cancelled and awaited when it stops (before the pool closes)."""
    task = asyncio.create_task(_purge_periodically(app[keys.POOL], PURGE_EVERY_S), name="idempotency-purge")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
