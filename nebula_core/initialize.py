"""`nebula init`: the JetStream topology and the Postgres migrations, applied idempotently."""

from __future__ import annotations

import asyncpg

from nebula_core import nats_client
from nebula_core.config import Settings
from nebula_ops import migrate, topology


async def apply_topology(settings: Settings) -> list[str]:
    nc = await nats_client.connect(settings.nats_url, name="nebula-init", once=True)
    try:
        declared = topology.declare(
            replicas=settings.nats_replicas, heartbeat_interval_s=settings.heartbeat_interval
        )
        return await topology.apply(nc.jetstream(), declared)
    finally:
        await nc.close()


async def apply_migrations(dsn: str) -> list[str]:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError) as err:
        raise ConnectionError(f"cannot reach Postgres: {err}") from err
    try:
        return await migrate.apply(conn)
    finally:
        await conn.close()


async def initialize(settings: Settings) -> list[str]:
    """Topology then migrations; returns what each step did, one line per object."""
    if not settings.pg_dsn:
        raise ValueError("no Postgres: set NEBULA_PG_DSN (or use `nebula up`, which embeds one)")
    return [*await apply_topology(settings), *await apply_migrations(settings.pg_dsn)]
