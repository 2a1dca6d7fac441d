"""users (the token is kept only as its sha256), and a deleted user's memberships."""

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


async def _set_disabled(conn: asyncpg.Connection, e: ev.Event, seq: int, disabled: bool) -> None:
    await conn.execute(
        "UPDATE users SET disabled = $2, version = $3, last_seq = $4 WHERE id = $1", e.id, disabled, e.version, seq
    )


async def disabled(conn: asyncpg.Connection, e: ev.UserDisabled, seq: int) -> None:
    await _set_disabled(conn, e, seq, True)


async def enabled(conn: asyncpg.Connection, e: ev.UserEnabled, seq: int) -> None:
    await _set_disabled(conn, e, seq, False)


async def deleted(conn: asyncpg.Connection, e: ev.UserDeleted, seq: int) -> None:
    """The row goes (the events keep the user's history), and so do the user's memberships."""
    await conn.execute("DELETE FROM memberships WHERE user_id = $1", e.id)
    await conn.execute("DELETE FROM users WHERE id = $1", e.id)


HANDLERS = {
    ev.UserCreated: created,
    ev.UserTokenRotated: token_rotated,
    ev.UserDisabled: disabled,
    ev.UserEnabled: enabled,
    ev.UserDeleted: deleted,
}
