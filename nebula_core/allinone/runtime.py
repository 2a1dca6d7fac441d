"""What every long-running role shares: logging, signals, and its NATS and Postgres handles."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from nats.aio.client import Client as NATS

from nebula_core import nats_client
from nebula_core.config import Settings
from nebula_core.projections import database


def setup_logging(role: str, level: int = logging.INFO) -> None:
    """One line per record, key=value context in the message, the role in every line."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s role={role} %(name)s %(message)s",
    )


def stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


@contextlib.asynccontextmanager
async def connections(
    settings: Settings, role: str, *, postgres: bool = True, once: bool = False
) -> AsyncIterator[tuple[NATS, asyncpg.Pool | None]]:
    """NATS and Postgres for `role`; `once`: fail at once if NATS is away (commands that
    end), instead of waiting for it (services that run)."""
    nc = await nats_client.connect(settings.nats_url, name=f"nebula-{role}", once=once)
    pool = None
    try:
        if postgres:
            if not settings.pg_dsn:
                raise ValueError("no Postgres: set NEBULA_PG_DSN")
            pool = await database.create_pool(settings.pg_dsn, min_size=1, max_size=10)
        yield nc, pool
    finally:
        if pool is not None:
            await pool.close()
        await nc.drain()


def run_role(role: str, main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` until SIGINT/SIGTERM sets `stop`."""
    setup_logging(role)

    async def runner() -> None:
        await main(stop_on_signals())

    asyncio.run(runner())
