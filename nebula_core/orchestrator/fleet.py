"""What one orchestrator knows of the compute nodes.

Liveness comes from the `nebula_nodes` heartbeat bucket (a node is live while its key
exists; the key's TTL removes a silent node). Capacity and claims come from each node's
aggregate, the only place a claim is made: aggregates are cached here and changed under
a per-node lock, so this process never interleaves two changes to one node; another
orchestrator's change shows up as a `ConcurrencyConflict`, after which the node is
reloaded and the change is tried again on the fresh state.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable

from nebula_core.contract.errors import ConcurrencyConflict, NotFound
from nebula_core.contract.kv import Heartbeat
from nebula_core.contract.node import Registration, node_actor
from nebula_core.domain import Node, create_with_id
from nebula_core.domain.node import node_uuid, usable
from nebula_core.eventstore import EventStore
from nebula_core.orchestrator.placement import Candidate

log = logging.getLogger("nebula.orchestrator.fleet")

#: Reload-and-retry rounds for one change of a node before giving up.
CHANGE_TRIES = 20


class Fleet:
    def __init__(self, store: EventStore, *, actor: str) -> None:
        self._store = store
        self._actor = actor
        self.heartbeats: dict[str, Heartbeat] = {}
        self._nodes: dict[str, Node] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # --- liveness ----------------------------------------------------------------------

    def beat(self, heartbeat: Heartbeat) -> bool:
        """Record a heartbeat; True when the node was not live before."""
        returned = heartbeat.node_id not in self.heartbeats
        self.heartbeats[heartbeat.node_id] = heartbeat
        return returned

    def silence(self, node_id: str) -> bool:
        """The node's key expired or was removed; True when it was live before."""
        return self.heartbeats.pop(node_id, None) is not None

    def is_live(self, node_id: str) -> bool:
        return node_id in self.heartbeats

    # --- aggregates --------------------------------------------------------------------

    async def node(self, node_id: str) -> Node:
        """The node's aggregate, cached; `NotFound` for a node that never registered."""
        cached = self._nodes.get(node_id)
        if cached is None:
            cached = self._nodes[node_id] = await self._store.load(Node, node_uuid(node_id))
        return cached

    async def current(self, node_id: str) -> Node:
        """The node's aggregate as stored now: the cached copy while it is the latest
        version (one direct get to know), reloaded when another replica changed it."""
        cached = self._nodes.get(node_id)
        if cached is not None and cached.version == await self._store.version(Node, node_uuid(node_id)):
            return cached
        self.forget(node_id)
        return await self.node(node_id)

    async def register(self, node_id: str, registration: Registration) -> Node:
        """Node `node_id` says what it offers: its aggregate is created the first time and
        changed only when something differs (`Node.reregister`); safe to repeat. The
        events name the node as their actor: the orchestrator records what the node said."""
        actor = node_actor(node_id)

        def reregister(node: Node) -> None:
            node.reregister(
                region=registration.region,
                capacity=registration.capacity,
                overcommit=registration.overcommit,
                agent_version=registration.agent_version,
            )

        try:
            await self.current(node_id)  # the answer carries the claims: not a stale copy's
            return await self.change(node_id, reregister, actor=actor)
        except NotFound:
            pass
        async with self._locks[node_id]:
            node = create_with_id(
                Node,
                node_uuid(node_id),
                name=node_id,
                region=registration.region,
                capacity=registration.capacity,
                overcommit=registration.overcommit,
                agent_version=registration.agent_version,
            )
            try:
                await self._store.save(node, actor=actor)
            except ConcurrencyConflict:  # registered meanwhile (a try whose answer was lost)
                pass
            else:
                self._nodes[node_id] = node
                return node
        return await self.change(node_id, reregister, actor=actor)

    def forget(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def change(self, node_id: str, change: Callable[[Node], None], *, actor: str | None = None) -> Node:
        """Apply `change` to the node and append its events (`EventStore.change`, starting
        from the cached copy). Exceptions from `change` (such as `InsufficientCapacity`)
        propagate and leave the cache clean."""
        async with self._locks[node_id]:
            cached = self._nodes.pop(node_id, None)  # no reader sees a half-changed copy
            changed = await self._store.change(
                Node, node_uuid(node_id), change, actor=actor or self._actor, tries=CHANGE_TRIES, loaded=cached
            )
            self._nodes[node_id] = changed.aggregate
            return changed.aggregate

    async def candidates(self, *, fresh: bool = False) -> list[Candidate]:
        """Every node placement may consider: the live ones and those known to be down."""
        names = set(self.heartbeats) | set(self._nodes)
        if fresh:
            for name in names:
                self.forget(name)
        found = await asyncio.gather(*(self._candidate(name) for name in sorted(names)))
        return [c for c in found if c is not None]

    async def _candidate(self, node_id: str) -> Candidate | None:
        try:
            node = await self.node(node_id)
        except NotFound:
            return None
        return Candidate(
            node_id=node_id,
            region=node.region,
            live=self.is_live(node_id) and not node.down,
            usable=usable(node.capacity, node.overcommit),
            free=node.free,
        )

    def claimed_by(self, instance_id: uuid.UUID) -> str | None:
        """A cached node already holding a claim for the instance (a redelivered placement)."""
        for node_id, node in self._nodes.items():
            if instance_id in node.claims:
                return node_id
        return None
