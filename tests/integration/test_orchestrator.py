"""The orchestrator against real NATS, Postgres, the real API and simulated node agents
on libvirt's test driver: lifecycle, placement, races between orchestrators, node
failure and evacuation, and a killed orchestrator's command redelivered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nebula_core import config
from nebula_core.contract.permissions import SIM_USER
from nebula_core.contract.types import Overcommit, Resources
from nebula_core.domain import AGGREGATES, Instance, Node
from nebula_core.domain.codec import Codec
from nebula_core.domain.node import node_uuid, usable
from nebula_core.eventstore import EventStore
from nebula_core.orchestrator.service import Orchestrator
from nebula_node.sim import Fleet
from tests.integration.conftest import Cloud
from tests.support import eventually

HEARTBEAT = 1.0
ONE_CPU = Resources(vcpus=1, ram_mb=256, disk_gb=1)


@pytest.fixture
def topology_options() -> dict[str, float]:
    # Keys expire after three heartbeats; a killed orchestrator's command comes back in 3 s.
    return {"heartbeat_interval_s": HEARTBEAT, "command_ack_wait_s": 3.0}


class Stack:
    """The cloud fixture plus orchestrators and simulated fleets, all torn down at the end."""

    def __init__(self, cloud: Cloud, tmp_path: Path) -> None:
        self.cloud = cloud
        self.tmp_path = tmp_path
        self.orchestrators: list[Orchestrator] = []
        self._exit = contextlib.AsyncExitStack()
        self.store = EventStore(cloud.js, Codec(*AGGREGATES))

    def settings(self, **overrides: Any) -> config.Settings:
        values = {
            "heartbeat_interval": HEARTBEAT,
            "evacuation_grace": 3.0,
            "node_timeout": 2.0,
            "node_retries": 2,
            "reconcile_interval": 2.0,
            "meta_url": "http://10.0.2.2:8775",
            **overrides,
        }
        orchestrator = self.cloud.settings_for("orchestrator")
        return config.load({}, nats_url=orchestrator.nats_url, pg_dsn=orchestrator.pg_dsn, **values)

    async def orchestrator(self, **overrides: Any) -> Orchestrator:
        orchestrator = Orchestrator(self.settings(**overrides), pool=self.cloud.pool)
        await orchestrator.start()
        self.orchestrators.append(orchestrator)
        return orchestrator

    async def orchestrator_process(self, **overrides: Any) -> subprocess.Popen[bytes]:
        """`nebula orchestrator` in a process of its own (to be killed for real)."""
        settings = self.settings(**overrides)
        env = {**os.environ, **{config.env_name(f): str(getattr(settings, f)) for f in settings.__struct_fields__}}
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("nebula")), "orchestrator"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.tmp_path / "orchestrator.log").open("wb"),
        )
        self._exit.callback(_reap, process)
        return process

    async def fleet(
        self,
        nodes: int,
        *,
        region: str = "r1",
        capacity: Resources = Resources(vcpus=4, ram_mb=4096, disk_gb=40),
        prefix: str = "sim",
        heartbeat_interval: float = HEARTBEAT,
        **options: Any,
    ) -> Fleet:
        fleet = Fleet(
            self.cloud.nats.url_for(SIM_USER),
            nodes=nodes,
            region=region,
            capacity=capacity,
            overcommit=Overcommit(cpu=1.0, ram=1.0, disk=1.0),
            heartbeat_interval=heartbeat_interval,
            state_dir=self.tmp_path / f"fleet-{prefix}",
            name_prefix=prefix,
            **options,
        )
        await self._exit.enter_async_context(fleet)
        return fleet

    async def project(self, instances: int = 100) -> str:
        return await self.cloud.project(
            quotas={"instances": instances, "vcpus": 1000, "ram_mb": 1 << 20, "disk_gb": 10_000}
        )

    async def create(self, project_id: str, name: str, *, region: str = "r1", vcpus: int = 1, **extra: Any) -> str:
        status, body = await self.cloud.admin.post(
            "/v1/instances",
            {
                "project_id": project_id,
                "name": name,
                "region": region,
                "vcpus": vcpus,
                "ram_mb": 256,
                "disk_gb": 1,
                "image": "tiny",
                **extra,
            },
        )
        assert status == 202, body
        return str(body["id"])

    async def instance(self, instance_id: str) -> dict[str, Any]:
        status, body = await self.cloud.admin.get(f"/v1/instances/{instance_id}")
        assert status == 200, body
        return dict(body)

    async def reaches(self, instance_id: str, *states: str, timeout: float = 20.0) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            body = await self.instance(instance_id)
            return body if body["state"] in states else None

        return await eventually(probe, timeout=timeout, interval=0.1)

    async def act(self, instance_id: str, action: str) -> None:
        status, body = await self.cloud.admin.post(f"/v1/instances/{instance_id}/actions", {"action": action})
        assert status == 202, body

    async def history(self, instance_id: str) -> list[str]:
        return [s.event.__struct_config__.tag for s in await self.store.history("instance", uuid.UUID(instance_id))]

    async def node(self, node_id: str) -> Node:
        return await self.store.load(Node, node_uuid(node_id))

    async def close(self) -> None:
        for orchestrator in self.orchestrators:
            with contextlib.suppress(Exception):
                await orchestrator.stop()
        await self._exit.aclose()


@pytest.fixture
async def stack(cloud: Cloud, tmp_path: Path) -> AsyncIterator[Stack]:
    stack = Stack(cloud, tmp_path)
    await cloud.image("tiny")
    try:
        yield stack
    finally:
        await stack.close()


async def test_instance_lifecycle_create_stop_start_reboot_delete(stack: Stack) -> None:
    await stack.orchestrator()
    fleet = await stack.fleet(2)
    project = await stack.project()
    instance_id = await stack.create(project, "web-1")
    running = await stack.reaches(instance_id, "running", "error")
    assert running["state"] == "running", running["error"]
    assert running["node_id"] in fleet.node_ids

    await stack.act(instance_id, "stop")
    await stack.reaches(instance_id, "stopped")
    await stack.act(instance_id, "start")
    await stack.reaches(instance_id, "running")
    await stack.act(instance_id, "reboot")
    await stack.reaches(instance_id, "running")
    assert "instance.rebooted" in await stack.history(instance_id)

    status, _ = await stack.cloud.admin.call("DELETE", f"/v1/instances/{instance_id}")
    assert status == 202
    await stack.reaches(instance_id, "deleted")
    node = await stack.node(running["node_id"])
    assert uuid.UUID(instance_id) not in node.claims, "a deleted instance gives its room back"
    assert await stack.history(instance_id) == [
        "instance.created",
        "instance.scheduled",
        "instance.launched",
        "instance.stop_requested",
        "instance.stopped",
        "instance.start_requested",
        "instance.started",
        "instance.reboot_requested",
        "instance.rebooted",
        "instance.delete_requested",
        "instance.deleted",
    ]


async def test_placement_respects_region_and_capacity(stack: Stack) -> None:
    await stack.orchestrator()
    await stack.fleet(2, region="r1", prefix="west")
    east = await stack.fleet(1, region="r2", prefix="east")
    project = await stack.project()

    in_east = await stack.reaches(await stack.create(project, "e1", region="r2"), "running", "error")
    assert in_east["node_id"] == east.node_ids[0]

    too_big = await stack.reaches(await stack.create(project, "big", vcpus=16), "error", "running")
    assert too_big["state"] == "error"
    assert too_big["error"] == "no node in region r1 with 16 free vCPUs"

    nowhere = await stack.reaches(await stack.create(project, "lost", region="mars"), "error", "running")
    assert nowhere["error"].startswith("no node in region mars")


async def test_fifty_creates_for_forty_slots_with_two_orchestrators(stack: Stack) -> None:
    # 4 nodes x 10 vCPUs, no overcommit: room for exactly 40 one-vCPU instances.
    await stack.orchestrator()
    await stack.orchestrator()
    fleet = await stack.fleet(4, capacity=Resources(vcpus=10, ram_mb=10 * 256, disk_gb=10))
    project = await stack.project(instances=60)
    ids = await asyncio.gather(*(stack.create(project, f"vm-{i}") for i in range(50)))
    final = [await stack.reaches(i, "running", "error", timeout=90) for i in ids]
    running = [f for f in final if f["state"] == "running"]
    failed = [f for f in final if f["state"] == "error"]
    assert (len(running), len(failed)) == (40, 10)
    assert {f["error"] for f in failed} == {
        "no node in region r1 with 1 free vCPUs and 256 MiB free RAM and 1 GiB free disk"
    }
    for node_id in fleet.node_ids:
        node = await stack.node(node_id)
        assert len(node.claims) == 10, "each node is full and none is over-committed"
        assert node.allocated == usable(node.capacity, node.overcommit)
    per_node = {nid: sum(1 for f in running if f["node_id"] == nid) for nid in fleet.node_ids}
    assert per_node == dict.fromkeys(fleet.node_ids, 10)


@pytest.mark.parametrize("orchestrators", [1, 2])
async def test_a_dead_node_is_detected_and_its_instances_evacuated_once(stack: Stack, orchestrators: int) -> None:
    for _ in range(orchestrators):  # each sees the node die and starts its own grace timer
        await stack.orchestrator(placement_strategy="pack")
    fleet = await stack.fleet(2)
    project = await stack.project()
    ids = [await stack.create(project, f"vm-{i}") for i in range(3)]
    placed = [await stack.reaches(i, "running") for i in ids]
    victim = placed[0]["node_id"]
    assert all(p["node_id"] == victim for p in placed), "pack puts them together"
    survivor = next(n for n in fleet.node_ids if n != victim)

    await fleet.kill(victim)
    # The key expires after 3 heartbeats; the instances go unknown, then are rebuilt.
    for instance_id in ids:
        await stack.reaches(instance_id, "unknown", "pending", "scheduled", "running", timeout=10)
    for instance_id in ids:
        moved = await stack.reaches(instance_id, "running", timeout=30)
        if moved["node_id"] == victim:
            moved = await eventually(lambda i=instance_id: _moved(stack, i, victim), timeout=30)
        assert moved["node_id"] == survivor
        history = await stack.history(instance_id)
        assert history.count("instance.lost") == 1
        assert history.count("instance.rescheduled") == 1, history
        assert history.count("instance.launched") == 2
    assert (await stack.node(victim)).down
    assert not (await stack.node(victim)).claims


async def test_an_instance_stopped_on_a_dead_node_is_rebuilt_stopped(stack: Stack) -> None:
    await stack.orchestrator(placement_strategy="pack")
    fleet = await stack.fleet(2)
    project = await stack.project()
    instance_id = await stack.create(project, "parked")
    victim = (await stack.reaches(instance_id, "running"))["node_id"]
    await stack.act(instance_id, "stop")
    await stack.reaches(instance_id, "stopped")

    await fleet.kill(victim)
    await stack.reaches(instance_id, "unknown", "pending", "scheduled", timeout=10)
    moved = await eventually(lambda: _moved(stack, instance_id, victim, "stopped"), timeout=30)

    survivor = moved["node_id"]
    assert await fleet.driver(survivor).status(uuid.UUID(instance_id)) == "shutoff"
    history = await stack.history(instance_id)
    assert history[-3:] == ["instance.rescheduled", "instance.scheduled", "instance.stopped"], history
    await stack.act(instance_id, "start")  # and its owner can start it there
    await stack.reaches(instance_id, "running")


async def test_an_instance_left_unknown_on_a_live_node_is_found_again(stack: Stack) -> None:
    await stack.orchestrator()
    await stack.fleet(1)
    project = await stack.project()
    instance_id = await stack.create(project, "lost-call")
    node_id = (await stack.reaches(instance_id, "running"))["node_id"]
    # What a node call that timed out records, while the node itself stays up.
    instance = await stack.store.load(Instance, uuid.UUID(instance_id))
    instance.lose(f"node {node_id} did not answer in time")
    await stack.store.save(instance)
    await stack.reaches(instance_id, "unknown")  # for a reconcile interval at least

    back = await stack.reaches(instance_id, "running", timeout=15)

    assert back["node_id"] == node_id
    history = await stack.history(instance_id)
    assert history[-2:] == ["instance.lost", "instance.started"], history


async def test_a_create_the_node_did_not_finish_in_time_leaves_nothing_behind(stack: Stack) -> None:
    await stack.orchestrator(node_timeout=0.5, node_retries=1)
    fleet = await stack.fleet(1, create_delay=3.0)
    project = await stack.project()
    instance_id = await stack.create(project, "too-slow")

    failed = await stack.reaches(instance_id, "error", "running", timeout=15)

    assert failed["state"] == "error" and failed["node_id"] == fleet.node_ids[0]
    # The node finished the create after the orchestrator gave up, then ran its delete.
    node_id, iid = fleet.node_ids[0], uuid.UUID(instance_id)
    await eventually(lambda: _idle(fleet, node_id, iid), timeout=15)
    assert await fleet.driver(node_id).status(iid) == "missing"
    assert not (await stack.node(node_id)).claims


async def _idle(fleet: Fleet, node_id: str, instance_id: uuid.UUID) -> bool:
    """No operation on the instance runs or waits on the node."""
    return not fleet.agent(node_id)._locks.busy(instance_id)


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


async def _moved(stack: Stack, instance_id: str, victim: str, state: str = "running") -> dict[str, Any] | None:
    body = await stack.instance(instance_id)
    return body if body["state"] == state and body["node_id"] != victim else None


async def test_a_killed_orchestrator_loses_no_command(stack: Stack) -> None:
    first = await stack.orchestrator_process(node_timeout=10.0)
    await stack.fleet(1, create_delay=4.0)
    project = await stack.project()
    instance_id = await stack.create(project, "slow")
    await stack.reaches(instance_id, "scheduled")
    # SIGKILL mid-command, while the node is still creating: the command is never acked
    # and nothing more is appended by that process.
    first.kill()
    await asyncio.to_thread(first.wait)
    await stack.orchestrator(node_timeout=10.0)
    done = await stack.reaches(instance_id, "running", "error", timeout=30)
    assert done["state"] == "running", done["error"]
    history = await stack.history(instance_id)
    assert history.count("instance.scheduled") == 1
    assert history.count("instance.launched") == 1
    node = await stack.node(done["node_id"])
    assert list(node.claims) == [uuid.UUID(instance_id)]


async def test_a_domain_destroyed_behind_nebulas_back_is_recorded(stack: Stack) -> None:
    await stack.orchestrator()
    fleet = await stack.fleet(1)
    project = await stack.project()
    instance_id = await stack.create(project, "victim")
    running = await stack.reaches(instance_id, "running")

    def destroy(conn: Any) -> None:
        conn.lookupByName(instance_id).destroy()

    await fleet.driver(running["node_id"])._run(destroy)
    await stack.reaches(instance_id, "stopped", timeout=10)
    status, events = await stack.cloud.admin.get(f"/v1/instances/{instance_id}/events")
    assert status == 200, events
    last = events["items"][-1]
    assert (last["type"], last["actor"]) == ("instance.stopped", "system:orchestrator")
    assert last["data"]["reason"] == f"the domain is off on node {running['node_id']}: the domain was destroyed"
    # It can be started again from the API, as any stopped instance.
    await stack.act(instance_id, "start")
    await stack.reaches(instance_id, "running")


async def test_a_node_back_before_the_grace_period_reconciles_its_instances(stack: Stack) -> None:
    await stack.orchestrator(evacuation_grace=60.0)
    fleet = await stack.fleet(1)
    project = await stack.project()
    instance_id = await stack.create(project, "patient")
    node_id = (await stack.reaches(instance_id, "running"))["node_id"]

    await fleet.kill(node_id)
    await stack.reaches(instance_id, "unknown", timeout=10)
    assert (await stack.node(node_id)).down
    await fleet.revive(node_id)
    back = await stack.reaches(instance_id, "running", timeout=15)
    assert back["node_id"] == node_id, "not evacuated: its node came back in time"
    history = await stack.history(instance_id)
    assert history.count("instance.lost") == 1 and "instance.rescheduled" not in history
    assert not (await eventually(lambda: _up(stack, node_id), timeout=10)).down


async def _up(stack: Stack, node_id: str) -> Node | None:
    node = await stack.node(node_id)
    return None if node.down else node
