"""The `nebula` command line against a whole running control plane: the API, projector and
an orchestrator, with node agents simulated on libvirt's test driver. Nothing is recorded
behind the CLI's back here: what it shows is what the orchestrator and the nodes did."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nebula_core.contract.types import Resources
from nebula_node.sim import Fleet
from tests.integration.conftest import Cloud
from tests.integration.test_cli import Nebula, nebula  # noqa: F401 — the CLI fixture, here too
from tests.integration.test_orchestrator import HEARTBEAT, Stack

SMALL = Resources(vcpus=2, ram_mb=1024, disk_gb=10)


@pytest.fixture
def topology_options() -> dict[str, float]:
    return {"heartbeat_interval_s": HEARTBEAT}


@pytest.fixture
async def running(cloud: Cloud, tmp_path: Path) -> AsyncIterator[Fleet]:
    """An orchestrator and two simulated nodes of 2 vCPUs in region eu; project alpha."""
    stack = Stack(cloud, tmp_path)
    await cloud.image("nebula-tiny")
    await cloud.project("alpha")
    try:
        await stack.orchestrator()
        fleet = await stack.fleet(2, region="eu", capacity=SMALL)
        yield fleet
    finally:
        await stack.close()


def create(name: str, *extra: str, vcpus: int = 1, region: str = "eu") -> tuple[str, ...]:
    return (
        "instance",
        "create",
        "--project",
        "alpha",
        "--name",
        name,
        "--vcpus",
        str(vcpus),
        "--ram",
        "256",
        "--disk",
        "1",
        "--image",
        "nebula-tiny",
        "--region",
        region,
        *extra,
    )


async def test_an_instance_created_with_wait_runs_on_a_node_and_obeys_the_cli(
    nebula: Nebula,
    running: Fleet,
) -> None:
    made = await nebula(*create("web-1", "--wait", "--timeout", "60"))
    assert made.code == 0, made.err
    assert "pending (" in made.err and "-> running (" in made.err
    shown = await nebula("instance", "show", "web-1", "--project", "alpha", "--json")
    instance = shown.json()
    assert (instance["state"], instance["region"]) == ("running", "eu")
    assert instance["node_id"] in running.node_ids

    console = await nebula("instance", "console", "web-1", "--project", "alpha")
    assert console.code == 0, console.err
    assert "simulated by libvirt's test driver" in console.out

    for action, state in (("stop", "stopped"), ("start", "running"), ("reboot", "running")):
        acted = await nebula("instance", action, "web-1", "--project", "alpha", "--wait", "--timeout", "60")
        assert acted.code == 0, acted.err
        assert f"-> {state}" in acted.err or action == "reboot"

    nodes = await nebula("node", "list", "--json")
    by_id = {n["id"]: n for n in nodes.json()}
    assert set(by_id) == set(running.node_ids)
    assert by_id[instance["node_id"]]["allocated"]["vcpus"] == 1

    history = await nebula("instance", "events", "web-1", "--project", "alpha", "--json")
    types = [e["type"] for e in history.json()]
    assert types[:3] == ["instance.created", "instance.scheduled", "instance.launched"]
    assert "instance.rebooted" in types

    gone = await nebula("instance", "delete", "web-1", "--project", "alpha", "--wait", "--timeout", "60")
    assert gone.code == 0, gone.err
    assert "-> deleted" in gone.err


async def test_wait_ends_with_the_placement_refusal_and_exit_1(
    nebula: Nebula,
    running: Fleet,
) -> None:
    big = await nebula(*create("big", "--wait", "--timeout", "60", vcpus=3))
    assert big.code == 1
    assert big.error.endswith("ended in error: no node in region eu with 3 free vCPUs")

    elsewhere = await nebula(*create("lost", "--wait", "--timeout", "60", region="mars"))
    assert elsewhere.code == 1
    assert "no node in region mars (regions with nodes: eu)" in elsewhere.error


async def test_booted_waits_for_the_phone_home_a_simulated_guest_never_makes(
    nebula: Nebula,
    running: Fleet,
) -> None:
    alone = await nebula(*create("b-1", "--booted"))
    assert alone.code == 2
    assert "--booted only makes sense with --wait" in alone.err

    waited = await nebula(*create("b-2", "--wait", "--booted", "--timeout", "3"))
    assert waited.code == 1
    assert "-> running" in waited.err
    assert waited.error.endswith("to be booted; it is running")
