"""A node's heartbeat: its `Heartbeat` record under key `<node id>` of the `nebula_nodes`
bucket, rewritten every interval with a per-key TTL of two and a half intervals (one lost
beat is survived; the server's expiry tick still falls within three). A node that falls
silent - crashed, partitioned, or its agent stopped - disappears from the bucket by itself,
and every watcher of the bucket is told (a `PURGE` entry).

Stopping the agent says no goodbye: the key simply ages out. An agent restarted within the
TTL (an upgrade, a crash and systemd's restart) is never seen to leave, which is right,
because its domains kept running.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

import msgspec
from nats.js import JetStreamContext

from nebula_core.contract import subjects
from nebula_core.contract.kv import Heartbeat

log = logging.getLogger("nebula.node.heartbeat")

PUBLISH_TIMEOUT_S = 5.0


def heartbeat_ttl(interval: float) -> int:
    """The key's TTL in whole seconds (JetStream's unit): 2.5 intervals, at least 1 s, so
    a silent node is gone within three intervals of its last beat."""
    return max(1, math.ceil(2.5 * interval))


def heartbeat_subject(node_id: str) -> str:
    """The subject a put of key `node_id` in the nodes bucket is published on."""
    subjects.node_subject(node_id, "status")  # refuses a node id that is no subject token
    return f"$KV.{subjects.NODES_BUCKET}.{node_id}"


class Heartbeats:
    """Publishes `snapshot()` now (`beat`) or every `interval` seconds (`run`, in a task
    its owner starts and cancels)."""

    def __init__(
        self, js: JetStreamContext, node_id: str, interval: float, snapshot: Callable[[], Awaitable[Heartbeat]]
    ) -> None:
        self._js = js
        self._node_id = node_id
        self._interval = interval
        self._snapshot = snapshot
        self._subject = heartbeat_subject(node_id)

    async def beat(self) -> Heartbeat:
        """Publish one heartbeat now; raises if NATS does not take it."""
        heartbeat = await self._snapshot()
        await self._js.publish(
            self._subject,
            msgspec.json.encode(heartbeat),
            timeout=PUBLISH_TIMEOUT_S,
            msg_ttl=heartbeat_ttl(self._interval),
        )
        return heartbeat

    async def run(self) -> None:
        """Beat every interval until cancelled; a failed beat is logged and the next one tried."""
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            started = loop.time()
            try:
                await self.beat()
                if failing:
                    log.info("node=%s heartbeats flow again", self._node_id)
                failing = False
            except Exception as err:
                if not failing:
                    log.warning("node=%s heartbeat failed: %s: %s", self._node_id, type(err).__name__, err)
                failing = True
            await asyncio.sleep(max(0.0, self._interval - (loop.time() - started)))
