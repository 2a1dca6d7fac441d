"""The fuzz tests run against the integration tests' control plane, with a node agent on
libvirt's test driver, so that an instance's console is a real node's answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nebula_core.allinone.embedded import NatsServer
from nebula_core.config import Settings
from nebula_core.contract.permissions import node_user
from nebula_core.contract.types import Resources
from nebula_core.messaging import make_broker, reply_errors
from nebula_core.orchestrator.fleet import Fleet
from nebula_node.agent import NodeAgent
from nebula_node.sim import simulated_driver, simulated_host_uri
from tests.integration.conftest import Cloud, cloud, image_roots

__all__ = ["NODE", "cloud", "image_roots", "node"]

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
