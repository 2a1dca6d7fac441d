"""The periodic reconciler: what a crash or an outage left half done is driven on.

Every `reconcile_interval` it reads the read models and
- re-publishes the command of each instance stuck in a transitional state for longer
  than one interval (a command lost between the API's append and its publish, or given
  up after a node stayed silent). The command id is derived from the instance and its
  version, so several orchestrators re-drive one instance once, and the handlers start
  from the instance's state, so a re-drive of finished work does nothing;
- asks live nodes what became of their instances left `unknown` (a node call that timed
  out while the node itself stayed up), and records the answer;
- marks down the nodes the read model believes up but whose heartbeat is absent (a node
  that died while no orchestrator was watching), and restarts the evacuation clock of
  nodes still down, e.g. after this orchestrator restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime

import asyncpg
from nats.js import JetStreamContext

from nebula_core.config import Settings
from nebula_core.domain.states import REDRIVE, TRANSITIONAL
from nebula_core.messaging import publish_command
from nebula_core.orchestrator.fleet import Fleet
from nebula_core.orchestrator.lifecycle import ACTOR
from nebula_core.orchestrator.liveness import Liveness

log = logging.getLogger("nebula.orchestrator.reconciler")

_REDRIVE = uuid.UUID("0b7f6c52-7d1e-5c55-a8f1-6a2e4d3c2b10")


def redrive_id(instance_id: uuid.UUID, version: int) -> uuid.UUID:
    return uuid.uuid5(_REDRIVE, f"{instance_id}:{version}")


class Reconciler:
    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, js: JetStreamContext, fleet: Fleet, liveness: Liveness
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._js = js
        self._fleet = fleet
        self._liveness = liveness
        self._started = time.monotonic()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reconcile_interval)
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile round failed")

    async def once(self) -> None:
        await self.redrive_stuck()
        await self.recheck_unknown()
        await self.check_nodes()

    async def recheck_unknown(self) -> int:
        """Instances `unknown` on a live node for over an interval: ask the node."""
        rows = await self._pool.fetch(
            "SELECT id, node_id FROM instances WHERE state = 'unknown' AND node_id IS NOT NULL"
            " AND updated_at < now() - make_interval(secs => $1)",
            self._settings.reconcile_interval,
        )
        by_node: dict[str, list[uuid.UUID]] = {}
        for row in rows:
            if self._fleet.is_live(row["node_id"]):
                by_node.setdefault(row["node_id"], []).append(row["id"])
        for node_id, instance_ids in by_node.items():
            await self._liveness.find_out(node_id, instance_ids, "found by the reconciler")
        return sum(len(ids) for ids in by_node.values())

    async def redrive_stuck(self) -> int:
        rows = await self._pool.fetch(
            "SELECT id, state, version FROM instances WHERE state = ANY($1::text[])"
            " AND updated_at < now() - make_interval(secs => $2)",
            list(TRANSITIONAL),
            self._settings.reconcile_interval,
        )
        for row in rows:
            cls = REDRIVE[row["state"]]
            command = cls(
                command_id=redrive_id(row["id"], row["version"]),
                instance_id=row["id"],
                requested_at=datetime.now(UTC),
                actor=ACTOR,
            )
            await publish_command(self._js, command)
            log.info("instance=%s stuck %s: re-driven", row["id"], row["state"])
        return len(rows)

    async def check_nodes(self) -> None:
        # Heartbeats need three intervals to show every live node after a (re)start.
        if time.monotonic() - self._started < 3 * self._settings.heartbeat_interval:
            return
        rows = await self._pool.fetch(
            "SELECT n.id, n.down, count(c.instance_id) AS claims FROM nodes n"
            " LEFT JOIN node_claims c ON c.node_id = n.id GROUP BY n.id, n.down"
        )
        for row in rows:
            node_id = row["id"]
            if self._fleet.is_live(node_id) or self._liveness.watching(node_id):
                continue
            if row["down"] and row["claims"] == 0:
                continue  # nothing left to evacuate
            self._fleet.silence(node_id)
            await self._liveness.node_lost(node_id, "no heartbeat" if not row["down"] else "still down")
