"""nodes and the claims on them (allocation totals are kept in step with node_claims)."""

from __future__ import annotations

import asyncpg

from nebula_core.contract import events as ev


async def registered(conn: asyncpg.Connection, e: ev.NodeRegistered, seq: int) -> None:
    await conn.execute(
        """INSERT INTO nodes (id, aggregate_id, region, vcpus, ram_mb, disk_gb, cpu_ratio, ram_ratio, disk_ratio,
                              agent_version, registered_at, updated_at, version, last_seq)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13)""",
        e.name,
        e.id,
        e.region,
        e.capacity.vcpus,
        e.capacity.ram_mb,
        e.capacity.disk_gb,
        e.overcommit.cpu,
        e.overcommit.ram,
        e.overcommit.disk,
        e.agent_version,
        e.at,
        e.version,
        seq,
    )


async def reregistered(conn: asyncpg.Connection, e: ev.NodeReregistered, seq: int) -> None:
    await conn.execute(
        """UPDATE nodes SET region = $2, vcpus = $3, ram_mb = $4, disk_gb = $5, cpu_ratio = $6, ram_ratio = $7,
                  disk_ratio = $8, agent_version = $9, updated_at = $10, version = $11, last_seq = $12
           WHERE aggregate_id = $1""",
        e.id,
        e.region,
        e.capacity.vcpus,
        e.capacity.ram_mb,
        e.capacity.disk_gb,
        e.overcommit.cpu,
        e.overcommit.ram,
        e.overcommit.disk,
        e.agent_version,
        e.at,
        e.version,
        seq,
    )


async def claimed(conn: asyncpg.Connection, e: ev.NodeResourcesClaimed, seq: int) -> None:
    node_id = await conn.fetchval("SELECT id FROM nodes WHERE aggregate_id = $1", e.id)
    await conn.execute(
        "INSERT INTO node_claims (node_id, instance_id, vcpus, ram_mb, disk_gb) VALUES ($1, $2, $3, $4, $5)",
        node_id,
        e.instance_id,
        e.amount.vcpus,
        e.amount.ram_mb,
        e.amount.disk_gb,
    )
    await _recount(conn, e, seq)


async def released(conn: asyncpg.Connection, e: ev.NodeResourcesReleased, seq: int) -> None:
    await conn.execute(
        "DELETE FROM node_claims WHERE instance_id = $2 AND node_id = (SELECT id FROM nodes WHERE aggregate_id = $1)",
        e.id,
        e.instance_id,
    )
    await _recount(conn, e, seq)


async def marked_down(conn: asyncpg.Connection, e: ev.NodeMarkedDown, seq: int) -> None:
    await _set_down(conn, e, seq, True)


async def marked_up(conn: asyncpg.Connection, e: ev.NodeMarkedUp, seq: int) -> None:
    await _set_down(conn, e, seq, False)


async def _set_down(conn: asyncpg.Connection, e: ev.Event, seq: int, down: bool) -> None:
    await conn.execute(
        "UPDATE nodes SET down = $2, updated_at = $3, version = $4, last_seq = $5 WHERE aggregate_id = $1",
        e.id,
        down,
        e.at,
        e.version,
        seq,
    )


async def _recount(conn: asyncpg.Connection, e: ev.Event, seq: int) -> None:
    await conn.execute(
        """UPDATE nodes n SET
               alloc_vcpus = c.vcpus, alloc_ram_mb = c.ram_mb, alloc_disk_gb = c.disk_gb, instances = c.count,
               updated_at = $2, version = $3, last_seq = $4
           FROM (SELECT coalesce(sum(vcpus), 0) AS vcpus, coalesce(sum(ram_mb), 0) AS ram_mb,
                        coalesce(sum(disk_gb), 0) AS disk_gb, count(*) AS count
                 FROM node_claims WHERE node_id = (SELECT id FROM nodes WHERE aggregate_id = $1)) c
           WHERE n.aggregate_id = $1""",
        e.id,
        e.at,
        e.version,
        seq,
    )


HANDLERS = {
    ev.NodeRegistered: registered,
    ev.NodeReregistered: reregistered,
    ev.NodeResourcesClaimed: claimed,
    ev.NodeResourcesReleased: released,
    ev.NodeMarkedDown: marked_down,
    ev.NodeMarkedUp: marked_up,
}
