"""Node failure and return, driven by the heartbeat bucket.

A node whose heartbeat key expires (TTL: 2.5 intervals) is marked down at once; every
instance placed on it goes to `unknown`. If it is still down after the evacuation grace,
one `evacuate` command per instance is published with a command id derived from the
instance, the node and the outage, so several orchestrators publishing it store it once
and the handler rebuilds each instance exactly once. A node that comes back is marked
up and asked for the real state of each instance left `unknown`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

from nats.js import JetStreamContext

from nebula_core.contract import commands
from nebula_core.contract.errors import IllegalTransition, NebulaError, NotFound
from nebula_core.domain import Instance
from nebula_core.domain.states import PLACED
from nebula_core.messaging import publish_command
from nebula_core.orchestrator.fleet import Fleet
from nebula_core.orchestrator.lifecycle import ACTOR, Lifecycle

log = logging.getLogger("nebula.orchestrator.liveness")

_EVACUATION = uuid.UUID("6f1c2f0e-54c6-5b8e-9d4e-2f3b1a7c9e01")


def evacuation_id(instance_id: uuid.UUID, node_id: str, outage: int) -> uuid.UUID:
    """The same for every orchestrator that evacuates this instance after this outage."""
    return uuid.uuid5(_EVACUATION, f"{instance_id}:{node_id}:{outage}")


class Liveness:
    def __init__(self, fleet: Fleet, lifecycle: Lifecycle, js: JetStreamContext, *, grace: float) -> None:
        self._fleet = fleet
        self._lifecycle = lifecycle
        self._js = js
        self._grace = grace
        self._timers: dict[str, asyncio.Task[None]] = {}

    async def close(self) -> None:
        timers, self._timers = list(self._timers.values()), {}
        for timer in timers:
            timer.cancel()
        await asyncio.gather(*timers, return_exceptions=True)

    def watching(self, node_id: str) -> bool:
        """Whether this process is counting down to the node's evacuation."""
        timer = self._timers.get(node_id)
        return timer is not None and not timer.done()

    async def node_lost(self, node_id: str, reason: str) -> None:
        """Mark the node down and its instances unknown; start the evacuation clock."""
        try:
            node = await self._fleet.change(node_id, lambda n: n.mark_down(reason))
        except NotFound:
            return
        log.warning("node=%s down: %s; %d instances", node_id, reason, len(node.claims))
        for instance_id in list(node.claims):
            await self._lose(instance_id, node_id, f"node {node_id} is down: {reason}")
        if not self.watching(node_id):
            self._timers[node_id] = asyncio.create_task(self._evacuate_later(node_id, node.version))

    async def _lose(self, instance_id: uuid.UUID, node_id: str, reason: str) -> None:
        def lose(instance: Instance) -> None:
            if instance.node_id == node_id and instance.state in PLACED:
                instance.lose(reason)

        try:
            await self._lifecycle.change(Instance, instance_id, lose)
        except (NotFound, IllegalTransition):
            pass

    async def _evacuate_later(self, node_id: str, outage: int) -> None:
        await asyncio.sleep(self._grace)
        if self._fleet.is_live(node_id):
            return
        await self.evacuate(node_id, outage)

    async def evacuate(self, node_id: str, outage: int) -> None:
        """Ask for every instance still bound to the dead node to be rebuilt elsewhere."""
        node = await self._fleet.node(node_id)
        for instance_id in list(node.claims):
            command = commands.EvacuateInstance(
                command_id=evacuation_id(instance_id, node_id, outage),
                instance_id=instance_id,
                requested_at=datetime.now(UTC),
                actor=ACTOR,
                from_node_id=node_id,
            )
            await publish_command(self._js, command)
        log.warning("node=%s stayed down %.0f s: evacuating %d instances", node_id, self._grace, len(node.claims))

    async def node_back(self, node_id: str) -> None:
        """Mark the node up and find out what became of its instances left `unknown`."""
        timer = self._timers.pop(node_id, None)
        if timer is not None:
            timer.cancel()
        try:
            node = await self._fleet.change(node_id, lambda n: n.mark_up())
        except NotFound:
            return  # a brand-new node: it registers itself
        await self.find_out(node_id, list(node.claims), "found after the node came back")

    async def find_out(self, node_id: str, instance_ids: list[uuid.UUID], reason: str) -> None:
        """Ask live node `node_id` what became of those of `instance_ids` still `unknown`
        there, and record the answer as the node's report."""
        for instance_id in instance_ids:
            try:
                instance = await self._lifecycle.instance(instance_id)
                if instance.state != "unknown" or instance.node_id != node_id:
                    continue
                seen = await self._lifecycle.status(node_id, instance_id)
            except NebulaError as err:
                log.warning("instance=%s node=%s status failed: %s", instance_id, node_id, err)
                continue
            if seen is not None:
                await self._lifecycle.report(
                    commands.ReportDomain(
                        command_id=uuid.uuid4(),
                        instance_id=instance_id,
                        requested_at=datetime.now(UTC),
                        actor=ACTOR,
                        node_id=node_id,
                        state=seen,
                        reason=reason,
                    )
                )
