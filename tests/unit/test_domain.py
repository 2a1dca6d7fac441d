"""The aggregates on their own: no infrastructure, milliseconds each."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from nebula_core.contract.errors import IllegalTransition, InsufficientCapacity
from nebula_core.contract.types import Overcommit, Resources
from nebula_core.domain import Instance, Node
from nebula_core.domain.node import node_uuid


def new_instance() -> Instance:
    return Instance(
        project_id=uuid.uuid4(),
        owner_id=uuid.uuid4(),
        name="web-1",
        description="",
        tags={},
        region="eu",
        flavor=Resources(vcpus=2, ram_mb=512, disk_gb=5),
        image_id=uuid.uuid4(),
        user_data_size=0,
        user_data_sha256="0" * 64,
        metadata_token_hash="1" * 64,
    )


def running_instance() -> Instance:
    instance = new_instance()
    instance.schedule("node-a")
    instance.launch()
    return instance


def test_an_instance_walks_the_whole_lifecycle() -> None:
    instance = new_instance()
    seen = [instance.state]
    for step in (
        lambda: instance.schedule("node-a"),
        instance.launch,
        instance.request_stop,
        instance.mark_stopped,
        instance.request_start,
        instance.mark_started,
        instance.request_reboot,
        instance.mark_rebooted,
        instance.request_delete,
        instance.mark_deleted,
    ):
        step()
        seen.append(instance.state)
    assert seen == [
        "pending",
        "scheduled",
        "running",
        "stopping",
        "stopped",
        "starting",
        "running",
        "rebooting",
        "running",
        "deleting",
        "deleted",
    ]


@pytest.mark.parametrize(
    "action", ["request_start", "request_reboot"], ids=["start-a-running-one", "reboot-a-running-one-twice"]
)
def test_illegal_requests_are_refused(action: str) -> None:
    instance = running_instance()
    if action == "request_reboot":
        instance.request_reboot()
    with pytest.raises(IllegalTransition, match="cannot"):
        getattr(instance, action)()


def test_a_deleted_instance_accepts_nothing() -> None:
    instance = running_instance()
    instance.request_delete()
    instance.mark_deleted()
    for action in (
        instance.request_stop,
        instance.request_start,
        instance.request_delete,
        lambda: instance.update(name="x"),
    ):
        with pytest.raises(IllegalTransition):
            action()


def test_repeated_reports_record_nothing() -> None:
    instance = running_instance()
    instance.collect_events()
    instance.launch()
    instance.schedule("node-a")
    instance.fail("boom")
    instance.fail("boom")
    assert [type(e).__name__ for e in instance.collect_events()] == ["Failed"]


def test_a_lost_instance_is_rescheduled_off_its_node() -> None:
    instance = running_instance()
    instance.lose("node node-a went silent")
    assert instance.state == "unknown"
    instance.reschedule("evacuating from node-a")
    assert (instance.state, instance.node_id) == ("pending", None)
    events = instance.collect_events()
    assert events[-1].from_node_id == "node-a"


def test_an_instance_lost_while_off_is_rebuilt_off() -> None:
    instance = running_instance()
    instance.request_stop()
    instance.mark_stopped()
    instance.lose("node node-a went silent")
    instance.reschedule("evacuating from node-a")
    instance.schedule("node-b")
    assert instance.powered_off
    instance.mark_stopped("rebuilt on node node-b, off as it was")
    assert (instance.state, instance.node_id) == ("stopped", "node-b")
    instance.request_start()
    instance.mark_started()
    assert not instance.powered_off
    with pytest.raises(IllegalTransition):
        new_instance().mark_stopped()  # never placed: nothing to be off


def test_phone_home_is_recorded_once() -> None:
    instance = running_instance()
    first = datetime(2026, 1, 1, tzinfo=UTC)
    instance.boot(first)
    instance.boot(datetime(2026, 1, 2, tzinfo=UTC))
    assert instance.booted_at == first
    assert sum(type(e).__name__ == "Booted" for e in instance.collect_events()) == 1


def new_node(vcpus: int = 4, ram_mb: int = 4096, disk_gb: int = 100, cpu_ratio: float = 1.0) -> Node:
    return Node(
        name="node-a",
        region="eu",
        capacity=Resources(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb),
        overcommit=Overcommit(cpu=cpu_ratio, ram=1.0, disk=1.0),
        agent_version="1",
    )


def test_claims_fill_a_node_and_then_are_refused_naming_what_is_missing() -> None:
    node = new_node(vcpus=4)
    flavor = Resources(vcpus=2, ram_mb=512, disk_gb=10)
    node.claim(uuid.uuid4(), flavor)
    node.claim(uuid.uuid4(), flavor)
    with pytest.raises(InsufficientCapacity, match="2 free vCPUs"):
        node.claim(uuid.uuid4(), flavor)
    assert node.free.vcpus == 0


def test_overcommit_multiplies_what_may_be_promised() -> None:
    node = new_node(vcpus=2, cpu_ratio=4.0)
    for _ in range(8):
        node.claim(uuid.uuid4(), Resources(vcpus=1, ram_mb=1, disk_gb=1))
    with pytest.raises(InsufficientCapacity):
        node.claim(uuid.uuid4(), Resources(vcpus=1, ram_mb=1, disk_gb=1))


def test_claims_and_releases_are_idempotent() -> None:
    node = new_node()
    instance_id = uuid.uuid4()
    flavor = Resources(vcpus=1, ram_mb=128, disk_gb=1)
    node.claim(instance_id, flavor)
    node.claim(instance_id, flavor)
    node.release(instance_id)
    node.release(instance_id)
    assert [type(e).__name__ for e in node.collect_events()] == ["Registered", "ResourcesClaimed", "ResourcesReleased"]
    assert node.allocated == Resources()


def test_a_node_is_keyed_by_its_name() -> None:
    assert new_node().id == node_uuid("node-a")
