"""instances: one row per instance, its state following the lifecycle events as
`domain.states.STATE_AFTER` says (the table the Instance aggregate follows too)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from nebula_core.contract import events as ev
from nebula_core.domain.states import STATE_AFTER, state_after


async def created(conn: asyncpg.Connection, e: ev.InstanceCreated, seq: int) -> None:
    await conn.execute(
        """INSERT INTO instances (id, project_id, owner_id, name, description, tags, region, vcpus, ram_mb, disk_gb,
                                  image_id, user_data_size, user_data_sha256, state, created_at, updated_at,
                                  version, last_seq)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $17, $14, $14, $15, $16)""",
        e.id,
        e.project_id,
        e.owner_id,
        e.name,
        e.description,
        e.tags,
        e.region,
        e.flavor.vcpus,
        e.flavor.ram_mb,
        e.flavor.disk_gb,
        e.image_id,
        e.user_data_size,
        e.user_data_sha256,
        e.at,
        e.version,
        seq,
        state_after(ev.InstanceCreated),
    )


async def updated(conn: asyncpg.Connection, e: ev.InstanceUpdated, seq: int) -> None:
    await conn.execute(
        """UPDATE instances SET name = $2, description = $3, tags = $4, updated_at = $5, version = $6, last_seq = $7
           WHERE id = $1""",
        e.id,
        e.name,
        e.description,
        e.tags,
        e.at,
        e.version,
        seq,
    )


async def _set(conn: asyncpg.Connection, e: ev.Event, seq: int, **columns: object) -> None:
    """Update the given columns (names are ours, never user input), the state the event
    leads to (if it moves it) and the bookkeeping columns."""
    state = STATE_AFTER[type(e)]
    if state is not None:
        columns = {"state": state, **columns}
    names = list(columns)
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=5))
    await conn.execute(
        f"UPDATE instances SET updated_at = $2, version = $3, last_seq = $4{', ' if names else ''}{assignments} WHERE id = $1",
        e.id,
        e.at,
        e.version,
        seq,
        *columns.values(),
    )


async def moved(conn: asyncpg.Connection, e: ev.Event, seq: int) -> None:
    """An event that changes nothing but the state."""
    await _set(conn, e, seq)


async def scheduled(conn: asyncpg.Connection, e: ev.InstanceScheduled, seq: int) -> None:
    await _set(conn, e, seq, node_id=e.node_id, error="")


async def failed(conn: asyncpg.Connection, e: ev.InstanceFailed, seq: int) -> None:
    await _set(conn, e, seq, error=e.reason)


async def lost(conn: asyncpg.Connection, e: ev.InstanceLost, seq: int) -> None:
    await _set(conn, e, seq, error=e.reason)


async def rescheduled(conn: asyncpg.Connection, e: ev.InstanceRescheduled, seq: int) -> None:
    await _set(conn, e, seq, node_id=None, error="", addresses=[])


async def booted(conn: asyncpg.Connection, e: ev.InstanceBooted, seq: int) -> None:
    await _set(conn, e, seq, booted_at=e.booted_at)


async def addresses_changed(conn: asyncpg.Connection, e: ev.InstanceAddressesChanged, seq: int) -> None:
    await _set(conn, e, seq, addresses=list(e.addresses))


#: Every instance event of the state table; those with more to record than the state have
#: a handler of their own.
HANDLERS: dict[type[ev.Event], Callable[..., Awaitable[None]]] = {
    **dict.fromkeys(STATE_AFTER, moved),
    ev.InstanceCreated: created,
    ev.InstanceUpdated: updated,
    ev.InstanceScheduled: scheduled,
    ev.InstanceFailed: failed,
    ev.InstanceLost: lost,
    ev.InstanceRescheduled: rescheduled,
    ev.InstanceBooted: booted,
    ev.InstanceAddressesChanged: addresses_changed,
}
