"""The compute-node agent (`nebula node`): one per host.

On start it registers the node with the orchestrators (`nebula.ctl.<node id>.register`: they
keep the node's aggregate, created the first time and changed only when its region,
capacity, overcommit or version changed; a node appends no event and reads none), answers the orchestrators'
request/reply operations on `nebula.node.<node id>.<op>`, heartbeats into the
`nebula_nodes` bucket, and reconciles: it reports the state of every instance the control
plane expects here (the node's claims) and of every Nebula domain libvirt holds, so that
what changed while it was away becomes known. From then on it reports what libvirt does
on its own (see `reports`), and sweeps again every `reconcile_interval`.

Operations on one instance run one at a time (a per-instance lock); operations on
different instances run concurrently. Every operation is idempotent (see `driver`), so
an orchestrator may repeat one after a timeout.

The heartbeat's `allocated` is the node's claims - what placement has promised here, as
the orchestrators tell it - asked again after an operation that follows a claim or a
release (create, delete) and on every sweep; `running` counts the domains libvirt runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Literal

from faststream.nats import NatsBroker
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from nebula_core.config import Settings
from nebula_core.contract import subjects
from nebula_core.contract.errors import ConcurrencyConflict, Unavailable
from nebula_core.contract.kv import Heartbeat
from nebula_core.contract.node import (
    ConsoleOutput,
    ConsoleRequest,
    CreateRequest,
    DomainState,
    DomainStatus,
    InstanceRequest,
    NodeClaims,
    NodeReply,
    Registration,
    StopRequest,
    node_actor,
)
from nebula_core.contract.types import Overcommit, Resources
from nebula_core.messaging import ControlClient, make_broker, reply_errors
from nebula_node.heartbeat import Heartbeats
from nebula_node.libvirt.driver import LibvirtDriver
from nebula_node.network import HostGuard, NetworkPlan, guard_host
from nebula_node.reports import InstanceLocks, Reporter

log = logging.getLogger("nebula.node.agent")

#: How long one request to the orchestrators waits, and the pause before asking again
#: while no orchestrator answers a registration.
CONTROL_TIMEOUT_S = 10.0
REGISTER_RETRY_S = 1.0
#: Heartbeats after a create or a delete on which the claims are asked for again.
STALE_BEATS = 2
#: Requests one operation's subscriber handles at once (different instances run in parallel).
WORKERS_PER_OP = 16


def agent_version() -> str:
    try:
        return metadata.version("nebula-cloud")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def node_capacity(detected: Resources, settings: Settings) -> Resources:
    """The capacity offered to placement: each `node_*` setting that is not 0 overrides
    what was detected."""
    return Resources(
        vcpus=settings.node_vcpus or detected.vcpus,
        ram_mb=settings.node_ram_mb or detected.ram_mb,
        disk_gb=settings.node_disk_gb or detected.disk_gb,
    )


def node_overcommit(settings: Settings) -> Overcommit:
    return Overcommit(cpu=settings.cpu_overcommit, ram=settings.ram_overcommit, disk=settings.disk_overcommit)


class Operations:
    """The request/reply handlers, one per operation, typed by the contract's requests.
    Their errors become `NodeReply(error=...)` through `reply_errors`."""

    def __init__(
        self,
        node_id: str,
        driver: LibvirtDriver,
        locks: InstanceLocks,
        reporter: Reporter,
        claims_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._node_id = node_id
        self._driver = driver
        self._locks = locks
        self._reporter = reporter
        self._claims_changed = claims_changed

    def handlers(self) -> dict[str, Callable[..., Awaitable[NodeReply]]]:
        table: dict[str, Callable[..., Awaitable[NodeReply]]] = {
            "create": self.create,
            "start": self.start,
            "stop": self.stop,
            "reboot": self.reboot,
            "delete": self.delete,
            "status": self.status,
            "console": self.console,
        }
        assert set(table) == set(subjects.NODE_OPS)
        return table

    async def _operate(
        self, op: str, instance_id: uuid.UUID, action: Callable[[], Awaitable[DomainState]]
    ) -> NodeReply:
        async with self._locks.hold(instance_id):
            state = await action()
            self._reporter.caused(instance_id, state)
        log.info("instance=%s node=%s op=%s state=%s", instance_id, self._node_id, op, state)
        return NodeReply(status=DomainStatus(instance_id=instance_id, state=state))

    async def create(self, req: CreateRequest) -> NodeReply:
        """Define the instance's domain (and start it); repeated, it changes nothing."""
        self._claims_changed()
        return await self._operate("create", req.instance_id, lambda: self._driver.create(req))

    async def start(self, req: InstanceRequest) -> NodeReply:
        """Start (or resume) the domain; a running one is left alone."""
        return await self._operate("start", req.instance_id, lambda: self._driver.start(req.instance_id))

    async def stop(self, req: StopRequest) -> NodeReply:
        """ACPI shutdown, destroyed after `grace_seconds`; a stopped one stays stopped."""
        return await self._operate(
            "stop", req.instance_id, lambda: self._driver.stop(req.instance_id, req.grace_seconds)
        )

    async def reboot(self, req: InstanceRequest) -> NodeReply:
        """Reboot the domain (start it if it is off)."""
        return await self._operate("reboot", req.instance_id, lambda: self._driver.reboot(req.instance_id))

    async def delete(self, req: InstanceRequest) -> NodeReply:
        """Destroy, undefine and remove the disks; a missing domain is success."""
        self._claims_changed()
        return await self._operate("delete", req.instance_id, lambda: self._driver.delete(req.instance_id))

    async def status(self, req: InstanceRequest) -> NodeReply:
        """The domain's state (`missing` if there is none)."""
        state = await self._driver.status(req.instance_id)
        return NodeReply(status=DomainStatus(instance_id=req.instance_id, state=state))

    async def console(self, req: ConsoleRequest) -> NodeReply:
        """The tail of the serial console log."""
        data, truncated = await self._driver.console(req.instance_id, req.max_bytes)
        return NodeReply(console=ConsoleOutput(instance_id=req.instance_id, data=data, truncated=truncated))


