"""End-to-end: a real nebula-tiny VM under libvirtd + QEMU, driven only through the HTTP API
by the whole stack - API, projector, orchestrator, metadata service and a node agent on
qemu:///system - from create to delete, with its boot timed; and a VM whose seed carries a
wrong token, which gets nothing."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import libvirt
import msgspec
import pytest

from nebula_core.contract import subjects
from nebula_core.contract.kv import InstanceSeed
from nebula_core.contract.node import CreateRequest, ImageSpec
from nebula_node.libvirt.driver import LibvirtDriver
from nebula_node.network import NetworkPlan
from tests.e2e.conftest import GUEST_HOST_ADDR, URI, Host, Leftovers, Meta, Nebula
from tests.integration.conftest import Client, Cloud
from tests.support import eventually

pytestmark = pytest.mark.e2e

#: A boot under TCG takes about 6 s here; the deadlines leave room for a loaded machine.
BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
PHONED_HOME = "NEBULA-PHONE-HOME-OK"


# --- reading the instance and its console --------------------------------------------------


async def instance(api: Client, instance_id: str) -> dict[str, Any]:
    status, body = await api.get(f"/v1/instances/{instance_id}")
    assert status == 200, body
    return dict(body)


async def wait_state(api: Client, instance_id: str, state: str, timeout: float = BOOT_TIMEOUT) -> dict[str, Any]:
    """The instance once it is in `state`; an `error` on the way fails at once, with its reason."""

    async def probe() -> dict[str, Any] | None:
        now = await instance(api, instance_id)
        assert now["state"] != "error", f"instance {instance_id} failed: {now['error']}"
        return now if now["state"] == state else None

    return await eventually(probe, timeout=timeout, interval=0.1)


async def act(api: Client, instance_id: str, action: str) -> None:
    status, body = await api.post(f"/v1/instances/{instance_id}/actions", {"action": action})
    assert status == 202, body


async def console(api: Client, instance_id: str) -> str:
    status, body = await api.get(f"/v1/instances/{instance_id}/console")
    assert status == 200, body
    return str(body["data"]).replace("\r", "")


async def until_console(
    read: Callable[[], Awaitable[str]], what: str, holds: Callable[[str], bool], timeout: float = BOOT_TIMEOUT
) -> str:
    """The console once `holds(console)`; else fail saying `what` and showing its tail."""
    deadline = time.monotonic() + timeout
    while not holds(text := (await read()).replace("\r", "")):
        if time.monotonic() > deadline:
            tail = "\n    ".join(text.splitlines()[-30:])
            raise AssertionError(f"{what}: not on the console within {timeout:g} s; its tail:\n    {tail}")
        await asyncio.sleep(0.2)
    return text


async def wait_console(api: Client, instance_id: str, what: str, holds: Callable[[str], bool]) -> str:
    return await until_console(lambda: console(api, instance_id), what, holds)


def userdata_blocks(text: str) -> list[list[str]]:
    """The lines between each NEBULA-USERDATA-BEGIN and the next NEBULA-USERDATA-END."""
    blocks, current = [], None
    for line in text.splitlines():
        if line == "NEBULA-USERDATA-BEGIN":
            current = []
        elif line == "NEBULA-USERDATA-END" and current is not None:
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def ran(nonce: str, text: str) -> bool:
    """True if the user-data's output, `nonce`, is on the console between the markers."""
    return any(nonce in block for block in userdata_blocks(text))


def domain_state(virt: libvirt.virConnect, instance_id: str) -> int:
    return int(virt.lookupByUUIDString(instance_id).state()[0])


def phone_homes(meta: Meta, instance_id: str) -> int:
    """Phone-homes the metadata service accepted from the instance."""
    return sum(
        1
        for method, path, status in meta.to(instance_id)
        if method == "POST" and path.endswith("/phone-home") and status == 200
    )


# --- timings ---------------------------------------------------------------------------------


@dataclass
class BootTimings:
    """Seconds from the API's accept. `*_recorded`: between the timestamps the control plane
    recorded (created_at, the instance.launched event, booted_at). `*_seen`: wall clock in
    the test, from the 202 to when the API first showed it (polled every 0.1 s)."""

    accept_to_qemu_started_recorded: float
    accept_to_phone_home_recorded: float
    accept_to_running_seen: float
    accept_to_phone_home_seen: float
    accept_to_nonce_on_console_seen: float


async def event_at(api: Client, instance_id: str, event_type: str) -> datetime:
    status, body = await api.get(f"/v1/instances/{instance_id}/events")
    assert status == 200, body
    return datetime.fromisoformat(next(e["at"] for e in body["items"] if e["type"] == event_type))


