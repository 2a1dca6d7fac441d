"""End-to-end fixtures: real VMs under libvirtd + QEMU (TCG) on qemu:///system.

`host`, once per session, makes libvirtd answer (ops/host/libvirt-up.sh, which also makes
the node's state directory reachable by QEMU's user) and builds nebula-tiny into
`.state/images/nebula-tiny` (a no-op when it is current). Without root, libvirtd or QEMU
the tests skip and say why - or fail, when NEBULA_REQUIRE_E2E=1 (as .ci/run sets): CI
never passes by skipping them.

Per test: the integration tests' `cloud` (real NATS, Postgres, API and projector), the
metadata service on 127.0.0.1:<free port> - which a guest reaches as 10.0.2.2 through
QEMU's user-mode networking - and, for `nebula`, an orchestrator and one node agent on
qemu:///system. Every domain and instance directory a test names in `leftovers` is
destroyed at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import libvirt
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nebula_core import config
from nebula_core.contract.permissions import node_user
from nebula_core.messaging import make_broker, reply_errors
from nebula_core.orchestrator.service import Orchestrator
from nebula_meta.app import make_app as make_meta_app
from nebula_node.agent import NodeAgent
from nebula_node.libvirt.states import instance_of
from tests.conftest import TEST_NODES
from tests.integration.conftest import Cloud, cloud  # noqa: F401 — the control plane, as a fixture here too

REPO = Path(__file__).resolve().parents[2]
URI = "qemu:///system"
#: The host's loopback as a guest sees it under QEMU's user-mode networking.
GUEST_HOST_ADDR = "10.0.2.2"
#: How long to wait for Nebula domains of someone else to go before starting a node agent.
FOREIGN_DOMAINS_WAIT_S = 120.0


@dataclass(frozen=True)
class Host:
    """This machine as a compute node: libvirtd answering and nebula-tiny built."""

    state_dir: Path  # the node's: images/ (its cache) and instances/
    image_dir: Path  # nebula-tiny as ops/guest/build-tiny.sh leaves it

    @property
    def manifest(self) -> Path:
        return self.image_dir / "manifest.json"

    def instance_dir(self, instance_id: str) -> Path:
        return self.state_dir / "instances" / instance_id


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("NEBULA_REQUIRE_E2E") == "1":
        pytest.fail(f"the end-to-end tests cannot run (NEBULA_REQUIRE_E2E=1): {reason}", pytrace=False)
    pytest.skip(f"no real VM: {reason}")


def _prepare(argv: list[str], timeout: float) -> None:
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        _unavailable(f"{' '.join(argv)}: {err}")
    if done.returncode != 0:
        tail = " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        _unavailable(f"{' '.join(argv)} exited {done.returncode}: {tail}")


@pytest.fixture(scope="session")
def host() -> Host:
    if os.geteuid() != 0:
        _unavailable(f"{URI} needs root (libvirtd runs QEMU for root's connections)")
    state = REPO / ".state"
    prepared = Host(state_dir=state / "e2e", image_dir=state / "images" / "nebula-tiny")
    _prepare(["sh", str(REPO / "ops/host/libvirt-up.sh"), str(prepared.state_dir), str(prepared.image_dir)], 180)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # raised as exceptions anyway
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError as err:
        _unavailable(f"libvirt does not answer on {URI}: {err}")
    # The first build downloads Debian packages; later ones find the image current.
    _prepare(["sh", str(REPO / "ops/guest/build-tiny.sh"), str(prepared.image_dir)], 900)
    return prepared


@pytest.fixture
def image_roots(host: Host) -> str:
    """The cloud's and the node's image root: where nebula-tiny is built."""
    return str(host.image_dir.parent)


@pytest.fixture
def virt(host: Host) -> Iterator[libvirt.virConnect]:
    """The test's own connection to qemu:///system, to look at what the node did."""
    conn = libvirt.open(URI)
    yield conn
    conn.close()


@dataclass
class Leftovers:
    """Instances a test put on the host: their domains and directories go at teardown."""

    conn: libvirt.virConnect
    host: Host
    ids: list[str] = field(default_factory=list)

    def add(self, instance_id: str) -> None:
        self.ids.append(instance_id)

    def remove_all(self) -> None:
        for instance_id in self.ids:
            with contextlib.suppress(libvirt.libvirtError):  # already gone
                dom = self.conn.lookupByName(instance_id)
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            shutil.rmtree(self.host.instance_dir(instance_id), ignore_errors=True)


@pytest.fixture
def leftovers(virt: libvirt.virConnect, host: Host) -> Iterator[Leftovers]:
    made = Leftovers(virt, host)
    yield made
    made.remove_all()


