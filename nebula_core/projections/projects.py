"""projects and memberships."""

from __future__ import annotations

import asyncpg

from nebula_core.contract import events as ev


async def created(conn: asyncpg.Connection, e: ev.ProjectCreated, seq: int) -> None:
    await conn.execute(
        """INSERT INTO projects (id, name, description, tags, quotas, created_at, updated_at, version, last_seq)
           VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8)""",
        e.id,
        e.name,
        e.description,
        e.tags,
        e.quotas,
        e.at,
        e.version,
        seq,
    )


async def updated(conn: asyncpg.Connection, e: ev.ProjectUpdated, seq: int) -> None:
    await conn.execute(
        """UPDATE projects SET name = $2, description = $3, tags = $4, quotas = $5,
                  updated_at = $6, version = $7, last_seq = $8 WHERE id = $1""",
        e.id,
        e.name,
        e.description,
        e.tags,
        e.quotas,
        e.at,
        e.version,
        seq,
    )


async def member_set(conn: asyncpg.Connection, e: ev.ProjectMemberSet, seq: int) -> None:
    await conn.execute(
        """INSERT INTO memberships (project_id, user_id, role, since) VALUES ($1, $2, $3, $4)
           ON CONFLICT (project_id, user_id) DO UPDATE SET role = EXCLUDED.role""",
        e.id,
        e.user_id,
        e.role,
        e.at,
    )
    await _touch(conn, e, seq)


async def member_removed(conn: asyncpg.Connection, e: ev.ProjectMemberRemoved, seq: int) -> None:
    await conn.execute("DELETE FROM memberships WHERE project_id = $1 AND user_id = $2", e.id, e.user_id)
    await _touch(conn, e, seq)


async def deleted(conn: asyncpg.Connection, e: ev.ProjectDeleted, seq: int) -> None:
    await conn.execute("DELETE FROM memberships WHERE project_id = $1", e.id)
    await conn.execute(
        "UPDATE projects SET deleted = true, updated_at = $2, version = $3, last_seq = $4 WHERE id = $1",
        e.id,
        e.at,
        e.version,
        seq,
    )


async def _touch(conn: asyncpg.Connection, e: ev.Event, seq: int) -> None:
    await conn.execute(
        "UPDATE projects SET updated_at = $2, version = $3, last_seq = $4 WHERE id = $1", e.id, e.at, e.version, seq
    )


HANDLERS = {
    ev.ProjectCreated: created,
    ev.ProjectUpdated: updated,
    ev.ProjectMemberSet: member_set,
    ev.ProjectMemberRemoved: member_removed,
    ev.ProjectDeleted: deleted,
}
