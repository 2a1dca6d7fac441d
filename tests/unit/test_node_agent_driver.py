"""The libvirt driver on libvirt's real test driver (a private host per test), with real
images fetched into the cache and real disks made by qemu-img: what a create leaves
behind, idempotency, conflicts, the lifecycle, the console, and lifecycle events."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import msgspec
import pytest

from nebula_core.contract.errors import Conflict, NotFound
from nebula_core.contract.image_sources import ImageSources
from nebula_core.contract.node import CreateRequest, ImageSpec, guest_mac
from nebula_core.contract.types import Resources
from nebula_node.libvirt.domain_xml import (
    GuestDisk,
    GuestDomain,
    GuestInterface,
    GuestSerial,
    GuestSpec,
    KernelBoot,
    build_domain,
)
from nebula_node.libvirt.driver import LibvirtDriver
from nebula_node.libvirt.states import DomainEvent
from nebula_node.network import NetworkPlan
from nebula_node.sim import simulated_driver, simulated_host_uri
from tests.support import eventually

GIB = 1 << 30
TOKEN = "secret-token"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_image(tmp_path: Path) -> ImageSpec:
    """A direct-kernel image as ops/guest/build-tiny.sh lays it out (with fake contents)."""
    source = tmp_path / "published" / "nebula-tiny"
    source.mkdir(parents=True)
    files = {"vmlinuz": b"not really a kernel\n" * 100, "initrd.img": b"not really an initrd\n" * 50}
    for name, data in files.items():
        (source / name).write_bytes(data)
    manifest = {
        "name": "nebula-tiny",
        "format": "direct-kernel",
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "cmdline": "console=ttyS0 quiet",
        "files": {name: {"sha256": sha256(data), "size": len(data)} for name, data in files.items()},
    }
    data = json.dumps(manifest).encode()
    (source / "manifest.json").write_bytes(data)
    return ImageSpec(
        id=uuid.uuid4(),
        name="nebula-tiny",
        format="direct-kernel",
        source=str(source / "manifest.json"),
        sha256=sha256(data),
        size=len(data),
    )


@pytest.fixture
def cloud_image(tmp_path: Path) -> ImageSpec:
    path = tmp_path / "published" / "base.qcow2"
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    data = path.read_bytes()
    return ImageSpec(
        id=uuid.uuid4(), name="base", format="qcow2", source=f"file://{path}", sha256=sha256(data), size=len(data)
    )


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[LibvirtDriver]:
    uri = simulated_host_uri(tmp_path / "host.xml", Resources(vcpus=8, ram_mb=8192))
    published = ImageSources(roots=(str(tmp_path / "published"),))
    driver = LibvirtDriver.for_node(uri, tmp_path / "state", node_id="n1", image_sources=published)
    await driver.open()
    yield driver
    await driver.close()


def request(image: ImageSpec, **changes: object) -> CreateRequest:
    base = CreateRequest(
        instance_id=uuid.UUID("0b8c4c8e-5d7e-4b59-9a61-3f1a2b3c4d5e"),
        project_id=uuid.uuid4(),
        name="web-1",
        tags={"team": "infra"},
        vcpus=2,
        ram_mb=256,
        disk_gb=2,
        image=image,
        metadata_token=TOKEN,
    )
    return msgspec.structs.replace(base, **changes)


async def domain_of(driver: LibvirtDriver, instance_id: uuid.UUID) -> GuestDomain:
    xml = await driver._run(lambda conn: conn.lookupByName(str(instance_id)).XMLDesc(0))
    return GuestDomain.from_xml(xml)


def qemu_img_info(path: str) -> dict:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True, capture_output=True)
    return json.loads(out.stdout)


async def test_a_direct_kernel_guest_boots_cached_files_with_a_blank_data_disk(driver, tiny_image, tmp_path):
    req = request(tiny_image)

    assert await driver.create(req) == "running"

    domain = await domain_of(driver, req.instance_id)
    cache = tmp_path / "state" / "images" / "sha256"
    manifest = json.loads(Path(tiny_image.source).read_text())
    assert domain.name == str(req.instance_id) and domain.uuid == req.instance_id
    assert domain.type == "qemu"  # KVM is opt-in
    assert domain.os.kernel == str(cache / manifest["files"]["vmlinuz"]["sha256"])
    assert domain.os.initrd == str(cache / manifest["files"]["initrd.img"]["sha256"])
    assert domain.os.cmdline == "console=ttyS0 quiet"
    assert domain.sysinfo is not None and domain.sysinfo.system["serial"] == (
        f"ds=nocloud-net;s=http://10.0.2.2:8775/nocloud/{req.instance_id}/{TOKEN}/"
    )
    assert (domain.vcpus, domain.memory_mib) == (2, 256)
    [disk] = domain.devices_of(GuestDisk)
    assert disk.source_path == str(tmp_path / "state" / "instances" / str(req.instance_id) / "data.qcow2")
    assert qemu_img_info(disk.source_path)["virtual-size"] == 2 * GIB
    [serial] = domain.devices_of(GuestSerial)
    assert serial.log_file == str(tmp_path / "state" / "instances" / str(req.instance_id) / "console.log")


async def test_a_cloud_image_guest_gets_an_overlay_grown_to_its_disk_size(driver, cloud_image, tmp_path):
    req = request(cloud_image, disk_gb=3)

    assert await driver.create(req) == "running"

    [disk] = (await domain_of(driver, req.instance_id)).devices_of(GuestDisk)
    details = qemu_img_info(disk.source_path)
    assert details["virtual-size"] == 3 * GIB
    assert details["backing-filename"] == str(tmp_path / "state" / "images" / "sha256" / cloud_image.sha256)


async def test_a_repeated_create_changes_nothing(driver, tiny_image):
    req = request(tiny_image)
    first = await driver.create(req)

    second = await driver.create(req)

    assert first == second == "running"
    assert list(await driver.domains()) == [req.instance_id]


async def test_a_create_that_asked_not_to_start_leaves_the_domain_off(driver, tiny_image):
    assert await driver.create(request(tiny_image, start=False)) == "shutoff"


async def test_a_create_with_another_flavour_or_disk_is_a_conflict(driver, tiny_image):
    req = request(tiny_image)
    await driver.create(req)

    with pytest.raises(Conflict, match="different memory"):
        await driver.create(msgspec.structs.replace(req, ram_mb=512))
    with pytest.raises(Conflict):
        await driver.create(msgspec.structs.replace(req, disk_gb=5))
    assert await driver.status(req.instance_id) == "running"


async def test_stop_start_reboot_and_delete_are_idempotent(driver, tiny_image, tmp_path):
    req = request(tiny_image)
    await driver.create(req)
    iid = req.instance_id

    assert [await driver.stop(iid, 5), await driver.stop(iid, 5)] == ["shutoff", "shutoff"]
    assert [await driver.start(iid), await driver.start(iid)] == ["running", "running"]
    assert await driver.stop(iid, 0) == "shutoff"
    assert await driver.reboot(iid) == "running"  # a reboot ends running, even from off
    assert await driver.reboot(iid) == "running"
    assert [await driver.delete(iid), await driver.delete(iid)] == ["missing", "missing"]
    assert await driver.status(iid) == "missing"
    assert not (tmp_path / "state" / "instances" / str(iid)).exists()


async def test_operating_on_a_missing_domain_is_not_found(driver):
    missing = uuid.uuid4()

    for op in (driver.start(missing), driver.stop(missing, 1), driver.reboot(missing), driver.console(missing, 10)):
        with pytest.raises(NotFound):
            await op


async def test_the_console_is_the_tail_of_the_serial_log(driver, tiny_image, tmp_path):
    req = request(tiny_image)
    await driver.create(req)
    log = tmp_path / "state" / "instances" / str(req.instance_id) / "console.log"

    assert await driver.console(req.instance_id, 100) == ("", False)  # nothing written yet
    log.write_bytes(b"boot\n" + b"x" * 100 + b"\nnebula: phoned home \xe2\x9c\x93\n")
    data, truncated = await driver.console(req.instance_id, 25)

    assert truncated and data == "\nnebula: phoned home \u2713\n"
    assert await driver.console(req.instance_id, 10_000) == (log.read_text(), False)


async def test_capacity_comes_from_the_host(driver):
    capacity = await driver.capacity()

    assert (capacity.vcpus, capacity.ram_mb) == (8, 8192)
    assert capacity.disk_gb > 0


async def test_every_lifecycle_event_reaches_the_listener_on_the_event_loop(tmp_path, tiny_image):
    driver = simulated_driver("test:///default", tmp_path / "state", node_id="n1")
    await driver.open()
    seen: list[DomainEvent] = []
    loop = asyncio.get_running_loop()
    driver.listen(lambda event: seen.append(event) if asyncio.get_running_loop() is loop else None)
    other = libvirt.open("test:///default")  # the same host, behind the driver's back
    try:
        req = request(tiny_image)
        await driver.create(req)
        await asyncio.to_thread(lambda: other.lookupByName(str(req.instance_id)).destroy())
        await asyncio.to_thread(lambda: other.lookupByName("test").destroy())  # not a Nebula domain

        async def destroyed_seen() -> bool:
            return _reasons(seen, req.instance_id)[-1:] == ["the domain was destroyed"]

        await eventually(destroyed_seen)
        assert _reasons(seen, req.instance_id) == [
            "the domain was defined",
            "the domain was started",
            "the domain was destroyed",
        ]
        assert {e.instance_id for e in seen} == {req.instance_id}
    finally:
        other.close()
        await driver.delete(req.instance_id)
        await driver.close()


def _reasons(events: list[DomainEvent], instance_id: uuid.UUID) -> list[str]:
    return [e.reason for e in events if e.instance_id == instance_id]


async def test_guests_get_user_mode_networking_or_a_fixed_address_on_the_managed_network(driver, tiny_image, tmp_path):
    req = request(tiny_image)
    await driver.create(req)
    [nic] = (await domain_of(driver, req.instance_id)).devices_of(GuestInterface)
    assert (nic.type, nic.source_network, nic.mac) == ("user", None, guest_mac(req.instance_id))

    uri = simulated_host_uri(tmp_path / "bridged.xml", Resources(vcpus=8, ram_mb=8192))
    published = ImageSources(roots=(str(tmp_path / "published"),))
    plan = NetworkPlan(name="nebula", subnet="10.213.0.0/24", meta_port=8775)
    bridged = LibvirtDriver.for_node(uri, tmp_path / "bridged", node_id="n1", network=plan, image_sources=published)
    await bridged.open()
    try:
        assert (bridged.network.name, bridged.network.gateway) == ("nebula", "10.213.0.1")
        assert bridged.network.meta_url == "http://10.213.0.1:8775"  # the bridge's address
        await bridged.create(req)
        other = request(tiny_image, instance_id=uuid.uuid4())
        await bridged.create(other)
        await bridged.create(req)  # repeated: the same address
        domain = await domain_of(bridged, req.instance_id)
        [nic] = domain.devices_of(GuestInterface)
        assert (nic.type, nic.source_network, nic.mac) == ("network", "nebula", guest_mac(req.instance_id))
        assert domain.sysinfo is not None and "s=http://10.213.0.1:8775/nocloud/" in domain.sysinfo.system["serial"]
        hosts = await bridged._run(lambda conn: network_hosts(conn, "nebula"))
        assert hosts == {guest_mac(req.instance_id): "10.213.0.10", guest_mac(other.instance_id): "10.213.0.11"}

        await bridged.delete(req.instance_id)
        hosts = await bridged._run(lambda conn: network_hosts(conn, "nebula"))
        assert hosts == {guest_mac(other.instance_id): "10.213.0.11"}  # its reservation went with it
    finally:
        await bridged.close()


def network_hosts(conn, name: str) -> dict[str, str]:
    root = ET.fromstring(conn.networkLookupByName(name).XMLDesc(0))
    return {h.get("mac"): h.get("ip") for h in root.iterfind("ip/dhcp/host")}


async def test_domains_another_agent_or_a_tool_made_on_the_host_are_never_touched(tmp_path, tiny_image):
    """One host, one libvirt: this node's agent, an agent of another cloud that took the same
    node id (another state directory), another node, and a tool that names a domain by a
    UUID. Each agent sees and touches only the domains it made."""
    mine = simulated_driver("test:///default", tmp_path / "a", node_id="n1")
    twin = simulated_driver("test:///default", tmp_path / "b", node_id="n1")
    other = simulated_driver("test:///default", tmp_path / "c", node_id="n2")
    tool = libvirt.open("test:///default")
    drivers = (mine, twin, other)
    for d in drivers:
        await d.open()
    ours, twins, others = (request(tiny_image, instance_id=uuid.uuid4()) for _ in drivers)
    foreign = str(uuid.uuid4())
    try:
        for d, req in zip(drivers, (ours, twins, others), strict=True):
            assert await d.create(req) == "running"
        tool.defineXML(
            f"<domain type='test'><name>{foreign}</name><memory>1024</memory><os><type>hvm</type></os></domain>"
        ).create()

        assert await mine.domains() == {ours.instance_id: "running"}
        assert await twin.domains() == {twins.instance_id: "running"}
        for req in (twins, others):
            assert await mine.status(req.instance_id) == "missing"
            assert await mine.delete(req.instance_id) == "missing"
            for op in (mine.stop(req.instance_id, 0), mine.start(req.instance_id), mine.reboot(req.instance_id)):
                with pytest.raises(NotFound):
                    await op
            with pytest.raises(Conflict, match="did not make it"):
                await mine.create(req)
        assert await mine.delete(uuid.UUID(foreign)) == "missing"

        assert await twin.status(twins.instance_id) == "running"
        assert await other.status(others.instance_id) == "running"
        assert tool.lookupByName(foreign).isActive()
    finally:
        for d, req in zip(drivers, (ours, twins, others), strict=True):
            await d.delete(req.instance_id)
            await d.close()
        with contextlib.suppress(libvirt.libvirtError):
            dom = tool.lookupByName(foreign)
            dom.destroy()
            dom.undefine()
        tool.close()


async def test_a_domain_without_nebulas_owner_is_not_the_nodes_even_with_its_files_in_its_home(tmp_path, tiny_image):
    """Only the metadata a node agent writes makes a domain its own: one whose disks and
    console log lie in this node's home but whose metadata names no owner is left alone."""
    mine = simulated_driver("test:///default", tmp_path / "a", node_id="n1")
    tool = libvirt.open("test:///default")
    await mine.open()
    unowned = uuid.uuid4()
    home = mine.owner[1]
    spec = GuestSpec(
        instance_id=unowned,
        project_id=uuid.uuid4(),
        name="unowned",
        vcpus=1,
        ram_mb=128,
        domain_type="qemu",
        kernel=KernelBoot(kernel=f"{home}/{unowned}/vmlinuz"),
        console_log=f"{home}/{unowned}/console.log",
    )
    tool.defineXML(build_domain(spec).to_xml())
    try:
        assert await mine.domains() == {}
        assert await mine.status(unowned) == "missing"
        for op in (mine.start(unowned), mine.stop(unowned, 0), mine.reboot(unowned), mine.console(unowned, 10)):
            with pytest.raises(NotFound):
                await op
        with pytest.raises(Conflict, match="did not make it"):
            await mine.create(request(tiny_image, instance_id=unowned))
        assert await mine.delete(unowned) == "missing"

        assert not tool.lookupByName(str(unowned)).isActive()  # still defined, never started
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            tool.lookupByName(str(unowned)).undefine()
        await mine.close()
        tool.close()
