"""What a node tells the control plane on its own: `ReportDomain` commands.

The agent reports a domain's state when libvirt shows something the control plane was
not told: a guest that shut itself down or crashed, a domain destroyed or undefined
behind the agent's back, and - when the agent starts - every domain it holds and every
instance it is expected to hold.

How "was not told" is decided: `known` holds, per instance, the state the control plane
last learned from this agent - the outcome of an operation the agent performed (the reply
carried it) or the last report. A libvirt event only prompts a look: after a short pause
(events come in bursts, and late: the STOPPED event of a stop the agent just finished can
arrive after its reply), and while holding the instance's operation lock (so never in the
middle of an operation), the reporter reads the domain's state and reports it if it differs
from `known`. Events the agent caused itself therefore find nothing new and are never
reported; a burst of events is one report; a change and its undoing within the pause are
none. A periodic sweep compares everything again, catching events lost while libvirt's
connection was down.

A report that cannot be published (NATS away) leaves `known` as it was, so the next sweep
tries again. The orchestrator treats repeated reports as no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext

from nebula_core.contract import subjects
from nebula_core.contract.commands import ReportDomain
from nebula_core.contract.node import DomainState, node_actor
from nebula_core.contract.types import InstanceAddress
from nebula_node.libvirt.driver import LibvirtDriver
from nebula_node.libvirt.states import DomainEvent

log = logging.getLogger("nebula.node.reports")

#: How long after a lifecycle event the domain is looked at.
SETTLE_S = 0.2
PUBLISH_TIMEOUT_S = 5.0


class InstanceLocks:
    """One asyncio.Lock per instance, forgotten once nobody holds or awaits it: operations
    on one instance run one at a time, operations on different instances concurrently."""

    def __init__(self) -> None:
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._users: Counter[uuid.UUID] = Counter()

    @contextlib.asynccontextmanager
    async def hold(self, instance_id: uuid.UUID) -> AsyncIterator[None]:
        lock = self._locks.setdefault(instance_id, asyncio.Lock())
        self._users[instance_id] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[instance_id] -= 1
            if not self._users[instance_id]:
                del self._users[instance_id], self._locks[instance_id]

    def busy(self, instance_id: uuid.UUID) -> bool:
        """True while an operation holds or awaits the instance."""
        return instance_id in self._users


class Reporter:
    def __init__(
        self,
        js: JetStreamContext,
        node_id: str,
        driver: LibvirtDriver,
        locks: InstanceLocks,
        *,
        settle: float = SETTLE_S,
    ) -> None:
        self._js = js
        self.node_id = node_id
        self.actor = node_actor(node_id)
        self._driver = driver
        self._locks = locks
        self._settle = settle
        #: The state the control plane last learned from this agent, per instance.
        self.known: dict[uuid.UUID, DomainState] = {}
        #: The addresses it last learned, per instance.
        self.addresses: dict[uuid.UUID, tuple[InstanceAddress, ...]] = {}
        self._reasons: dict[uuid.UUID, str] = {}
        self._looks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._closed = False

    async def close(self) -> None:
        """Cancel the looks still waiting; nothing is reported after this."""
        self._closed = True
        looks, self._looks = list(self._looks.values()), {}
        for look in looks:
            look.cancel()
        await asyncio.gather(*looks, return_exceptions=True)

    def caused(self, instance_id: uuid.UUID, state: DomainState) -> None:
        """The agent left the domain in `state` and told the caller so in its reply."""
        self.known[instance_id] = state

    def on_event(self, event: DomainEvent) -> None:
        """A libvirt lifecycle event (on the asyncio loop): look at the domain shortly."""
        if self._closed:
            return
        self._reasons[event.instance_id] = event.reason
        if event.instance_id not in self._looks:
            self._looks[event.instance_id] = asyncio.create_task(
                self._look_later(event.instance_id), name=f"report-{event.instance_id}"
            )

    async def _look_later(self, instance_id: uuid.UUID) -> None:
        try:
            await asyncio.sleep(self._settle)
        finally:
            self._looks.pop(instance_id, None)
        try:
            await self.check(instance_id)
        except Exception as err:  # the next sweep tries again
            log.warning(
                "instance=%s node=%s cannot look at the domain after an event: %s", instance_id, self.node_id, err
            )

    async def check(self, instance_id: uuid.UUID, reason: str | None = None) -> bool:
        """Between operations, report the domain's state if the control plane does not
        know it; True if a report was published."""
        async with self._locks.hold(instance_id):
            state = await self._driver.status(instance_id)
            if self.known.get(instance_id) == state:
                return False
            if reason is None and state == "missing" and instance_id not in self.known:
                return False  # an event of a domain this node never had: another's, not ours
            why = reason or self._reasons.pop(instance_id, None) or "found by the node agent"
            return await self._report(instance_id, state, why)

    async def reconcile(self, expected: Iterable[uuid.UUID], *, reason: str) -> int:
        """Report every instance in `expected` (the node's claims) and every Nebula domain
        libvirt holds whose state the control plane does not know (all of them, the first
        time: `missing` for an expected instance without a domain). Returns how many reports
        were published."""
        domains = await self._driver.domains()
        expected = set(expected)
        reported = 0
        for instance_id in sorted(expected | set(domains)):
            if self.known.get(instance_id) == domains.get(instance_id, "missing"):
                continue
            # Looked at again under the instance's lock: the listing may predate an operation.
            if await self.check(instance_id, reason):
                reported += 1
        for instance_id in [i for i, s in self.known.items() if s == "missing" and i not in expected | set(domains)]:
            if not self._locks.busy(instance_id):
                del self.known[instance_id]  # deleted and released: nothing left to remember
        return reported

    async def report_addresses(self, expected: Iterable[uuid.UUID]) -> int:
        """Report the leased addresses of each running instance in `expected` (the node's
        claims) that the control plane does not know; returns how many reports."""
        reported = 0
        for instance_id in sorted(expected):
            if self._locks.busy(instance_id):
                continue  # an operation is under way: the next look will do
            async with self._locks.hold(instance_id):
                state = await self._driver.status(instance_id)
                if state != "running":
                    continue
                found = await self._driver.addresses(instance_id)
                if found == self.addresses.get(instance_id, ()):
                    continue
                if await self._report(instance_id, state, "the guest's leases changed", addresses=found):
                    reported += 1
        for instance_id in set(self.addresses) - set(expected):
            del self.addresses[instance_id]
        return reported

    async def _report(
        self,
        instance_id: uuid.UUID,
        state: DomainState,
        reason: str,
        *,
        addresses: tuple[InstanceAddress, ...] | None = None,
    ) -> bool:
        if self._closed:
            return False
        command = ReportDomain(
            command_id=uuid.uuid4(),
            instance_id=instance_id,
            requested_at=datetime.now(UTC),
            actor=self.actor,
            node_id=self.node_id,
            state=state,
            reason=reason,
            addresses=addresses,
        )
        try:
            await self._js.publish(
                subjects.report_subject(self.node_id),
                msgspec.json.encode(command),
                stream=subjects.COMMANDS_STREAM,
                headers={"Nats-Msg-Id": str(command.command_id)},
                timeout=PUBLISH_TIMEOUT_S,
            )
        except Exception as err:
            log.warning("instance=%s node=%s cannot report state=%s: %s", instance_id, self.node_id, state, err)
            return False
        self.known[instance_id] = state
        if addresses is not None:
            self.addresses[instance_id] = addresses
        log.info(
            "instance=%s node=%s reported state=%s reason=%r%s command=%s",
            instance_id,
            self.node_id,
            state,
            reason,
            "" if addresses is None else f" addresses={[a.ipv4 for a in addresses]}",
            command.command_id,
        )
        return True
