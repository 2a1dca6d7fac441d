"""keypairs."""

from __future__ import annotations

import asyncpg

from nebula_core.contract import events as ev


async def created(conn: asyncpg.Connection, e: ev.KeypairCreated, seq: int) -> None:
    await conn.execute(
        """INSERT INTO keypairs (id, owner, name, public_key, fingerprint, created_at, version, last_seq)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        e.id,
        e.owner,
        e.name,
        e.public_key,
        e.fingerprint,
        e.at,
        e.version,
        seq,
    )


async def deleted(conn: asyncpg.Connection, e: ev.KeypairDeleted, seq: int) -> None:
    await conn.execute(
        "UPDATE keypairs SET deleted = true, version = $2, last_seq = $3 WHERE id = $1", e.id, e.version, seq
    )


HANDLERS = {ev.KeypairCreated: created, ev.KeypairDeleted: deleted}
