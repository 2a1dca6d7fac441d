"""instances: one row per instance, its state following the lifecycle events."""

from __future__ import annotations

import asyncpg

from nebula_core.contract import events as ev


async def created(conn: asyncpg.Connection, e: ev.InstanceCreated, seq: int) -> None:
    await conn.execute(
        """INSERT INTO instances (id, project_id, owner_id, name, description, tags, region, vcpus, ram_mb, disk_gb,
                                  image_id, user_data_size, user_data_sha256, state, created_at, updated_at,
                                  version, last_seq)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'pending', $14, $14, $15, $16)""",
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
    """Update the given columns (names are ours, never user input) plus the bookkeeping ones."""
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


def _state(state: str, **extra: object):  # type: ignore[no-untyped-def]
    async def handler(conn: asyncpg.Connection, e: ev.Event, seq: int) -> None:
        await _set(conn, e, seq, state=state, **extra)

    return handler


async def scheduled(conn: asyncpg.Connection, e: ev.InstanceScheduled, seq: int) -> None:
    await _set(conn, e, seq, state="scheduled", node_id=e.node_id, error="")


async def failed(conn: asyncpg.Connection, e: ev.InstanceFailed, seq: int) -> None:
    await _set(conn, e, seq, state="error", error=e.reason)


async def lost(conn: asyncpg.Connection, e: ev.InstanceLost, seq: int) -> None:
    await _set(conn, e, seq, state="unknown", error=e.reason)


async def rescheduled(conn: asyncpg.Connection, e: ev.InstanceRescheduled, seq: int) -> None:
    await _set(conn, e, seq, state="pending", node_id=None, error="")


async def booted(conn: asyncpg.Connection, e: ev.InstanceBooted, seq: int) -> None:
    await _set(conn, e, seq, booted_at=e.booted_at)


HANDLERS = {
    ev.InstanceCreated: created,
    ev.InstanceUpdated: updated,
    ev.InstanceScheduled: scheduled,
    ev.InstanceLaunched: _state("running"),
    ev.InstanceStopRequested: _state("stopping"),
    ev.InstanceStopped: _state("stopped"),
    ev.InstanceStartRequested: _state("starting"),
    ev.InstanceStarted: _state("running"),
    ev.InstanceRebootRequested: _state("rebooting"),
    ev.InstanceRebooted: _state("running"),
    ev.InstanceDeleteRequested: _state("deleting"),
    ev.InstanceDeleted: _state("deleted"),
    ev.InstanceFailed: failed,
    ev.InstanceLost: lost,
    ev.InstanceRescheduled: rescheduled,
    ev.InstanceBooted: booted,
}
