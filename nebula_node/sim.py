"""The fleet simulator (`nebula sim --nodes N`): N node agents in one process.

Each simulated node is a real `NodeAgent` on real NATS - it registers, heartbeats, answers
requests and reports - whose hypervisor is libvirt's `test:///` driver opened on a file of
its own (`<state dir>/<node id>/libvirt.xml`, holding the node's CPUs and memory), so every
node has private domains and capacity. Domains are really defined, started, shut down and
undefined there; only no guest runs, and no image is fetched nor disk made: the node's
media (`SimulatedMedia`) only name a guest's files. All of that lives here, beside the
fleet, so that the real driver holds nothing that only a simulation needs.

All agents share one NATS connection (one broker): each subscribes to its own concrete
subjects on it, so a killed node stops answering exactly as a dead host would (no
responders), and its heartbeat key ages out. A node's libvirt connection outlives its
agent, as a host's hypervisor outlives a crashed agent: `revive` finds the domains where
`kill` left them, then re-registers and reconciles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from types import TracebackType

import msgspec

from nebula_core.config import Settings
from nebula_core.contract.errors import Conflict
from nebula_core.contract.node import CreateRequest
from nebula_core.contract.types import Overcommit, Resources
from nebula_core.messaging import make_broker, reply_errors
from nebula_node import disks, images
from nebula_node.agent import NodeAgent, node_overcommit
from nebula_node.libvirt.domain_xml import KernelBoot
from nebula_node.libvirt.driver import LibvirtDriver
from nebula_node.libvirt.media import Media, disk_paths, media_errors
from nebula_node.network import NetworkPlan

log = logging.getLogger("nebula.node.sim")

#: What a simulated node offers when the caller does not say.
DEFAULT_CAPACITY = Resources(vcpus=32, ram_mb=131072, disk_gb=2000)
#: Agents started at once when a fleet comes up.
START_CONCURRENCY = 32


# --- one simulated host ------------------------------------------------------------------


def simulated_host_xml(capacity: Resources) -> str:
    """A libvirt test-driver configuration: a host with `capacity`'s CPUs and memory and no
    domains (the driver reads `<node>`: https://libvirt.org/drvtest.html)."""
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    cores = str(max(1, capacity.vcpus))
    for tag, value in (
        ("nodes", "1"),
        ("sockets", "1"),
        ("cores", cores),
        ("threads", "1"),
        ("active", cores),
        ("mhz", "2000"),
        ("model", "x86_64"),
    ):
        ET.SubElement(cpu, tag).text = value
    ET.SubElement(node, "memory").text = str(max(1, capacity.ram_mb) * 1024)  # KiB
    return ET.tostring(node, encoding="unicode")


def simulated_host_uri(path: Path, capacity: Resources) -> str:
    """Write a test-driver configuration to `path`; the URI that opens a private host on it.

    Each connection opened on such a URI has its own state, starting from the file."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(simulated_host_xml(capacity))
    return f"test://{path}"


class SimulatedMedia:
    """The same paths as a real node's `LocalMedia`, but nothing is fetched and no disk is
    made. Disk sizes are remembered in memory so a repeated create with another size is
    still a conflict; each instance's console log gets one line saying that no guest runs.
    `fetch_delay` seconds stand for the time a real node spends fetching the image and
    making the disks."""

    def __init__(self, images_dir: Path, instances_dir: Path, *, fetch_delay: float = 0.0) -> None:
        self._cache = images.ImageCache(images_dir)
        self._disks = disks.InstanceDisks(instances_dir)
        self._sizes: dict[uuid.UUID, int] = {}
        self._fetch_delay = fetch_delay

    def console_log(self, instance_id: uuid.UUID) -> Path:
        return self._disks.console_log_path(instance_id)

    async def prepare(self, req: CreateRequest) -> Media:
        if self._fetch_delay:
            await asyncio.sleep(self._fetch_delay)
        with media_errors():
            image = self._cache.path_for(req.image.sha256)
            attached = disk_paths(self._disks.instance_dir(req.instance_id), req.image)
        if req.image.format == "qcow2":
            return Media(None, attached)
        return Media(KernelBoot(kernel=str(image), cmdline="console=ttyS0"), attached)

    async def create_disks(self, req: CreateRequest, media: Media) -> None:
        known = self._sizes.setdefault(req.instance_id, req.disk_gb)
        if known != req.disk_gb:
            raise Conflict(f"instance {req.instance_id} has a disk of {known} GiB, not {req.disk_gb} GiB")
        log_path = self.console_log(req.instance_id)
        line = f"nebula-sim: {req.name} ({req.instance_id}) is simulated by libvirt's test driver; no guest runs\n"
        await asyncio.to_thread(_write_once, log_path, line)

    async def remove(self, instance_id: uuid.UUID) -> None:
        self._sizes.pop(instance_id, None)
        await self._disks.delete(instance_id)


def _write_once(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError), path.open("x") as out:
        out.write(text)


def simulated_driver(
    uri: str, state_dir: Path, *, node_id: str, fetch_delay: float = 0.0, network: NetworkPlan | None = None
) -> LibvirtDriver:
    """Node `node_id`'s driver on the test-driver host `uri`, its (named, never made) files
    under `state_dir` as a real node's would be; TCG, since no guest runs anyway. Guests
    are on user-mode networking unless `network` plans a libvirt network (the test
    driver's, which leases each NIC an address of its own invention)."""
    images_dir, instances_dir = Path(state_dir) / "images", Path(state_dir) / "instances"
    return LibvirtDriver(
        uri,
        SimulatedMedia(images_dir, instances_dir, fetch_delay=fetch_delay),
        node_id=node_id,
        domain_type="qemu",
        disk_root=instances_dir,
        network=network,
    )


# --- the fleet ---------------------------------------------------------------------------


class Fleet:
    """N simulated nodes `f"{name_prefix}-{i:04d}"` (i from 1), as an async context manager."""

    def __init__(
        self,
        nats_url: str,
        *,
        nodes: int,
        region: str = "sim",
        capacity: Resources,
        overcommit: Overcommit = Overcommit(cpu=1, ram=1, disk=1),
        heartbeat_interval: float = 2.0,
        state_dir: Path,
        name_prefix: str = "sim",
        settings: Settings | None = None,
        create_delay: float = 0.0,
    ) -> None:
        """`settings` supplies whatever else an agent reads (e.g. `reconcile_interval`);
        `create_delay` seconds stand for a real node's image fetch in every create."""
        self.nats_url = nats_url
        self.region = region
        self.capacity = capacity
        self.overcommit = overcommit
        self.heartbeat_interval = heartbeat_interval
        self.state_dir = Path(state_dir)
        self.create_delay = create_delay
        self.node_ids = [f"{name_prefix}-{i:04d}" for i in range(1, nodes + 1)]
        self._base = settings or Settings(nats_url=nats_url)
        self._broker = make_broker(nats_url, name="sim", middlewares=[reply_errors])
        self._drivers: dict[str, LibvirtDriver] = {}
        self._agents: dict[str, NodeAgent] = {}
        #: Seconds the whole fleet took to come up (register, subscribe, first heartbeat).
        self.started_in = 0.0

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        started = time.monotonic()
        await self._broker.start()
        try:
            gate = asyncio.Semaphore(START_CONCURRENCY)

            async def bring_up(node_id: str) -> None:
                async with gate:
                    await self.revive(node_id)

            await asyncio.gather(*(bring_up(n) for n in self.node_ids))
        except BaseException:
            await self.close()
            raise
        self.started_in = time.monotonic() - started
        log.info("fleet of %d nodes up in %.2fs", len(self.node_ids), self.started_in)

    async def close(self) -> None:
        """Stop every agent, close every simulated hypervisor, disconnect."""
        agents, self._agents = list(self._agents.values()), {}
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
        drivers, self._drivers = list(self._drivers.values()), {}
        await asyncio.gather(*(d.close() for d in drivers), return_exceptions=True)
        await self._broker.stop()

    def settings_for(self, node_id: str) -> Settings:
        return msgspec.structs.replace(
            self._base,
            nats_url=self.nats_url,
            node_id=node_id,
            region=self.region,
            heartbeat_interval=self.heartbeat_interval,
            state_dir=str(self.state_dir / node_id),
            libvirt_uri=self._driver(node_id).uri,
        )

    def _driver(self, node_id: str) -> LibvirtDriver:
        if node_id not in self._drivers:
            if node_id not in self.node_ids:
                raise KeyError(f"no simulated node {node_id!r}")
            node_dir = self.state_dir / node_id
            uri = simulated_host_uri(node_dir / "libvirt.xml", self.capacity)
            self._drivers[node_id] = simulated_driver(uri, node_dir, node_id=node_id, fetch_delay=self.create_delay)
        return self._drivers[node_id]

    def agent(self, node_id: str) -> NodeAgent:
        """The running agent of a node; KeyError if it is dead."""
        return self._agents[node_id]

    def driver(self, node_id: str) -> LibvirtDriver:
        """A node's simulated hypervisor (alive or not): to act on its domains behind the agent's back."""
        return self._driver(node_id)

    def alive(self, node_id: str) -> bool:
        return node_id in self._agents

    async def kill(self, node_id: str) -> None:
        """The node's agent dies: no more answers, heartbeats or reports, and no goodbye;
        its heartbeat key expires by TTL. Its domains stay as they are."""
        agent = self._agents.pop(node_id, None)
        if agent is not None:
            await agent.stop()
            log.info("node=%s killed", node_id)

    async def revive(self, node_id: str) -> NodeAgent:
        """Start the node's agent (again): it re-registers, heartbeats and reconciles."""
        if node_id in self._agents:
            return self._agents[node_id]
        driver = self._driver(node_id)
        agent = NodeAgent(self.settings_for(node_id), capacity=self.capacity, overcommit=self.overcommit, driver=driver)
        await agent.start(self._broker)
        self._agents[node_id] = agent
        return agent


async def run_sim(
    settings: Settings,
    nodes: int,
    stop: asyncio.Event,
    *,
    capacity: Resources | None = None,
    overcommit: Overcommit | None = None,
    region: str | None = None,
    name_prefix: str = "sim",
    heartbeat_interval: float | None = None,
    state_dir: Path | None = None,
    create_delay: float = 0.0,
) -> None:
    """`nebula sim --nodes N`: run a simulated fleet until `stop` is set.

    Defaults come from `settings`: its region (so the simulated nodes serve the cloud's
    default region), overcommit ratios and heartbeat interval; state under
    `<state dir>/sim/`."""
    fleet = Fleet(
        settings.nats_url,
        nodes=nodes,
        region=region or settings.region,
        capacity=capacity or DEFAULT_CAPACITY,
        overcommit=overcommit or node_overcommit(settings),
        heartbeat_interval=heartbeat_interval or settings.heartbeat_interval,
        state_dir=state_dir or Path(settings.state_dir) / "sim",
        name_prefix=name_prefix,
        settings=settings,
        create_delay=create_delay,
    )
    async with fleet:
        log.info(
            "simulating %d nodes %s-0001..%s-%04d in region %s", nodes, name_prefix, name_prefix, nodes, fleet.region
        )
        await stop.wait()
