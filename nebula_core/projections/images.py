"""images."""

from __future__ import annotations

import asyncpg

from nebula_core.contract import events as ev


async def registered(conn: asyncpg.Connection, e: ev.ImageRegistered, seq: int) -> None:
    await conn.execute(
        """INSERT INTO images (id, name, format, source, sha256, size, min_disk_gb, created_at, version, last_seq,
                                default_user)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
        e.id,
        e.name,
        e.format,
        e.source,
        e.sha256,
        e.size,
        e.min_disk_gb,
        e.at,
        e.version,
        seq,
        e.default_user,
    )


async def deleted(conn: asyncpg.Connection, e: ev.ImageDeleted, seq: int) -> None:
    await conn.execute(
        "UPDATE images SET deleted = true, version = $2, last_seq = $3 WHERE id = $1", e.id, e.version, seq
    )


HANDLERS = {ev.ImageRegistered: registered, ev.ImageDeleted: deleted}
