"""The lock that makes one project's writers take turns: creating an instance in it
(counting its usage against its quotas) and deleting it. Held across API replicas (a
Postgres advisory lock), for one transaction."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg

from nebula_core.api.writes import Writer
from nebula_core.contract.errors import NotFound, Unavailable

#: Wait at most this long for the read models to include what was appended before the lock.
CATCH_UP_S = 5.0


@contextlib.asynccontextmanager
async def project_lock(writer: Writer, project_id: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
    """A connection, in a transaction, holding project `project_id`'s lock, on read models
    that include every event appended before it was taken - so the previous holder's
    instance or deletion shows. `NotFound` if the project is deleted (or was never
    projected); `Unavailable` if the read models do not catch up in time.

    A holder that appends waits for the read models to include its event before it lets
    go; if they do not in time, the next holder's catch-up waits for it instead."""
    async with writer.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"quota:{project_id}")
        if not await writer.projected(await writer.stream_head(), timeout=CATCH_UP_S, using=conn):
            raise Unavailable("the read models are lagging; the project cannot be checked now - retry shortly")
        if not await conn.fetchval("SELECT NOT deleted FROM projects WHERE id = $1", project_id):
            raise NotFound(f"project {project_id} not found")
        yield conn
