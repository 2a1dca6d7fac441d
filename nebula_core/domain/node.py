"""Compute nodes and the resources promised on them.

A claim is an event on the node's aggregate, appended with optimistic concurrency: two
orchestrators that both saw room for the last instance race on the same aggregate
version, one append wins and the other reloads, finds no room, and re-plans — the same
idea as OpenStack Placement's resource-provider generations.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from eventsourcing.domain import Aggregate, event

from nebula_core.contract.errors import InsufficientCapacity
from nebula_core.contract.node import node_uuid
from nebula_core.contract.types import Overcommit, Resources, total


def usable(capacity: Resources, overcommit: Overcommit) -> Resources:
    """What may be promised: physical capacity times the overcommit ratios."""
    return Resources(
        vcpus=int(capacity.vcpus * overcommit.cpu),
        ram_mb=int(capacity.ram_mb * overcommit.ram),
        disk_gb=int(capacity.disk_gb * overcommit.disk),
    )


def shortfall(free: Resources, want: Resources) -> list[str]:
    """The dimensions in which `want` does not fit in `free`, e.g. `["4 vCPUs"]`."""
    missing = []
    if want.vcpus > free.vcpus:
        missing.append(f"{want.vcpus} free vCPUs")
    if want.ram_mb > free.ram_mb:
        missing.append(f"{want.ram_mb} MiB free RAM")
    if want.disk_gb > free.disk_gb:
        missing.append(f"{want.disk_gb} GiB free disk")
    return missing


class Node(Aggregate):
    KIND: ClassVar[str] = "node"

    @staticmethod
    def create_id(name: str, **_: object) -> uuid.UUID:
        return node_uuid(name)

    @event("Registered")
    def __init__(self, name: str, region: str, capacity: Resources, overcommit: Overcommit, agent_version: str) -> None:
        self.name = name
        self.region = region
        self.capacity = capacity
        self.overcommit = overcommit
        self.agent_version = agent_version
        self.claims: dict[uuid.UUID, Resources] = {}
        self.down = False

    def reregister(self, *, region: str, capacity: Resources, overcommit: Overcommit, agent_version: str) -> None:
        """An agent (re)starting says what it is; records an event only when something changed."""
        if (region, capacity, overcommit, agent_version) != (
            self.region,
            self.capacity,
            self.overcommit,
            self.agent_version,
        ):
            self._reregistered(region, capacity, overcommit, agent_version)

    @event("Reregistered")
    def _reregistered(self, region: str, capacity: Resources, overcommit: Overcommit, agent_version: str) -> None:
        self.region, self.capacity, self.overcommit, self.agent_version = region, capacity, overcommit, agent_version

    @property
    def allocated(self) -> Resources:
        return total(list(self.claims.values()))

    @property
    def free(self) -> Resources:
        limit, used = usable(self.capacity, self.overcommit), self.allocated
        return Resources(
            vcpus=limit.vcpus - used.vcpus, ram_mb=limit.ram_mb - used.ram_mb, disk_gb=limit.disk_gb - used.disk_gb
        )

    def claim(self, instance_id: uuid.UUID, amount: Resources) -> None:
        """Promise `amount` to the instance. Idempotent for the same claim; refused when it does not fit."""
        if self.claims.get(instance_id) == amount:
            return
        if instance_id in self.claims:
            self._released(instance_id)
        missing = shortfall(self.free, amount)
        if missing:
            raise InsufficientCapacity(f"node {self.name} lacks {', '.join(missing)}")
        self._claimed(instance_id, amount)

    @event("ResourcesClaimed")
    def _claimed(self, instance_id: uuid.UUID, amount: Resources) -> None:
        self.claims[instance_id] = amount

    def release(self, instance_id: uuid.UUID) -> None:
        """Give back what the instance held; idempotent."""
        if instance_id in self.claims:
            self._released(instance_id)

    @event("ResourcesReleased")
    def _released(self, instance_id: uuid.UUID) -> None:
        del self.claims[instance_id]

    def mark_down(self, reason: str) -> None:
        if not self.down:
            self._marked_down(reason)

    @event("MarkedDown")
    def _marked_down(self, reason: str) -> None:
        self.down = True

    def mark_up(self) -> None:
        if self.down:
            self._marked_up()

    @event("MarkedUp")
    def _marked_up(self) -> None:
        self.down = False