@dataclass
class Meta:
    """The metadata service under test, and every request it answered."""

    url: str  # as the test reaches it
    guest_url: str  # as a VM reaches it
    answered: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status

    def to(self, instance_id: str) -> list[tuple[str, str, int]]:
        return [a for a in self.answered if f"/nocloud/{instance_id}/" in a[1]]


@pytest.fixture
async def meta(cloud: Cloud) -> AsyncIterator[Meta]:
    app = make_meta_app(cloud.settings_for("meta"))
    answered: list[tuple[str, str, int]] = []

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        try:
            response = await handler(request)
        except web.HTTPException as err:
            answered.append((request.method, request.path, err.status))
            raise
        answered.append((request.method, request.path, response.status))
        return response

    app.middlewares.insert(0, record)  # outermost: sees the status the VM gets
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Meta(f"http://127.0.0.1:{server.port}", f"http://{GUEST_HOST_ADDR}:{server.port}", answered)
    await server.close()


@pytest.fixture
async def tiny_image(cloud: Cloud, host: Host) -> dict[str, object]:
    """nebula-tiny registered through the API, as `nebula up` does; the image's JSON."""
    data = host.manifest.read_bytes()
    status, body = await cloud.admin.post(
        "/v1/images",
        {
            "name": "nebula-tiny",
            "format": "direct-kernel",
            "source": str(host.manifest),
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        },
    )
    assert status == 201, body
    return dict(body)


def foreign_domains(conn: libvirt.virConnect) -> list[str]:
    """Nebula domains (named by a UUID) on this host: a node agent takes every one as its own."""
    return [d.name() for d in conn.listAllDomains(0) if instance_of(d.name()) is not None]


@dataclass
class Nebula:
    """The whole stack: `cloud` plus the metadata service, an orchestrator and a node agent."""

    cloud: Cloud
    meta: Meta
    host: Host
    virt: libvirt.virConnect
    leftovers: Leftovers
    settings: config.Settings


@pytest.fixture
def e2e_node_id() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def nats_node_ids(e2e_node_id: str) -> tuple[str, ...]:  # type: ignore[override]
    """The test NATS knows this run's node (its id is new each run: see `nebula`)."""
    return (*TEST_NODES, e2e_node_id)


@pytest.fixture
def guest_network() -> str:
    """The node's NEBULA_NODE_NETWORK: QEMU's user-mode networking, where the guest probes
    reach the host at 10.0.2.2 (a module testing the managed network overrides it)."""
    return "user"


@pytest.fixture
async def nebula(
    e2e_node_id: str,
    guest_network: str,
    cloud: Cloud,
    meta: Meta,
    host: Host,
    virt: libvirt.virConnect,
    leftovers: Leftovers,
    tiny_image: dict[str, object],
) -> AsyncIterator[Nebula]:
    # The agent reports every UUID-named domain it finds and the orchestrator deletes
    # those it does not know: wait until no one else's (another run's) are left.
    deadline = time.monotonic() + FOREIGN_DOMAINS_WAIT_S
    while (others := foreign_domains(virt)) and time.monotonic() < deadline:
        await asyncio.sleep(1)
    if others:
        pytest.fail(
            f"{URI} holds Nebula domains this test did not make: {others}; "
            f"a node agent would delete them (remove them with virsh destroy/undefine)",
            pytrace=False,
        )
    settings = config.load(
        {},
        nats_url=cloud.nats.url_for("orchestrator"),
        pg_dsn=cloud.settings.pg_dsn,
        libvirt_uri=URI,
        node_id=e2e_node_id,
        state_dir=str(host.state_dir),
        image_roots=cloud.settings.image_roots,
        meta_url=meta.guest_url,
        node_network=guest_network,
        # Creating a domain and booting it under TCG takes seconds, not milliseconds.
        node_timeout=60.0,
        node_retries=2,
    )
    async with contextlib.AsyncExitStack() as stack:
        orchestrator = Orchestrator(settings, pool=cloud.pool)
        await orchestrator.start()
        stack.push_async_callback(orchestrator.stop)
        # The node as on a compute host: its own NATS identity.
        node_settings = msgspec.structs.replace(settings, nats_url=cloud.nats.url_for(node_user(e2e_node_id)))
        broker = make_broker(node_settings.nats_url, name="node", middlewares=[reply_errors])
        await broker.start()
        stack.push_async_callback(broker.stop)
        agent = NodeAgent(node_settings)
        await agent.start(broker)
        stack.push_async_callback(agent.stop)
        yield Nebula(cloud, meta, host, virt, leftovers, settings)
