"""The projection's checkpoint: the last stream sequence the read models include, one row
written in the same transaction as the rows it covers."""

from __future__ import annotations

import asyncpg

#: The one projection whose checkpoint covers every read-model table.
PROJECTION = "read_models"


async def lock_checkpoint(conn: asyncpg.Connection) -> int:
    """Lock the checkpoint row for this transaction and return it (creating it at 0)."""
    await conn.execute(
        "INSERT INTO projection_checkpoints (projection, last_seq) VALUES ($1, 0) ON CONFLICT DO NOTHING", PROJECTION
    )
    return int(
        await conn.fetchval("SELECT last_seq FROM projection_checkpoints WHERE projection = $1 FOR UPDATE", PROJECTION)
    )


async def save_checkpoint(conn: asyncpg.Connection, seq: int) -> None:
    await conn.execute(
        "UPDATE projection_checkpoints SET last_seq = $2, updated_at = now() WHERE projection = $1", PROJECTION, seq
    )


async def checkpoint(pool: asyncpg.Pool | asyncpg.Connection) -> int:
    """The last stream sequence the read models include."""
    value = await pool.fetchval("SELECT last_seq FROM projection_checkpoints WHERE projection = $1", PROJECTION)
    return int(value or 0)
