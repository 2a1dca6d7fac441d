"""End-to-end: nebula-tiny on the managed network (issue 13). The node agent defines (or
finds) the libvirt NAT network `nebula`; the guest leases its fixed address by DHCP, reads
its seed from the metadata service at the bridge's address, and phones home. The API
shows its address; the host reaches the guest there; the guest reaches the metadata
service and nothing else of the host (NATS, or any port listening on all addresses, is
refused by the host guard); stop and start keep the address; delete removes the DHCP
entry, the lease and the NIC's clean-traffic filter binding.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlparse

import libvirt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nebula_core.contract.node import guest_mac
from nebula_meta.app import make_app as make_meta_app
from nebula_node.network import GuestNetwork, NetworkPlan, prepare
from tests.e2e.conftest import Meta, Nebula
from tests.e2e.test_vm import PHONED_HOME, act, wait_console, wait_state
from tests.integration.conftest import Cloud
from tests.support import eventually

pytestmark = pytest.mark.e2e

GUEST_PORT = 7777
GREETING = "HELLO-FROM-THE-GUEST"


@pytest.fixture
def guest_network() -> str:
    return "nebula"


@pytest.fixture
def managed(virt: libvirt.virConnect) -> GuestNetwork:
    """The managed network, as the node agent will find it (defined here if missing)."""
    network = prepare(virt, NetworkPlan(name="nebula"))
    if network.name is None:
        pytest.fail(f"the managed network cannot be made on this host: {network.fallback}", pytrace=False)
    return network


@pytest.fixture
async def meta(cloud: Cloud, managed: GuestNetwork) -> AsyncIterator[Meta]:  # type: ignore[override]
    """The metadata service on the bridge's address (and loopback, for the test)."""
    assert managed.gateway is not None
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

    app = make_meta_app(cloud.settings_for("meta"))
    app.middlewares.insert(0, record)
    server = TestServer(app, host="0.0.0.0")
    await server.start_server()
    yield Meta(f"http://127.0.0.1:{server.port}", f"http://{managed.gateway}:{server.port}", answered)
    await server.close()


@pytest.fixture
def open_port() -> Iterator[int]:
    """A port listening on every address of the host: without the guard a guest reaches it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        yield listener.getsockname()[1]


def probes(gateway: str, ports: dict[str, int]) -> str:
    """User-data lines: for each port of the host, whether a TCP connection was accepted."""
    lines = [f"(echo {GREETING} | nc -l -p {GUEST_PORT}) >/dev/null 2>&1 &"]
    for name, port in ports.items():
        lines.append(
            f"if echo | nc -w 3 {gateway} {port} >/dev/null 2>&1; then r=1; else r=0; fi; "
            f'echo "HOST-PORT {name} connected=$r"'
        )
    return "\n".join(lines) + "\n"


def leases(virt: libvirt.virConnect) -> dict[str, str]:
    return {x["mac"]: x["ipaddr"] for x in virt.networkLookupByName("nebula").DHCPLeases()}


def dhcp_hosts(virt: libvirt.virConnect) -> dict[str, str]:
    root = ET.fromstring(virt.networkLookupByName("nebula").XMLDesc(0))
    return {h.get("mac", ""): h.get("ip", "") for h in root.iterfind("ip/dhcp/host")}


def filter_bindings() -> str:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", "nwfilter-binding-list"], capture_output=True, text=True, check=False
    ).stdout


async def greeting(address: str) -> str:
    """What the guest's listener says to the host (a connection from the host to the guest)."""
    with contextlib.suppress(OSError, TimeoutError):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, GUEST_PORT), 3)
        try:
            return (await asyncio.wait_for(reader.read(100), 3)).decode()
        finally:
            writer.close()
    return ""


async def test_a_guest_on_the_managed_network_is_reachable_and_reaches_only_the_metadata_service(
    nebula: Nebula, managed: GuestNetwork, open_port: int
) -> None:
    api, virt = nebula.cloud.admin, nebula.virt
    assert managed.gateway is not None
    nats_port = urlparse(nebula.cloud.nats.url).port or 4222
    meta_port = urlparse(nebula.meta.guest_url).port or 80
    user_data = "#!/bin/sh\n" + probes(managed.gateway, {"metadata": meta_port, "nats": nats_port, "open": open_port})
    project_id = await nebula.cloud.project("e2e-net")
    status, created = await api.post(
        "/v1/instances",
        {
            "project_id": project_id,
            "name": "tiny-net",
            "vcpus": 1,
            "ram_mb": 256,
            "disk_gb": 1,
            "image": "nebula-tiny",
            "user_data": user_data,
        },
    )
    assert status == 202, created
    instance_id = str(created["id"])
    nebula.leftovers.add(instance_id)
    mac = guest_mac(uuid.UUID(instance_id))
    await wait_state(api, instance_id, "running")

    text = await wait_console(api, instance_id, "the probes of the host's ports", lambda c: "HOST-PORT open" in c)
    assert "HOST-PORT metadata connected=1" in text
    assert "HOST-PORT nats connected=0" in text  # the control plane's NATS: refused by the guard
    assert "HOST-PORT open connected=0" in text  # any other port of the host, too
    await wait_console(api, instance_id, "the phone-home", lambda c: PHONED_HOME in c)

    async def addressed() -> dict | None:
        status, body = await api.get(f"/v1/instances/{instance_id}")
        assert status == 200, body
        return body if body["addresses"] and body["booted_at"] else None

    body = await eventually(addressed, timeout=60)
    [address] = body["addresses"]
    assert (address["network"], address["mac"]) == ("nebula", mac)
    assert dhcp_hosts(virt)[mac] == address["ipv4"] == leases(virt)[mac]
    assert f"NEBULA-NET-UP {address['ipv4']}" in text
    assert (await eventually(lambda: greeting(address["ipv4"]), timeout=30)).strip() == GREETING
    assert "clean-traffic" in filter_bindings()

    # Stop and start: the same address.
    await act(api, instance_id, "stop")
    await wait_state(api, instance_id, "stopped")
    await act(api, instance_id, "start")
    await wait_state(api, instance_id, "running")
    assert (await eventually(lambda: greeting(address["ipv4"]), timeout=90)).strip() == GREETING
    status, body = await api.get(f"/v1/instances/{instance_id}")
    assert body["addresses"] == [address]
    assert leases(virt)[mac] == address["ipv4"]

    # Delete: the DHCP entry, the lease and the NIC's filter binding go with it.
    status, body = await api.call("DELETE", f"/v1/instances/{instance_id}")
    assert status == 202, body
    await wait_state(api, instance_id, "deleted")
    assert mac not in dhcp_hosts(virt)
    assert await eventually(lambda: asyncio.sleep(0.2, result=mac not in leases(virt)), timeout=10)
    assert "clean-traffic" not in filter_bindings()
