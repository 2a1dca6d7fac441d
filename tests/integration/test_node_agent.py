"""The node agent on a real nats-server and libvirt's real test driver: registration,
heartbeats that expire, request/reply operations and their errors, reports of what
happens behind the agent's back, and reconciliation when it starts."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import msgspec
import nats.errors
import nats.js.errors
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from nebula_core.allinone.embedded import NatsServer
from nebula_core.config import Settings
from nebula_core.contract import subjects
from nebula_core.contract.commands import ReportDomain
from nebula_core.contract.events import event_type
from nebula_core.contract.kv import Heartbeat
from nebula_core.contract.node import (
    ConsoleRequest,
    CreateRequest,
    ImageSpec,
    InstanceRequest,
    NodeReply,
    StopRequest,
)
from nebula_core.contract.permissions import node_user
from nebula_core.contract.types import Overcommit, Resources
from nebula_core.domain import AGGREGATES, Node
from nebula_core.domain.codec import Codec
from nebula_core.domain.node import node_uuid
from nebula_core.eventstore import EventStore
from nebula_core.messaging import make_broker, reply_errors
from nebula_core.orchestrator.fleet import Fleet
from nebula_node.agent import NodeAgent
from nebula_node.libvirt.domain_xml import GuestSpec, KernelBoot, build_domain
from nebula_node.sim import simulated_driver, simulated_host_uri
from tests.support import eventually

NODE = "node-a"
CAPACITY = Resources(vcpus=8, ram_mb=16384, disk_gb=200)
IMAGE = ImageSpec(
    id=uuid.uuid4(),
    name="nebula-tiny",
    format="direct-kernel",
    source="/srv/images/nebula-tiny/manifest.json",
    sha256="a" * 64,
    size=1234,
)
FLAVOUR = Resources(vcpus=2, ram_mb=512, disk_gb=10)


def create_request(instance_id: uuid.UUID | None = None, **changes: object) -> CreateRequest:
    req = CreateRequest(
        instance_id=instance_id or uuid.uuid4(),
        project_id=uuid.UUID(int=1),
        name="web-1",
        vcpus=FLAVOUR.vcpus,
        ram_mb=FLAVOUR.ram_mb,
        disk_gb=FLAVOUR.disk_gb,
        image=IMAGE,
        metadata_token="token",
    )
    return msgspec.structs.replace(req, **changes)


async def call(nc: NATS, op: str, request: msgspec.Struct | bytes, node: str = NODE) -> NodeReply:
    payload = request if isinstance(request, bytes) else msgspec.json.encode(request)
    msg = await nc.request(subjects.node_subject(node, op), payload, timeout=10)
    return msgspec.json.decode(msg.data, type=NodeReply)


async def state_of(nc: NATS, op: str, request: msgspec.Struct, node: str = NODE) -> str:
    reply = await call(nc, op, request, node)
    assert reply.error is None and reply.status is not None, reply
    return reply.status.state


async def reports(js: JetStreamContext, after: int = 0) -> list[tuple[dict[str, str], ReportDomain]]:
    """Every report on the command stream (read by sequence: no consumer is touched)."""
    state = (await js.stream_info(subjects.COMMANDS_STREAM)).state
    found = []
    for seq in range(max(state.first_seq, after + 1), state.last_seq + 1):
        try:
            msg = await js.get_msg(subjects.COMMANDS_STREAM, seq)
        except nats.js.errors.NotFoundError:
            continue
        if msg.subject.startswith(f"{subjects.COMMANDS_PREFIX}.report."):
            found.append((msg.headers or {}, msgspec.json.decode(msg.data, type=ReportDomain)))
    return found


async def last_command_seq(js: JetStreamContext) -> int:
    return (await js.stream_info(subjects.COMMANDS_STREAM)).state.last_seq


def reports_of(instance_id: uuid.UUID, js: JetStreamContext, after: int = 0):
    async def probe() -> list[ReportDomain]:
        return [r for _, r in await reports(js, after) if r.instance_id == instance_id]

    return probe


async def heartbeat_of(js: JetStreamContext, node: str = NODE) -> Heartbeat | None:
    kv = await js.key_value(subjects.NODES_BUCKET)
    try:
        entry = await kv.get(node)
    except nats.js.errors.KeyNotFoundError:
        return None
    # An expired key's last entry is the server's delete marker, which has no value.
    return msgspec.json.decode(entry.value, type=Heartbeat) if entry.value else None


def settings(nats_server: NatsServer, tmp_path: Path, **changes: object) -> Settings:
    base = Settings(
        nats_url=nats_server.url_for(node_user(NODE)),
        node_id=NODE,
        region="r1",
        state_dir=str(tmp_path / "state"),
        heartbeat_interval=1.0,
        reconcile_interval=3600,
        cpu_overcommit=2.0,
    )
    return msgspec.structs.replace(base, **changes)


def simulated_agent(node_settings: Settings, uri: str, capacity: Resources | None = None) -> NodeAgent:
    """An agent whose hypervisor is the test-driver host `uri`; `stop` it."""
    driver = simulated_driver(uri, Path(node_settings.state_dir), node_id=node_settings.node_id)
    return NodeAgent(node_settings, driver=driver, capacity=capacity)


async def stop(agent: NodeAgent) -> None:
    """Stop the agent, then close the hypervisor it was given."""
    await agent.stop()
    await agent.driver.close()


@pytest.fixture
async def broker(nats_server: NatsServer, js: JetStreamContext, registrar: Fleet) -> AsyncIterator[NatsBroker]:
    """The node's broker, with the orchestrators' answers to nodes running (`registrar`)."""
    broker = make_broker(nats_server.url_for(node_user(NODE)), name="node", middlewares=[reply_errors])
    await broker.start()
    yield broker
    await broker.stop()


@pytest.fixture
async def agent(broker: NatsBroker, nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[NodeAgent]:
    """An agent on a private test-driver host of its own."""
    uri = simulated_host_uri(tmp_path / "host.xml", CAPACITY)
    agent = simulated_agent(settings(nats_server, tmp_path), uri, capacity=CAPACITY)
    await agent.start(broker)
    yield agent
    await stop(agent)


@pytest.fixture
def host() -> AsyncIterator[libvirt.virConnect]:
    """A second connection to `test:///default`: the same host as an agent opened on that
    URI, to act behind its back. While it is open, the host keeps its state."""
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


@pytest.fixture
async def default_agent(
    host: libvirt.virConnect, broker: NatsBroker, nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[NodeAgent]:
    agent = simulated_agent(settings(nats_server, tmp_path), "test:///default")
    await agent.start(broker)
    yield agent
    await stop(agent)


async def node_history(js: JetStreamContext) -> list[tuple[str, str]]:
    store = EventStore(js, Codec(*AGGREGATES))
    return [(event_type(h.event), h.event.actor) for h in await store.history("node", node_uuid(NODE))]


async def claim(js: JetStreamContext, *instances: uuid.UUID) -> None:
    """What an orchestrator does when it places instances on the node."""
    store = EventStore(js, Codec(*AGGREGATES))
    node = await store.load(Node, node_uuid(NODE))
    for instance_id in instances:
        node.claim(instance_id, FLAVOUR)
    await store.save(node, actor="system:orchestrator")


# --- registration ----------------------------------------------------------------------------


async def test_a_new_node_registers_itself(agent: NodeAgent, js: JetStreamContext) -> None:
    node = await EventStore(js, Codec(*AGGREGATES)).load(Node, node_uuid(NODE))

    assert (node.name, node.region, node.capacity) == (NODE, "r1", CAPACITY)
    assert node.overcommit == Overcommit(cpu=2.0, ram=1.0, disk=1.0)
    assert node.agent_version == agent.version and node.claims == {}
    assert await node_history(js) == [("node.registered", f"system:node:{NODE}")]


async def test_a_restart_records_only_what_changed(
    broker: NatsBroker, nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    uri = simulated_host_uri(tmp_path / "host.xml", CAPACITY)
    for node_settings in (
        settings(nats_server, tmp_path),
        settings(nats_server, tmp_path),
        settings(nats_server, tmp_path, node_vcpus=4),
    ):
        agent = simulated_agent(node_settings, uri)
        await agent.start(broker)
        await stop(agent)

    assert [t for t, _ in await node_history(js)] == ["node.registered", "node.reregistered"]
    node = await EventStore(js, Codec(*AGGREGATES)).load(Node, node_uuid(NODE))
    # The setting wins; the rest is detected (memory from libvirt, disk from the filesystem).
    assert (node.capacity.vcpus, node.capacity.ram_mb) == (4, CAPACITY.ram_mb)
    assert node.capacity.disk_gb == shutil.disk_usage(tmp_path).total >> 30


# --- heartbeats --------------------------------------------------------------------------------


async def test_the_heartbeat_says_what_the_node_has_runs_and_is_promised(
    agent: NodeAgent, nc: NATS, js: JetStreamContext
) -> None:
    first = await heartbeat_of(js)
    assert first is not None
    assert (first.node_id, first.region, first.capacity, first.running) == (NODE, "r1", CAPACITY, 0)
    assert first.health == "ok" and first.agent_version == agent.version and first.interval_seconds == 1.0

    instance = uuid.uuid4()
    await claim(js, instance)
    await state_of(nc, "create", create_request(instance))

    async def updated() -> Heartbeat | None:
        beat = await heartbeat_of(js)
        return beat if beat is not None and beat.running == 1 and beat.allocated == FLAVOUR else None

    later = await eventually(updated, timeout=5)
    assert later.at > first.at


async def test_a_stopped_agents_heartbeat_expires_and_watchers_are_told(agent: NodeAgent, js: JetStreamContext) -> None:
    kv = await js.key_value(subjects.NODES_BUCKET)
    watcher = await kv.watch(NODE)
    await agent.stop()
    stopped = asyncio.get_running_loop().time()

    operations = []
    while "PURGE" not in operations:
        entry = await watcher.updates(timeout=10)
        if entry is not None:
            operations.append(entry.operation)
    await watcher.stop()

    assert await heartbeat_of(js) is None
    assert asyncio.get_running_loop().time() - stopped <= 3 * 1.0 + 2  # three intervals, and the server's tick


# --- request/reply operations ---------------------------------------------------------------------


async def test_a_repeated_create_makes_one_domain_and_gives_the_same_reply(agent: NodeAgent, nc: NATS) -> None:
    req = create_request()

    first, second = await call(nc, "create", req), await call(nc, "create", req)

    assert first == second
    assert first.status is not None and first.status.state == "running" and first.error is None
    assert list(await agent.driver.domains()) == [req.instance_id]


async def test_concurrent_creates_of_one_instance_take_turns(agent: NodeAgent, nc: NATS) -> None:
    req = create_request()

    replies = await asyncio.gather(*(call(nc, "create", req) for _ in range(5)))

    assert all(r == replies[0] and r.error is None for r in replies)
    assert list(await agent.driver.domains()) == [req.instance_id]


async def test_a_create_with_another_spec_is_a_conflict(agent: NodeAgent, nc: NATS) -> None:
    req = create_request()
    await call(nc, "create", req)

    reply = await call(nc, "create", msgspec.structs.replace(req, vcpus=4))

    assert reply.status is None and reply.error is not None
    assert reply.error.code == "conflict" and "vcpus" in reply.error.message


async def test_the_lifecycle_over_request_reply(agent: NodeAgent, nc: NATS) -> None:
    req = create_request(name="lifecycle")
    iid = req.instance_id
    one = InstanceRequest(instance_id=iid)

    assert await state_of(nc, "create", req) == "running"
    assert await state_of(nc, "stop", StopRequest(instance_id=iid, grace_seconds=5)) == "shutoff"
    assert await state_of(nc, "status", one) == "shutoff"
    assert await state_of(nc, "start", one) == "running"
    assert await state_of(nc, "reboot", one) == "running"
    console = (await call(nc, "console", ConsoleRequest(instance_id=iid))).console
    assert console is not None and "lifecycle" in console.data and not console.truncated
    assert await state_of(nc, "delete", one) == "missing"
    assert await state_of(nc, "status", one) == "missing"


async def test_deleting_a_missing_domain_succeeds(agent: NodeAgent, nc: NATS) -> None:
    assert await state_of(nc, "delete", InstanceRequest(instance_id=uuid.uuid4())) == "missing"


async def test_starting_a_missing_domain_is_not_found(agent: NodeAgent, nc: NATS) -> None:
    reply = await call(nc, "start", InstanceRequest(instance_id=uuid.uuid4()))

    assert reply.error is not None and reply.error.code == "not_found"


@pytest.mark.parametrize("payload", [b"{not json", b'{"instance_id": 5}', b"{}"])
async def test_a_malformed_request_gets_an_invalid_error_not_a_timeout(
    agent: NodeAgent, nc: NATS, payload: bytes
) -> None:
    for op in ("create", "stop", "status"):
        reply = await call(nc, op, payload)
        assert reply.error is not None and reply.error.code == "invalid", (op, reply)


async def test_a_stopped_agent_has_no_responders(agent: NodeAgent, nc: NATS) -> None:
    await agent.stop()

    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(subjects.node_subject(NODE, "status"), b"{}", timeout=2)


# --- reports -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behind_the_back", "state", "reason"),
    [
        (lambda dom: dom.destroy(), "shutoff", "the domain was destroyed"),
        (lambda dom: dom.shutdown(), "shutoff", "the guest shut down"),
        (lambda dom: (dom.destroy(), dom.undefine()), "missing", "the domain was undefined"),
    ],
    ids=["destroyed", "guest-shutdown", "undefined"],
)
async def test_what_happens_behind_the_agents_back_is_reported(
    default_agent: NodeAgent,
    host: libvirt.virConnect,
    nc: NATS,
    js: JetStreamContext,
    behind_the_back,
    state: str,
    reason: str,
) -> None:
    req = create_request()
    await state_of(nc, "create", req)

    await asyncio.to_thread(behind_the_back, host.lookupByName(str(req.instance_id)))

    [report] = await eventually(reports_of(req.instance_id, js))
    assert (report.node_id, report.state, report.reason) == (NODE, state, reason)
    assert report.actor == f"system:node:{NODE}"
    [(headers, _)] = [(h, r) for h, r in await reports(js) if r.instance_id == req.instance_id]
    assert headers["Nats-Msg-Id"] == str(report.command_id)


async def test_the_agents_own_operations_are_never_reported(
    default_agent: NodeAgent, host: libvirt.virConnect, nc: NATS, js: JetStreamContext
) -> None:
    ours, marker = create_request(), create_request()
    one = InstanceRequest(instance_id=ours.instance_id)
    await state_of(nc, "create", ours)
    await state_of(nc, "stop", StopRequest(instance_id=ours.instance_id, grace_seconds=0))
    await state_of(nc, "start", one)
    await state_of(nc, "reboot", one)
    await state_of(nc, "stop", StopRequest(instance_id=ours.instance_id, grace_seconds=5))
    await state_of(nc, "delete", one)
    await state_of(nc, "create", marker)

    # An event after all of ours: once its report is out, any report of ours would be too.
    await asyncio.to_thread(lambda: host.lookupByName(str(marker.instance_id)).destroy())
    await eventually(reports_of(marker.instance_id, js))

    assert [r.instance_id for _, r in await reports(js)] == [marker.instance_id]


async def test_the_periodic_sweep_reports_what_events_missed(
    default_agent: NodeAgent, host: libvirt.virConnect, nc: NATS, js: JetStreamContext
) -> None:
    req = create_request()
    await state_of(nc, "create", req)
    default_agent.driver.listen(None)  # as if libvirt's connection had dropped meanwhile

    await asyncio.to_thread(lambda: host.lookupByName(str(req.instance_id)).destroy())

    assert await default_agent.reconcile() == 1
    assert await default_agent.reconcile() == 0
    [(_, report)] = await reports(js)
    assert (report.instance_id, report.state) == (req.instance_id, "shutoff")


async def test_a_starting_agent_reports_what_is_missing_and_what_is_unexpected(
    host: libvirt.virConnect,
    broker: NatsBroker,
    nats_server: NatsServer,
    nc: NATS,
    js: JetStreamContext,
    tmp_path: Path,
) -> None:
    node_settings = settings(nats_server, tmp_path)
    first = simulated_agent(node_settings, "test:///default")
    await first.start(broker)
    kept, lost, stranger = create_request(), create_request(), uuid.uuid4()
    await claim(js, kept.instance_id, lost.instance_id)
    await state_of(nc, "create", kept)
    await state_of(nc, "create", lost)
    await stop(first)
    # While the agent is away: one claimed domain vanishes, an unclaimed one of this node
    # appears, and so does one that names no owner (another tool's, or another cloud's).
    await asyncio.to_thread(lambda: host.lookupByName(str(lost.instance_id)).destroy())
    await asyncio.to_thread(lambda: host.lookupByName(str(lost.instance_id)).undefine())
    node, home = first.driver.owner
    for instance_id, owner in ((stranger, {"owner_node": node, "owner_home": home}), (uuid.uuid4(), {})):
        xml = build_domain(
            GuestSpec(
                instance_id=instance_id,
                project_id=uuid.uuid4(),
                name="stray",
                vcpus=1,
                ram_mb=128,
                domain_type="qemu",
                kernel=KernelBoot(kernel="/nowhere/vmlinuz"),
                **owner,
            )
        ).to_xml()
        await asyncio.to_thread(host.defineXML, xml)
    before = await last_command_seq(js)

    second = simulated_agent(node_settings, "test:///default")
    await second.start(broker)
    try:
        found = {r.instance_id: (r.state, r.reason) for _, r in await reports(js, before)}
        assert found == {
            kept.instance_id: ("running", "found when the node agent started"),
            lost.instance_id: ("missing", "found when the node agent started"),
            stranger: ("shutoff", "found when the node agent started"),
        }  # and nothing about libvirt's own "test" domain or the ownerless one, which are not this node's
        assert await second.reconcile() == 0
    finally:
        await stop(second)