class NodeAgent:
    """One compute node: registration, handlers, heartbeats and reports.

    `capacity` and `overcommit` override the settings (and detection); `libvirt_uri`
    overrides `settings.libvirt_uri`. A `driver` passed in (a simulated host's, say) is used
    as it is and outlives the agent (the simulator keeps a node's hypervisor across agent
    restarts, as a real host does).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        capacity: Resources | None = None,
        overcommit: Overcommit | None = None,
        libvirt_uri: str | None = None,
        kvm: bool | None = None,
        driver: LibvirtDriver | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.actor = node_actor(self.node_id)
        if driver is None:
            use_kvm = settings.node_kvm if kvm is None else kvm
            driver = LibvirtDriver.for_node(
                libvirt_uri or settings.libvirt_uri,
                Path(settings.state_dir),
                node_id=settings.node_id,
                kvm=use_kvm,
                network=NetworkPlan.of(settings),
                image_sources=settings.image_sources,
            )
            self._owns_driver = True
        else:
            self._owns_driver = False
        self.driver = driver
        self._capacity = capacity
        #: What the node offers placement; detected on start unless given.
        self.capacity = capacity or Resources()
        self.overcommit = overcommit or node_overcommit(settings)
        self.version = agent_version()
        self._locks = InstanceLocks()
        self._claims: NodeClaims | None = None
        #: Beats left on which to ask for the claims again (see `claims_changed`).
        self._stale = 0
        self._running = 0
        self._subscribers: list = []
        self._tasks: list[asyncio.Task[None]] = []
        self._reporter: Reporter | None = None
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._control: ControlClient | None = None
        self._guard: HostGuard | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, broker: NatsBroker) -> None:
        """Register, answer requests, heartbeat and reconcile, on a started broker.

        Returns once the node is registered, subscribed, has sent its first heartbeat and
        has reported what it found."""
        nc = broker.connection
        if nc is None:
            raise RuntimeError("the broker must be started before the agent")
        self._nc = nc
        self._js = nc.jetstream()
        self._control = ControlClient(nc, self.node_id, timeout=CONTROL_TIMEOUT_S)
        self._reporter = Reporter(self._js, self.node_id, self.driver, self._locks)
        try:
            await self.driver.open()
            if self._owns_driver:
                self._guard = await asyncio.to_thread(guard_host, self.driver.network)
            self.driver.listen(self._reporter.on_event)
            if self._capacity is None:
                self.capacity = node_capacity(await self.driver.capacity(), self.settings)
            await self._register()
            await self._subscribe(broker)
            heartbeats = Heartbeats(self._js, self.node_id, self.settings.heartbeat_interval, self.heartbeat)
            await heartbeats.beat()
            self._tasks.append(asyncio.create_task(heartbeats.run(), name=f"heartbeat-{self.node_id}"))
            reported = await self._reporter.reconcile(self.node.claims, reason="found when the node agent started")
            self._tasks.append(asyncio.create_task(self._sweep(), name=f"sweep-{self.node_id}"))
            if self.driver.network.name is not None and self.settings.node_address_interval > 0:
                self._tasks.append(asyncio.create_task(self._watch_addresses(), name=f"addresses-{self.node_id}"))
        except BaseException:
            await self.stop()
            raise
        log.info(
            "node=%s up: %d vCPU, %d MiB, %d GiB, %d claims, %d reports, domain type %s",
            self.node_id,
            self.capacity.vcpus,
            self.capacity.ram_mb,
            self.capacity.disk_gb,
            len(self.node.claims),
            reported,
            self.driver.domain_type,
        )

    async def stop(self) -> None:
        """Stop answering, heartbeating and reporting; no goodbye (the heartbeat key ages
        out). Operations in progress are cancelled; the domains keep running."""
        self.driver.listen(None)
        subscribers, self._subscribers = self._subscribers, []
        await asyncio.gather(*(s.stop() for s in subscribers), return_exceptions=True)
        if subscribers and self._nc is not None and self._nc.is_connected:
            # Stopped means the server knows: a request after this gets no responders.
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=5)
        tasks, self._tasks = self._tasks, []
        await _cancel_and_wait(tasks)
        if self._reporter is not None:
            await self._reporter.close()
        if self._owns_driver:
            await self.driver.close()

    async def _subscribe(self, broker: NatsBroker) -> None:
        assert self._reporter is not None
        operations = Operations(self.node_id, self.driver, self._locks, self._reporter, self.claims_changed)
        for op, handler in operations.handlers().items():
            subscriber = broker.subscriber(
                subjects.node_subject(self.node_id, op),
                persistent=False,
                max_workers=WORKERS_PER_OP,
                description=handler.__doc__,
            )
            subscriber(handler)
            await subscriber.start()
            self._subscribers.append(subscriber)

    # --- registration and claims: asked of the orchestrators ---------------------------

    @property
    def node(self) -> NodeClaims:
        """The node's claims as last told by the orchestrators (what it is expected to run)."""
        if self._claims is None:
            raise RuntimeError("the agent has not registered yet")
        return self._claims

    async def _register(self) -> None:
        """Tell the orchestrators what this node offers, until one of them has recorded it.
        Safe to repeat: the orchestrator records a change only when something differs."""
        assert self._control is not None
        registration = Registration(
            region=self.settings.region,
            capacity=self.capacity,
            overcommit=self.overcommit,
            agent_version=self.version,
        )
        waited = 0
        while True:
            try:
                self._claims = await self._control.register(registration)
                break
            except (Unavailable, ConcurrencyConflict) as err:  # no orchestrator yet, or busy: ask again
                if waited % 10 == 0:
                    log.warning("node=%s not registered yet: %s", self.node_id, err)
                waited += 1
                await asyncio.sleep(REGISTER_RETRY_S)
        log.info("node=%s registered (version %d)", self.node_id, self._claims.version)

    def claims_changed(self) -> None:
        """An operation here follows a claim (create) or comes before a release (delete):
        ask for the claims on the next beats, by when the orchestrator has recorded it."""
        self._stale = STALE_BEATS

    async def refresh_node(self) -> NodeClaims:
        """Ask the orchestrators for the node's claims now."""
        assert self._control is not None
        self._claims = await self._control.claims()
        return self.node

    # --- heartbeats and sweeps ---------------------------------------------------------

    async def heartbeat(self) -> Heartbeat:
        """The node as it is now; `degraded` while libvirt does not answer."""
        health: Literal["ok", "degraded"] = "ok"
        try:
            domains = await self.driver.domains()
            self._running = sum(1 for state in domains.values() if state == "running")
        except Exception as err:
            health = "degraded"
            log.warning("node=%s libvirt does not answer: %s", self.node_id, err)
        if self._stale:
            try:
                await self.refresh_node()
                self._stale -= 1
            except Exception as err:  # the claims shown are the last ones known
                log.warning("node=%s cannot ask for its claims: %s", self.node_id, err)
        return Heartbeat(
            node_id=self.node_id,
            name=self.node_id,
            region=self.settings.region,
            capacity=self.capacity,
            overcommit=self.overcommit,
            allocated=self.node.allocated,
            running=self._running,
            health=health,
            agent_version=self.version,
            at=datetime.now(UTC),
            interval_seconds=self.settings.heartbeat_interval,
        )

    async def reconcile(self, reason: str = "found by the node's periodic check") -> int:
        """Report whatever the control plane does not know; returns how many reports."""
        assert self._reporter is not None
        node = await self.refresh_node()
        return await self._reporter.reconcile(node.claims, reason=reason)

    async def _watch_addresses(self) -> None:
        """Report each running guest's leased addresses when they change."""
        assert self._reporter is not None
        while True:
            await asyncio.sleep(self.settings.node_address_interval)
            try:
                await self._reporter.report_addresses(self.node.claims)
            except Exception as err:
                log.warning("node=%s cannot look at its guests' addresses: %s", self.node_id, err)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval)
            try:
                await self.reconcile()
            except Exception as err:
                log.warning("node=%s periodic reconcile failed: %s", self.node_id, err)


async def _cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait until they have ended. Cancelled again while they run on:
    on Python 3.11, `asyncio.wait_for` (inside nats-py's requests) can swallow a
    cancellation that arrives as its result does, and the loop would go on."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


def documented_broker(settings: Settings) -> NatsBroker:
    """A broker holding one node agent's request/reply handlers under the subject
    pattern `nebula.node.{node_id}.<op>`, for the AsyncAPI document (never started)."""
    broker = make_broker(settings.nats_url, name="node", middlewares=[reply_errors])
    operations = Operations("{node_id}", None, InstanceLocks(), None)  # type: ignore[arg-type]
    for op, handler in operations.handlers().items():
        broker.subscriber(
            f"{subjects.NODE_PREFIX}.{{node_id}}.{op}",
            title=f"node/{op}",
            description=handler.__doc__,
        )(handler)
    return broker


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """`nebula node`: run this host's agent until `stop` is set."""
    broker = make_broker(settings.nats_url, name="node", middlewares=[reply_errors])
    await broker.start()
    agent = NodeAgent(settings)
    try:
        await agent.start(broker)
        await stop.wait()
    finally:
        await agent.stop()
        await broker.stop()
