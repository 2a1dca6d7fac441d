"""/v1/nodes: the compute nodes, as registered (events) and as alive (heartbeats). Cloud admins."""

from __future__ import annotations

import msgspec
import nats.js.errors
from aiohttp import web

from nebula_core.api import keys, queries
from nebula_core.api.auth import require_admin
from nebula_core.api.routing import Operations, Query, respond
from nebula_core.contract import http as shapes
from nebula_core.contract import subjects
from nebula_core.contract.kv import Heartbeat

ops = Operations()


async def heartbeats(request: web.Request) -> dict[str, Heartbeat]:
    kv = await request.app[keys.NATS_CLIENT].jetstream().key_value(subjects.NODES_BUCKET)
    try:
        names = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    beats = {}
    for name in names:
        try:
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:
            continue  # expired between the listing and the read
        if entry.value:
            beats[name] = msgspec.json.decode(entry.value, type=Heartbeat)
    return beats


@ops(
    "GET",
    "/v1/nodes",
    summary="Compute nodes with capacity, allocation and liveness (cloud admins)",
    list_of=shapes.Node,
    query={"region": Query("Only those of this region", shapes.QueryText)},
    errors=(403,),
)
async def list_nodes(request: web.Request) -> web.Response:
    require_admin(request)
    rows = await queries.node_rows(request.app[keys.POOL], queries.text_param(request.query, "region"))
    beats = await heartbeats(request)
    return respond(shapes.Page(items=[queries.node_shape(r, beats.get(r["id"])) for r in rows], next=None))
