"""`GET /v1/instances/{id}/console` against a real node agent (libvirt's test driver) on
real NATS: the node's typed error reaches the caller as its own HTTP status, so a domain
the node does not have is a 404, and only a node that does not answer is a 503."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from nebula_core.allinone.embedded import NatsServer
from nebula_core.config import Settings
from nebula_core.contract.node import CreateRequest, ImageSpec
from nebula_core.contract.permissions import node_user
from nebula_core.contract.types import Resources
from nebula_core.domain import AGGREGATES, Instance
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from nebula_core.messaging import NodeClient, make_broker, reply_errors
from nebula_core.orchestrator.fleet import Fleet
from nebula_node.agent import NodeAgent
from nebula_node.sim import simulated_driver, simulated_host_uri
from tests.integration.conftest import Cloud

NODE = "node-a"


@pytest.fixture
async def node(cloud: Cloud, nats_server: NatsServer, registrar: Fleet, tmp_path: Path) -> AsyncIterator[NodeAgent]:
    """A node agent on a private test-driver host, on the cloud's NATS."""
    broker = make_broker(nats_server.url_for(node_user(NODE)), name="node", middlewares=[reply_errors])
    await broker.start()
    settings = Settings(
        nats_url=nats_server.url_for(node_user(NODE)), node_id=NODE, region="eu", state_dir=str(tmp_path / "node")
    )
    uri = simulated_host_uri(tmp_path / "host.xml", Resources(vcpus=8, ram_mb=8192, disk_gb=100))
    agent = NodeAgent(settings, driver=simulated_driver(uri, Path(settings.state_dir), node_id=NODE))
    await agent.start(broker)
    yield agent
    await agent.stop()
    await agent.driver.close()
    await broker.stop()


async def scheduled_instance(cloud: Cloud, node_id: str) -> Instance:
    """An instance the control plane placed on `node_id` (recorded as the orchestrator would)."""
    project_id = await cloud.project()
    await cloud.image()
    status, created = await cloud.admin.post(
        "/v1/instances",
        {"project_id": project_id, "name": "web-1", "vcpus": 1, "ram_mb": 256, "disk_gb": 1, "image": "tiny"},
    )
    assert status == 202, created
    store = EventStore(cloud.js, Codec(*AGGREGATES))
    instance = await store.load(Instance, uuid.UUID(created["id"]))
    instance.schedule(node_id)
    await store.save(instance, actor="system:test")
    return instance


async def test_the_console_of_an_instance_whose_domain_the_node_lacks_is_404(cloud: Cloud, node: NodeAgent) -> None:
    instance = await scheduled_instance(cloud, NODE)

    status, body = await cloud.admin.get(f"/v1/instances/{instance.id}/console")

    assert status == 404, body
    assert body["code"] == "not_found"
    assert body["message"] == f"instance {instance.id} has no domain on this node"


async def test_the_console_is_the_tail_the_node_reads(cloud: Cloud, node: NodeAgent, nc: NATS) -> None:
    instance = await scheduled_instance(cloud, NODE)
    image = ImageSpec(
        id=instance.image_id,
        name="tiny",
        format="direct-kernel",
        source="/srv/images/tiny/manifest.json",
        sha256="a" * 64,
    )
    create = CreateRequest(
        instance_id=instance.id,
        project_id=instance.project_id,
        name=instance.name,
        vcpus=1,
        ram_mb=256,
        disk_gb=1,
        image=image,
        metadata_token="token",
    )
    await NodeClient(nc, timeout=10).call(NODE, "create", create)

    status, body = await cloud.admin.get(f"/v1/instances/{instance.id}/console?bytes=4096")

    assert status == 200, body
    assert body["node_id"] == NODE and not body["truncated"]
    assert "is simulated by libvirt's test driver" in body["data"]


async def test_the_console_of_an_instance_on_a_node_that_does_not_answer_is_503(cloud: Cloud) -> None:
    instance = await scheduled_instance(cloud, "node-gone")

    status, body = await cloud.admin.get(f"/v1/instances/{instance.id}/console")

    assert status == 503, body
    assert body["code"] == "node_unavailable" and "node node-gone did not answer console" in body["message"]
