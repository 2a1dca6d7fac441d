"""/v1/nodes: the compute nodes, as registered (events) and as alive (heartbeats). Cloud admins."""

from __future__ import annotations

import msgspec
import nats.js.errors
from aiohttp import web

from nebula_core.api import keys
from nebula_core.api.auth import require_admin
from nebula_core.api.routing import Operations, respond
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
    query={"region": "a region"},
)
async def list_nodes(request: web.Request) -> web.Response:
    require_admin(request)
    pool = request.app[keys.POOL]
    if "region" in request.query:
        rows = await pool.fetch("SELECT * FROM nodes WHERE region = $1 ORDER BY id", request.query["region"])
    else:
        rows = await pool.fetch("SELECT * FROM nodes ORDER BY id")
    beats = await heartbeats(request)
    items = [
        shapes.Node(
            id=r["id"],
            region=r["region"],
            capacity={"vcpus": r["vcpus"], "ram_mb": r["ram_mb"], "disk_gb": r["disk_gb"]},
            overcommit={"cpu": r["cpu_ratio"], "ram": r["ram_ratio"], "disk": r["disk_ratio"]},
            allocated={"vcpus": r["alloc_vcpus"], "ram_mb": r["alloc_ram_mb"], "disk_gb": r["alloc_disk_gb"]},
            instances=r["instances"],
            alive=r["id"] in beats,
            down=r["down"],
            agent_version=r["agent_version"],
            last_heartbeat=beats[r["id"]].at if r["id"] in beats else None,
        )
        for r in rows
    ]
    return respond(shapes.Page(items=items, next=None))
