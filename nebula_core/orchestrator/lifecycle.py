"""What the orchestrator does with each command: decide from the instance's recorded
state, drive the node, record the outcome as events.

Every handler is idempotent because it starts from the instance's current state, never
from the command alone: a redelivered `place` of an instance that is already `scheduled`
goes on to create the domain (the node's create is idempotent too) and one that is
`running` does nothing; a `stop` of an instance no longer `stopping` does nothing. Each
recorded outcome is an aggregate method that ignores a repeat, and appends carry the
optimistic-concurrency check, so two orchestrators handling one command record it once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import msgspec
from eventsourcing.domain import Aggregate
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from nebula_core.config import Settings
from nebula_core.contract import commands, subjects
from nebula_core.contract.errors import (
    IllegalTransition,
    InsufficientCapacity,
    NebulaError,
    NodeUnavailable,
    NotFound,
)
from nebula_core.contract.kv import InstanceSeed
from nebula_core.contract.node import (
    CreateRequest,
    DomainState,
    ImageSpec,
    InstanceRequest,
    StopRequest,
)
from nebula_core.domain import Image, Instance
from nebula_core.domain.states import PLACED
from nebula_core.eventstore import EventStore
from nebula_core.messaging import NodeClient
from nebula_core.orchestrator.fleet import Fleet
from nebula_core.orchestrator.placement import NoValidHost, rank

log = logging.getLogger("nebula.orchestrator")

A = TypeVar("A", bound=Aggregate)

ACTOR = "system:orchestrator"
#: Rounds of placement (plan, claim) before an instance that keeps losing races fails.
PLACEMENT_ROUNDS = 8


class Lifecycle:
    def __init__(
        self, settings: Settings, store: EventStore, js: JetStreamContext, fleet: Fleet, nodes: NodeClient
    ) -> None:
        self._settings = settings
        self._store = store
        self._js = js
        self._fleet = fleet
        self._nodes = nodes

    # --- recording -------------------------------------------------------------------

    async def change(self, cls: type[A], aggregate_id: uuid.UUID, apply: Callable[[A], None]) -> A:
        """`EventStore.change` as the orchestrator: the aggregate after `apply` was recorded."""
        return (await self._store.change(cls, aggregate_id, apply, actor=ACTOR)).aggregate

    async def instance(self, instance_id: uuid.UUID) -> Instance:
        return await self._store.load(Instance, instance_id)

    async def status(self, node_id: str, instance_id: uuid.UUID) -> DomainState | None:
        reply = await self._nodes.call(node_id, "status", InstanceRequest(instance_id=instance_id))
        return reply.status.state if reply.status is not None else None

    async def fail(self, instance_id: uuid.UUID, reason: str) -> None:
        log.warning("instance=%s failed: %s", instance_id, reason)
        try:
            instance = await self.change(Instance, instance_id, lambda i: i.fail(reason))
        except IllegalTransition:
            return  # being deleted: the delete gives back what it held
        if instance.node_id is not None:
            await self.release(instance.node_id, instance_id)

    async def release(self, node_id: str, instance_id: uuid.UUID) -> None:
        try:
            await self._fleet.change(node_id, lambda n: n.release(instance_id))
        except NotFound:
            pass

    # --- placement -------------------------------------------------------------------

    async def place(self, instance_id: uuid.UUID) -> None:
        instance = await self._store.load(Instance, instance_id)
        if instance.state == "pending":
            node_id = await self._claim(instance)
            if node_id is None:
                return
        elif instance.state == "scheduled" and instance.node_id is not None:
            node_id = instance.node_id  # a redelivery after the claim was recorded
        else:
            return
        await self._create(instance_id, node_id)

    async def _claim(self, instance: Instance) -> str | None:
        """Claim room on the best node and record `scheduled`; None if it failed instead."""
        want, region = instance.flavor, instance.region
        earlier = self._fleet.claimed_by(instance.id)
        for round_ in range(PLACEMENT_ROUNDS):
            candidates = await self._fleet.candidates(fresh=round_ > 0)
            try:
                ranked = rank(candidates, want=want, region=region, strategy=self._settings.placement_strategy)
            except NoValidHost as refusal:
                if round_ == 0:
                    continue  # decide on fresh node state, not on this process's cache
                await self.fail(instance.id, str(refusal))
                return None
            if earlier is not None and any(c.node_id == earlier for c in ranked):
                ranked.sort(key=lambda c: c.node_id != earlier)
            for candidate in ranked:
                try:
                    await self._fleet.change(candidate.node_id, lambda n: n.claim(instance.id, want))
                except InsufficientCapacity:
                    continue  # another orchestrator took the room first: next node
                return await self._schedule(instance.id, candidate.node_id)
        await self.fail(
            instance.id,
            f"could not claim room for {want.vcpus} vCPUs in region {region} "
            f"after {PLACEMENT_ROUNDS} rounds of concurrent placement",
        )
        return None

    async def _schedule(self, instance_id: uuid.UUID, node_id: str) -> str | None:
        try:
            await self.change(Instance, instance_id, lambda i: i.schedule(node_id))
        except IllegalTransition:
            await self.release(node_id, instance_id)  # deleted while we were placing it
            return None
        log.info("instance=%s node=%s scheduled", instance_id, node_id)
        return node_id

    async def _create(self, instance_id: uuid.UUID, node_id: str) -> None:
        instance = await self._store.load(Instance, instance_id)
        try:
            request = await self._create_request(instance)
        except NotFound as missing:
            await self.fail(instance_id, str(missing))
            return
        try:
            await self._nodes.call(node_id, "create", request)
        except NebulaError as err:  # the node's own error, or no answer
            await self.fail(instance_id, node_failure(node_id, "create", err))
            # A node that timed out may still finish the create (its agent runs the delete
            # after it), and one that failed may have left disks: leave nothing behind
            # that no claim accounts for.
            try:
                await self._nodes.call(node_id, "delete", InstanceRequest(instance_id=instance_id))
            except NebulaError as cleanup:
                log.warning(
                    "instance=%s node=%s cleanup after a failed create failed: %s", instance_id, node_id, cleanup
                )
            return
        done: Callable[[Instance], None] = Instance.launch
        if instance.powered_off:  # rebuilt after an outage, off as its owner had left it
            done = partial(Instance.mark_stopped, reason=f"rebuilt on node {node_id}, off as it was")
        try:
            await self.change(Instance, instance_id, done)
        except IllegalTransition:
            # Deleted (or failed) while the node was creating it: take the domain away again.
            current = await self._store.load(Instance, instance_id)
            if current.state in ("deleting", "deleted"):
                await self._nodes.call(node_id, "delete", InstanceRequest(instance_id=instance_id))
                await self.release(node_id, instance_id)
            return
        log.info("instance=%s node=%s %s", instance_id, node_id, "stopped" if instance.powered_off else "running")

    async def _create_request(self, instance: Instance) -> CreateRequest:
        image = await self._store.load(Image, instance.image_id)
        seeds = await self._js.key_value(subjects.USERDATA_BUCKET)
        try:
            entry = await seeds.get(str(instance.id))
        except KeyNotFoundError:
            raise NotFound(
                f"the secrets of instance {instance.id} are missing from the {subjects.USERDATA_BUCKET} bucket"
            ) from None
        seed = msgspec.json.decode(entry.value or b"{}", type=InstanceSeed)
        return CreateRequest(
            instance_id=instance.id,
            project_id=instance.project_id,
            name=instance.name,
            description=instance.description,
            tags=instance.tags,
            vcpus=instance.flavor.vcpus,
            ram_mb=instance.flavor.ram_mb,
            disk_gb=instance.flavor.disk_gb,
            image=ImageSpec(
                id=image.id,
                name=image.name,
                format=image.format,
                source=image.source,
                sha256=image.sha256,
                size=image.size,
            ),
            metadata_token=seed.metadata_token,
            start=not instance.powered_off,
        )

    # --- power -----------------------------------------------------------------------

    async def stop(self, command: commands.StopInstance) -> None:
        grace = command.grace_seconds
        await self._power(
            command.instance_id,
            "stopping",
            "stop",
            StopRequest(instance_id=command.instance_id, grace_seconds=grace),
            lambda i: i.mark_stopped(),
            extra_timeout=grace,
        )

    async def start(self, command: commands.StartInstance) -> None:
        await self._power(
            command.instance_id,
            "starting",
            "start",
            InstanceRequest(instance_id=command.instance_id),
            Instance.mark_started,
        )

    async def reboot(self, command: commands.RebootInstance) -> None:
        await self._power(
            command.instance_id,
            "rebooting",
            "reboot",
            InstanceRequest(instance_id=command.instance_id),
            Instance.mark_rebooted,
        )

    async def _power(
        self,
        instance_id: uuid.UUID,
        expected: str,
        op: str,
        request: msgspec.Struct,
        done: Callable[[Instance], None],
        *,
        extra_timeout: float = 0.0,
    ) -> None:
        instance = await self._store.load(Instance, instance_id)
        if instance.state != expected or instance.node_id is None:
            return  # already done, or overtaken by another request
        node_id = instance.node_id
        try:
            await self._nodes.call(node_id, op, request, timeout=self._settings.node_timeout + extra_timeout)
        except NodeUnavailable as err:  # no answer, or the node cannot reach its hypervisor
            reason = str(err)
            await self.change(Instance, instance_id, lambda i: i.lose(reason))
            return
        except NebulaError as err:
            await self.fail(instance_id, node_failure(node_id, op, err))
            return
        await self.change(Instance, instance_id, done)
        log.info("instance=%s node=%s %s done", instance_id, node_id, op)

    # --- deletion --------------------------------------------------------------------

    async def delete(self, instance_id: uuid.UUID) -> None:
        instance = await self._store.load(Instance, instance_id)
        if instance.state not in ("deleting", "deleted"):
            return
        node_id = instance.node_id
        if instance.state == "deleting" and node_id is not None:
            try:
                await self._nodes.call(node_id, "delete", InstanceRequest(instance_id=instance_id))
            except NodeUnavailable:
                if self._fleet.is_live(node_id):
                    raise  # a live node that did not answer: try again later
                # A dead node's domain is removed when its agent comes back and reports it.
                log.warning("instance=%s node=%s deleted while its node is down", instance_id, node_id)
        await self.change(Instance, instance_id, Instance.mark_deleted)
        if node_id is not None:
            await self.release(node_id, instance_id)
        seeds = await self._js.key_value(subjects.USERDATA_BUCKET)
        await seeds.purge(str(instance_id))
        log.info("instance=%s node=%s deleted", instance_id, node_id)

    # --- failure ---------------------------------------------------------------------

    async def evacuate(self, command: commands.EvacuateInstance) -> None:
        """Rebuild an instance of a node that stayed down elsewhere; once, however often asked."""
        instance = await self._store.load(Instance, command.instance_id)
        gone = command.from_node_id
        if instance.state == "unknown" and instance.node_id == gone:
            if self._fleet.is_live(gone):
                return  # it came back in the meantime: it reconciles instead
            await self.release(gone, instance.id)
            await self.change(
                Instance, instance.id, lambda i: i.reschedule(f"node {gone} stayed down; rebuilding elsewhere")
            )
            log.info("instance=%s node=%s evacuating", instance.id, gone)
        elif instance.state != "pending":
            return
        await self.place(instance.id)

    async def booted(self, command: commands.RecordBoot) -> None:
        """A guest phoned home (relayed by the metadata service): its boot is recorded once,
        under the relaying service's name; an instance that cannot boot now (deleting,
        stopped, failed) has no boot to record."""
        try:
            await self._store.change(
                Instance, command.instance_id, lambda i: i.boot(command.booted_at), actor=command.actor or ACTOR
            )
        except IllegalTransition as err:
            log.info("instance=%s phone-home not recorded: %s", command.instance_id, err)

    async def report(self, command: commands.ReportDomain) -> None:
        """A node says what libvirt shows; record what differs from what we believe."""
        try:
            instance = await self._store.load(Instance, command.instance_id)
        except NotFound:
            instance = None
        reporter, seen = command.node_id, command.state
        ours = instance is not None and instance.node_id == reporter and instance.state not in ("deleted",)
        if not ours:
            if seen != "missing":
                log.warning("instance=%s node=%s orphan domain (%s): deleting it", command.instance_id, reporter, seen)
                await self._nodes.call(reporter, "delete", InstanceRequest(instance_id=command.instance_id))
            return
        assert instance is not None
        outcome = report_outcome(instance, seen, reporter, command.reason)
        if outcome is not None:
            try:
                await self.change(Instance, instance.id, outcome)
            except IllegalTransition as err:
                log.info("instance=%s node=%s report %s ignored: %s", instance.id, reporter, seen, err)
                return
            if seen == "missing":
                await self.release(reporter, instance.id)
        if command.addresses is not None and seen != "missing":
            addresses = command.addresses
            try:
                await self.change(
                    Instance, instance.id, lambda i: i.readdress(addresses) if i.node_id == reporter else None
                )
            except IllegalTransition as err:
                log.info("instance=%s node=%s addresses ignored: %s", instance.id, reporter, err)


def report_outcome(
    instance: Instance, seen: DomainState, node_id: str, reason: str
) -> Callable[[Instance], None] | None:
    """How a reported domain state changes the instance (None: nothing to record)."""
    state = instance.state
    why = reason or "reported by the node"
    if seen == "running":
        return {
            "scheduled": Instance.launch,
            "starting": Instance.mark_started,
            "unknown": Instance.mark_started,
            "stopped": Instance.mark_started,
            "rebooting": Instance.mark_rebooted,
        }.get(state)
    if seen == "shutoff":
        if state in ("running", "stopping", "unknown"):
            return lambda i: i.mark_stopped(f"the domain is off on node {node_id}: {why}")
        return None
    if seen == "crashed":
        if state in PLACED or state == "unknown":
            return lambda i: i.fail(f"the domain crashed on node {node_id}: {why}")
        return None
    if seen == "missing":
        if state in PLACED - {"scheduled"} or state == "unknown":
            return lambda i: i.fail(f"the domain vanished from node {node_id}")
        return None
    return None


def node_failure(node_id: str, op: str, err: NebulaError) -> str:
    """An instance's error after node `node_id` failed `op`: the node named once (an
    unanswered call's `NodeUnavailable` names it already)."""
    return str(err) if isinstance(err, NodeUnavailable) else f"node {node_id} could not {op}: {err}"
