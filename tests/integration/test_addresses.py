"""An instance's addresses (issue 13): its node reserves it a fixed address on the managed
network, reports the guest's lease once it has one, and the orchestrator records it as
`instance.addresses_changed`, which the API answers with and the event stream carries.

Real NATS, Postgres and orchestrator; the node agent runs on a private libvirt test-driver
host, whose networks are real libvirt objects (define, DHCP host entries) and whose
domains report a leased address of the driver's invention for each NIC.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nebula_core import config
from nebula_core.allinone.embedded import NatsServer
from nebula_core.contract.node import guest_mac
from nebula_core.contract.permissions import node_user
from nebula_core.contract.types import Resources
from nebula_core.domain import AGGREGATES
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from nebula_core.messaging import make_broker, reply_errors
from nebula_core.orchestrator.service import Orchestrator
from nebula_node.agent import NodeAgent
from nebula_node.network import NetworkPlan
from nebula_node.sim import simulated_driver, simulated_host_uri
from tests.integration.conftest import Cloud
from tests.support import eventually

NODE = "n1"


@pytest.fixture
async def agent(cloud: Cloud, nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[NodeAgent]:
    """An orchestrator, and node `n1` with its guests on the managed network `nebula`."""
    orchestrator_settings = config.load(
        {},
        nats_url=nats_server.url_for("orchestrator"),
        pg_dsn=cloud.settings.pg_dsn,
        node_timeout=5.0,
        node_retries=2,
        heartbeat_interval=0.5,
    )
    orchestrator = Orchestrator(orchestrator_settings, pool=cloud.pool)
    await orchestrator.start()
    settings = config.load(
        {},
        nats_url=nats_server.url_for(node_user(NODE)),
        node_id=NODE,
        state_dir=str(tmp_path / "node"),
        heartbeat_interval=0.5,
        node_address_interval=0.2,
    )
    broker = make_broker(settings.nats_url, name="node", middlewares=[reply_errors])
    await broker.start()
    uri = simulated_host_uri(tmp_path / "host.xml", Resources(vcpus=8, ram_mb=8192, disk_gb=100))
    plan = NetworkPlan(name="nebula", subnet="10.213.0.0/24", meta_port=8775)
    node = NodeAgent(settings, driver=simulated_driver(uri, Path(settings.state_dir), node_id=NODE, network=plan))
    await node.start(broker)
    yield node
    await node.stop()
    await node.driver.close()
    await broker.stop()
    await orchestrator.stop()


async def _instance(cloud: Cloud, instance_id: str) -> dict:
    status, body = await cloud.admin.get(f"/v1/instances/{instance_id}")
    assert status == 200, body
    return dict(body)


async def _history(cloud: Cloud, instance_id: str) -> list[str]:
    store = EventStore(cloud.js, Codec(*AGGREGATES))
    return [s.event.__struct_config__.tag for s in await store.history("instance", uuid.UUID(instance_id))]


def _hosts(agent: NodeAgent) -> dict[str, str]:
    async def read() -> dict[str, str]:
        xml = await agent.driver._run(lambda conn: conn.networkLookupByName("nebula").XMLDesc(0))
        return {h.get("mac", ""): h.get("ip", "") for h in ET.fromstring(xml).iterfind("ip/dhcp/host")}

    return read  # type: ignore[return-value]


async def test_a_guests_lease_is_recorded_once_shown_by_the_api_and_kept_across_stop_and_start(
    cloud: Cloud, agent: NodeAgent
) -> None:
    project_id = await cloud.project()
    await cloud.image()
    status, created = await cloud.admin.post(
        "/v1/instances",
        {"project_id": project_id, "name": "web-1", "vcpus": 1, "ram_mb": 256, "disk_gb": 1, "image": "tiny"},
    )
    assert status == 202, created
    instance_id = str(created["id"])
    assert created["addresses"] == []
    mac = guest_mac(uuid.UUID(instance_id))

    async def addressed() -> dict | None:
        body = await _instance(cloud, instance_id)
        return body if body["state"] == "running" and body["addresses"] else None

    body = await eventually(addressed, timeout=20)
    [address] = body["addresses"]
    assert (address["network"], address["mac"]) == ("nebula", mac)
    assert address["ipv4"]  # the test driver's own lease
    assert await _hosts(agent)() == {mac: "10.213.0.10"}  # the fixed address the node reserved
    assert (await _history(cloud, instance_id)).count("instance.addresses_changed") == 1

    # Stop and start: the reservation stays, the lease is the same, nothing new is recorded.
    for action, state in (("stop", "stopped"), ("start", "running")):
        status, answer = await cloud.admin.post(f"/v1/instances/{instance_id}/actions", {"action": action})
        assert status == 202, answer

        async def reached(state: str = state) -> dict | None:
            body = await _instance(cloud, instance_id)
            return body if body["state"] == state else None

        await eventually(reached, timeout=20)
    await agent._reporter.report_addresses(agent.node.claims)  # type: ignore[union-attr]
    assert (await _instance(cloud, instance_id))["addresses"] == [address]
    assert (await _history(cloud, instance_id)).count("instance.addresses_changed") == 1
    assert await _hosts(agent)() == {mac: "10.213.0.10"}

    # Deleted: its reservation goes with it.
    status, answer = await cloud.admin.call("DELETE", f"/v1/instances/{instance_id}")
    assert status == 202, answer

    async def released() -> bool:
        return await _hosts(agent)() == {}

    await eventually(released, timeout=20)