def report(
    timings: BootTimings,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Shown whatever pytest's capture, kept as JSON beside the test, and in the JUnit XML."""
    (tmp_path / "boot-timings.json").write_text(json.dumps(asdict(timings), indent=2))
    record_property("boot_timings", asdict(timings))
    lines = [f"  {name.replace('_', ' '):<36} {value:6.2f} s" for name, value in asdict(timings).items()]
    with capsys.disabled():
        print("\nnebula-tiny under TCG, API accept (202) to:\n" + "\n".join(lines))


# --- the tests -------------------------------------------------------------------------------


def nats_probe(port: int) -> str:
    """User-data lines by which a guest tries the control plane's NATS as any guest could:
    from its side of user-mode networking (the host's loopback is 10.0.2.2), an anonymous
    CONNECT and a PING. It prints whether the server spoke (INFO), served it (PONG) or
    refused it."""
    return (
        f"out=$( (printf 'CONNECT {{\"verbose\":false}}\\r\\nPING\\r\\n'; sleep 2) | nc {GUEST_HOST_ADDR} {port} 2>&1 )\n"
        'echo "NATS-PROBE info=$(echo "$out" | grep -c \'^INFO\') pong=$(echo "$out" | grep -c PONG)'
        ' refused=$(echo "$out" | grep -c \'Authorization Violation\')"\n'
    )


async def test_a_vm_boots_runs_its_user_data_and_obeys_stop_start_reboot_and_delete(
    nebula: Nebula,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    api, virt, meta = nebula.cloud.admin, nebula.virt, nebula.meta
    project_id = await nebula.cloud.project("e2e")
    nonce = f"nonce-{secrets.token_hex(8)}"

    status, created = await api.post(
        "/v1/instances",
        {
            "project_id": project_id,
            "name": "tiny-e2e",
            "vcpus": 1,
            "ram_mb": 256,
            "disk_gb": 1,
            "image": "nebula-tiny",
            "user_data": f"#!/bin/sh\necho {nonce}\n" + nats_probe(nebula.cloud.nats.port),
        },
    )
    accepted = time.monotonic()
    assert status == 202, created
    instance_id = created["id"]
    nebula.leftovers.add(instance_id)

    # Placed, created and started by the node: QEMU runs the guest.
    await wait_state(api, instance_id, "running")
    running_seen = time.monotonic() - accepted
    assert domain_state(virt, instance_id) == libvirt.VIR_DOMAIN_RUNNING
    # The guest fetched its data, ran the user-data and phoned home.
    booted = await eventually(lambda: _booted(api, instance_id), timeout=BOOT_TIMEOUT, interval=0.1)
    booted_seen = time.monotonic() - accepted
    first = await wait_console(api, instance_id, f"{nonce} between the user-data markers", lambda c: ran(nonce, c))
    nonce_seen = time.monotonic() - accepted
    assert phone_homes(meta, instance_id) == 1
    assert "NEBULA-DISKS vda=1073741824" in first  # the 1 GiB disk
    # The guest reached the control plane's NATS and was refused: no anonymous client.
    assert "NATS-PROBE info=1 pong=0 refused=1" in first, first
    created_at = datetime.fromisoformat(created["created_at"])
    report(
        BootTimings(
            accept_to_qemu_started_recorded=(
                await event_at(api, instance_id, "instance.launched") - created_at
            ).total_seconds(),
            accept_to_phone_home_recorded=(datetime.fromisoformat(booted) - created_at).total_seconds(),
            accept_to_running_seen=running_seen,
            accept_to_phone_home_seen=booted_seen,
            accept_to_nonce_on_console_seen=nonce_seen,
        ),
        tmp_path,
        record_property,
        capsys,
    )

    # Stop: the guest powers itself off (ACPI) and the domain is shut off.
    await act(api, instance_id, "stop")
    await wait_state(api, instance_id, "stopped", timeout=STOP_TIMEOUT)
    assert domain_state(virt, instance_id) == libvirt.VIR_DOMAIN_SHUTOFF
    assert "NEBULA-POWEROFF" in await console(api, instance_id)

    # Start: a fresh boot that runs the user-data again (the log may keep the last boot's
    # output before it: only what follows the power-off counts).
    await act(api, instance_id, "start")
    await wait_state(api, instance_id, "running")
    assert domain_state(virt, instance_id) == libvirt.VIR_DOMAIN_RUNNING
    await wait_console(
        api,
        instance_id,
        "a second boot with the user-data's output",
        lambda c: _booted_after(since_last(c, "NEBULA-POWEROFF"), "", nonce),
    )
    await eventually(lambda: _phoned(meta, instance_id, 2), timeout=BOOT_TIMEOUT)

    # Reboot: the ACPI power button, the guest powers off, and libvirt resets the same
    # QEMU process (the domain keeps its id); the guest boots once more.
    qemu_before = virt.lookupByUUIDString(instance_id).ID()
    boots_before = (await console(api, instance_id)).count("NEBULA-TINY-BOOT")
    await act(api, instance_id, "reboot")
    await wait_state(api, instance_id, "running")
    rebooted = await wait_console(
        api,
        instance_id,
        "a boot after the reboot's power-off",
        lambda c: (
            c.count("NEBULA-TINY-BOOT") > boots_before and _booted_after(since_last(c, "NEBULA-POWEROFF"), "", nonce)
        ),
    )
    assert "NEBULA-ACPI-POWER-BUTTON" in rebooted
    assert virt.lookupByUUIDString(instance_id).ID() == qemu_before
    await eventually(lambda: _phoned(meta, instance_id, 3), timeout=BOOT_TIMEOUT)
    assert (await instance(api, instance_id))["booted_at"] == booted  # recorded once, at the first boot

    # Delete: the domain and its disks are gone, and so are its data for the guest.
    status, body = await api.call("DELETE", f"/v1/instances/{instance_id}")
    assert status == 202, body
    await wait_state(api, instance_id, "deleted", timeout=STOP_TIMEOUT)
    with pytest.raises(libvirt.libvirtError) as missing:
        virt.lookupByUUIDString(instance_id)
    assert missing.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
    assert not nebula.host.instance_dir(instance_id).exists()


async def _booted(api: Client, instance_id: str) -> str | None:
    return (await instance(api, instance_id))["booted_at"]


async def _phoned(meta: Meta, instance_id: str, times: int) -> bool:
    return phone_homes(meta, instance_id) >= times


def since_last(text: str, marker: str) -> str:
    """What follows the last `marker` (all of `text` if there is none)."""
    return text.rpartition(marker)[2]


def _booted_after(text: str, marker: str, nonce: str) -> bool:
    after = text.split(marker, 1)[1] if marker else text
    return "NEBULA-TINY-BOOT" in after and ran(nonce, after) and PHONED_HOME in after


async def test_a_vm_whose_seed_carries_a_wrong_token_gets_nothing(
    cloud: Cloud,
    meta: Meta,
    host: Host,
    leftovers: Leftovers,
    tiny_image: dict[str, Any],
) -> None:
    # An instance the metadata service knows (no orchestrator runs here: it stays pending).
    project_id = await cloud.project("e2e")
    nonce = f"nonce-{secrets.token_hex(8)}"
    status, created = await cloud.admin.post(
        "/v1/instances",
        {
            "project_id": project_id,
            "name": "tiny-wrong",
            "vcpus": 1,
            "ram_mb": 256,
            "disk_gb": 1,
            "image": "nebula-tiny",
            "user_data": f"#!/bin/sh\necho {nonce}\n",
        },
    )
    assert status == 202, created
    instance_id = created["id"]
    seeds = await cloud.js.key_value(subjects.USERDATA_BUCKET)
    token = msgspec.json.decode((await seeds.get(instance_id)).value, type=InstanceSeed).metadata_token
    wrong = token[:-1] + ("B" if token.endswith("A") else "A")

    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> tuple[int, bytes]:
            async with http.get(meta.url + path) as response:
                return response.status, await response.read()

        right = f"/nocloud/{instance_id}/{token}/user-data"
        await eventually(lambda: _is_served(get, right))
        # Over HTTP: the wrong token is answered exactly as an instance that does not exist.
        refused = await get(f"/nocloud/{instance_id}/{wrong}/user-data")
        assert refused[0] == 404
        assert refused == await get(f"/nocloud/{uuid.uuid4()}/{token}/user-data")

    # A guest booted by the node's own driver with that token in its seed asks, and gets 404s.
    driver = LibvirtDriver.for_node(
        URI,
        host.state_dir,
        node_id="e2e-wrong-token",
        image_sources=cloud.settings.image_sources,
        network=NetworkPlan(meta_url=meta.guest_url),
    )
    await driver.open()
    leftovers.add(instance_id)
    try:
        image = ImageSpec(
            id=uuid.UUID(str(tiny_image["id"])),
            name="nebula-tiny",
            format="direct-kernel",
            source=str(tiny_image["source"]),
            sha256=str(tiny_image["sha256"]),
            size=int(str(tiny_image["size"])),
        )
        request = CreateRequest(
            instance_id=uuid.UUID(instance_id),
            project_id=uuid.UUID(project_id),
            name="tiny-wrong",
            vcpus=1,
            ram_mb=256,
            disk_gb=1,
            image=image,
            metadata_token=wrong,
        )
        before = len(meta.answered)
        assert await driver.create(request) == "running"
        text = await until_console(
            lambda: _tail(driver, request.instance_id),
            "a refused fetch of meta-data",
            lambda c: "NEBULA-FETCH-RETRY meta-data" in c,
        )
    finally:
        await driver.close()
    assert "NEBULA-NET-UP" in text  # it reached the network, and was refused there
    asked = [a for a in meta.answered[before:] if f"/nocloud/{instance_id}/" in a[1]]
    assert asked and all(status == 404 and f"/{wrong}/" in path for _, path, status in asked)
    assert "NEBULA-METADATA-OK" not in text and nonce not in text
    assert (await cloud.admin.get(f"/v1/instances/{instance_id}"))[1]["booted_at"] is None


async def _is_served(get: Callable[[str], Any], path: str) -> bool:
    return (await get(path))[0] == 200


async def _tail(driver: LibvirtDriver, instance_id: uuid.UUID) -> str:
    return (await driver.console(instance_id, 1 << 16))[0]
