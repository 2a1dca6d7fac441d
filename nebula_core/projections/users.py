"""users (the token is kept only as its sha256)."""

from __future__ import annotations

import asyncpg

from nebula_core.contract import events as ev


async def created(conn: asyncpg.Connection, e: ev.UserCreated, seq: int) -> None:
    await conn.execute(
        """INSERT INTO users (id, name, token_hash, is_admin, created_at, version, last_seq)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        e.id,
        e.name,
        e.token_hash,
        e.is_admin,
        e.at,
        e.version,
        seq,
    )


async def token_rotated(conn: asyncpg.Connection, e: ev.UserTokenRotated, seq: int) -> None:
    await conn.execute(
        "UPDATE users SET token_hash = $2, version = $3, last_seq = $4 WHERE id = $1",
        e.id,
        e.token_hash,
        e.version,
        seq,
    )


HANDLERS = {ev.UserCreated: created, ev.UserTokenRotated: token_rotated}
