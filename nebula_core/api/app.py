"""The aiohttp application: middlewares, routes, and what lives as long as the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from nebula_core import nats_client
from nebula_core.api import auth, events, images, instances, keypairs, keys, nodes, projects, system, users
from nebula_core.api.errors import errors
from nebula_core.api.idempotency import idempotency, purging
from nebula_core.api.metrics import Metrics
from nebula_core.api.metrics import middleware as metrics_middleware
from nebula_core.api.openapi import document
from nebula_core.api.ratelimit import LIMITS, Limits, limit_rate
from nebula_core.api.routing import Operation, route_name
from nebula_core.api.writes import Writer
from nebula_core.config import Settings
from nebula_core.contract.limits import API_BODY_MAX_BYTES
from nebula_core.domain import AGGREGATES
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from nebula_core.projections import database

MODULES = (projects, users, images, keypairs, instances, nodes, events, system)

#: A request's statements are short: one that is not (a hung Postgres, a long wait for a
#: project's lock) ends in a 503 rather than holding the caller.
REQUEST_STATEMENT_TIMEOUT_S = 10.0


def operations() -> list[Operation]:
    return [op for module in MODULES for op in module.ops.all]


def openapi_document() -> dict[str, Any]:
    return document(operations())


async def _backends(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    nc = await nats_client.connect(settings.nats_url, name="nebula-api")
    # Connected on first use: the API starts, and says it is degraded, while Postgres is
    # away, and serves again as soon as it is back.
    pool = await database.create_pool(
        settings.pg_dsn, min_size=0, max_size=20, statement_timeout=REQUEST_STATEMENT_TIMEOUT_S
    )
    js = nc.jetstream()
    app[keys.NATS_CLIENT] = nc
    app[keys.POOL] = pool
    app[keys.WRITER] = Writer(EventStore(js, Codec(*AGGREGATES)), js, pool)
    yield
    await pool.close()
    if nc.is_connected:
        await nc.drain()
    else:  # NATS is away: nothing could be flushed to it
        await nc.close()


def make_app(settings: Settings) -> web.Application:
    metrics = Metrics()
    app = web.Application(
        middlewares=[metrics_middleware(metrics), errors, auth.authenticate, limit_rate, idempotency],
        client_max_size=API_BODY_MAX_BYTES,
    )
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics
    app[LIMITS] = Limits(rate=settings.api_rate, burst=settings.api_burst, streams=settings.api_event_streams)
    for module in MODULES:
        module.ops.add_to(app)
    names = [route_name(op) for op in operations()]
    assert len(names) == len(set(names)), "every handler needs its own name"
    app[auth.PUBLIC_ROUTES] = frozenset(route_name(op) for op in operations() if op.public)
    app[system.OPENAPI] = openapi_document()
    app.cleanup_ctx.append(_backends)
    app.cleanup_ctx.append(purging)  # after the pool it uses, stopped before it
    return app


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the API until `stop` is set (what `nebula api` calls)."""
    runner = web.AppRunner(make_app(settings), access_log=None)
    await runner.setup()
    host, port = settings.api_host_port
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
