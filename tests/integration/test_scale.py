"""Scale: a simulated fleet of 200 node agents (libvirt's test driver, real NATS) takes
1,000 instances created through the API to `running`, with no node over-committed."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from nebula_core.contract.types import Resources
from nebula_core.domain.node import usable
from tests.integration.conftest import Cloud
from tests.integration.test_orchestrator import Stack
from tests.support import eventually

NODES, INSTANCES, PROJECTS = 200, 1000, 10


@pytest.fixture
def topology_options() -> dict[str, float]:
    return {"heartbeat_interval_s": 2.0}


async def test_two_hundred_nodes_take_a_thousand_instances_to_running(cloud: Cloud, tmp_path: Path) -> None:
    stack = Stack(cloud, tmp_path)
    await cloud.image("tiny")
    try:
        await stack.orchestrator(heartbeat_interval=2.0, node_timeout=10.0)
        fleet = await stack.fleet(NODES, capacity=Resources(vcpus=8, ram_mb=8 * 256, disk_gb=8), heartbeat_interval=2.0)
        projects = [await stack.project(instances=INSTANCES) for _ in range(PROJECTS)]
        sem = asyncio.Semaphore(32)

        async def create(i: int) -> str:
            async with sem:
                return await stack.create(projects[i % PROJECTS], f"vm-{i}")

        ids = await asyncio.gather(*(create(i) for i in range(INSTANCES)))

        async def settled() -> list[dict[str, str]] | None:
            rows = await cloud.pool.fetch("SELECT state, node_id, error FROM instances")
            done = [dict(r) for r in rows if r["state"] in ("running", "error")]
            return done if len(done) == INSTANCES else None

        final = await eventually(settled, timeout=300, interval=1.0)
        states = Counter(r["state"] for r in final)
        assert states == {"running": INSTANCES}, {r["error"] for r in final if r["error"]}
        per_node = Counter(r["node_id"] for r in final)
        assert set(per_node) <= set(fleet.node_ids)
        assert max(per_node.values()) <= 8
        assert len(ids) == INSTANCES
        for node_id in fleet.node_ids[:20]:
            node = await stack.node(node_id)
            assert node.allocated.vcpus <= usable(node.capacity, node.overcommit).vcpus
    finally:
        await stack.close()
