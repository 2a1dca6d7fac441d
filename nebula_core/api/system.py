"""/healthz, /metrics and /v1/openapi.json: for load balancers, Prometheus and client generators."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nebula_core.api import keys
from nebula_core.api.routing import Operations, respond
from nebula_core.contract import http as shapes
from nebula_core.projections.checkpoint import checkpoint
from nebula_core.projections.parked import parked

ops = Operations()
OPENAPI = web.AppKey("openapi", dict)


@ops(
    "GET",
    "/healthz",
    summary="NATS and Postgres reachable",
    response=shapes.Health,
    responses={503: ("NATS or Postgres did not answer", shapes.Health)},
    public=True,
)
async def healthz(request: web.Request) -> web.Response:
    try:  # a round trip to the server, not the client's belief that it is connected
        await asyncio.wait_for(request.app[keys.NATS_CLIENT].flush(), 2.0)
        nats_ok = request.app[keys.NATS_CLIENT].is_connected  # flush() returns at once while reconnecting
    except Exception:
        nats_ok = False
    try:
        await asyncio.wait_for(request.app[keys.POOL].fetchval("SELECT 1"), 2.0)
        pg_ok = True
    except Exception:
        pg_ok = False
    parked_now = await _parked_now(request) if pg_ok else 0
    healthy = nats_ok and pg_ok
    return respond(
        shapes.Health(
            status="ok" if healthy and not parked_now else "degraded",
            nats="ok" if nats_ok else "unreachable",
            postgres="ok" if pg_ok else "unreachable",
            parked_events=parked_now,
        ),
        200 if healthy else 503,  # parked events degrade the read models, not this process: still 200
    )


async def _parked_now(request: web.Request) -> int:
    try:
        return (await asyncio.wait_for(parked(request.app[keys.POOL]), 2.0)).now
    except Exception:  # a database without the table yet (before `nebula init`) has none parked
        return 0


@ops("GET", "/metrics", summary="Prometheus metrics", public=True, content_type="text/plain")
async def metrics(request: web.Request) -> web.Response:
    registry = request.app[keys.METRICS]
    try:
        head = await request.app[keys.WRITER].stream_head()
        done = await checkpoint(request.app[keys.POOL])
        registry.stream_head.set(head)
        registry.projection_lag.set(max(0, head - done))
    except Exception:
        pass
    try:
        stats = await parked(request.app[keys.POOL])
        registry.parked_now.set(stats.now)
        registry.parked_total.value = stats.total
    except Exception:
        pass
    return web.Response(body=generate_latest(registry.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


@ops("GET", "/v1/openapi.json", summary="This document", public=True)
async def openapi(request: web.Request) -> web.Response:
    return respond(request.app[OPENAPI])
