"""The node agent's pure parts: event and state mapping, spec comparison, KVM choice,
manifest files, heartbeat TTL, capacity overrides, the simulated host file, instance locks."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
import xml.etree.ElementTree as ET

import libvirt
import msgspec
import pytest

from nebula_core.config import Settings
from nebula_core.contract.errors import Invalid
from nebula_core.contract.types import Resources
from nebula_node.agent import node_capacity
from nebula_node.heartbeat import heartbeat_subject, heartbeat_ttl
from nebula_node.libvirt.domain_xml import (
    AttachedDisk,
    GuestInterface,
    GuestOS,
    GuestSpec,
    KernelBoot,
    build_domain,
)
from nebula_node.libvirt.driver import spec_differences
from nebula_node.libvirt.kvm import choose_domain_type
from nebula_node.libvirt.media import KernelManifest, manifest_artifact
from nebula_node.libvirt.states import describe_event, domain_state, instance_of
from nebula_node.reports import InstanceLocks
from nebula_node.sim import simulated_host_xml

INSTANCE = uuid.UUID("6f1c2d3e-4b5a-4789-9abc-def012345678")
SHA = "ab" * 32


# --- libvirt states and events -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (libvirt.VIR_DOMAIN_RUNNING, "running"),
        (libvirt.VIR_DOMAIN_BLOCKED, "running"),
        (libvirt.VIR_DOMAIN_SHUTDOWN, "running"),
        (libvirt.VIR_DOMAIN_PAUSED, "paused"),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, "paused"),
        (libvirt.VIR_DOMAIN_SHUTOFF, "shutoff"),
        (libvirt.VIR_DOMAIN_CRASHED, "crashed"),
        (libvirt.VIR_DOMAIN_NOSTATE, "other"),
        (99, "other"),
    ],
)
def test_libvirt_states_map_onto_the_contracts_states(code: int, state: str) -> None:
    assert domain_state(code) == state


def test_an_event_of_a_nebula_domain_says_what_happened() -> None:
    event = describe_event(str(INSTANCE), libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED)

    assert event is not None
    assert event.instance_id == INSTANCE
    assert event.reason == "the domain was destroyed"


def test_a_guest_shutting_itself_down_is_told_apart_from_a_crash() -> None:
    shutdown = describe_event(
        str(INSTANCE), libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN
    )
    crash = describe_event(str(INSTANCE), libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED)

    assert shutdown is not None and shutdown.reason == "the guest shut down"
    assert crash is not None and crash.reason == "the guest crashed"


def test_an_unknown_detail_falls_back_to_the_events_own_reason() -> None:
    event = describe_event(str(INSTANCE), libvirt.VIR_DOMAIN_EVENT_UNDEFINED, 42)

    assert event is not None and event.reason == "the domain was undefined"


@pytest.mark.parametrize("name", ["test", "web-1", str(INSTANCE).upper(), INSTANCE.hex])
def test_domains_not_named_by_a_canonical_uuid_are_not_nebulas(name: str) -> None:
    assert instance_of(name) is None
    assert describe_event(name, libvirt.VIR_DOMAIN_EVENT_STARTED, 0) is None


# --- comparing an existing domain with a create ---------------------------------------------


def _domain(**changes: object):
    spec = GuestSpec(
        instance_id=INSTANCE,
        project_id=uuid.UUID(int=7),
        name="web",
        tags={"team": "infra"},
        vcpus=2,
        ram_mb=512,
        domain_type="qemu",
        kernel=KernelBoot(kernel="/cache/k", initrd="/cache/i", cmdline="console=ttyS0"),
        disks=(AttachedDisk(path="/instances/x/data.qcow2"),),
        seed="ds=nocloud-net;s=http://meta/nocloud/x/token/",
        console_log="/instances/x/console.log",
    )
    return build_domain(dataclasses.replace(spec, **changes))


def test_the_same_create_matches_the_domain_it_made() -> None:
    assert spec_differences(_domain(), _domain()) == []


def test_what_libvirt_fills_in_and_the_accelerator_are_not_differences() -> None:
    made = _domain(domain_type="kvm")
    as_read = dataclasses.replace(
        _domain(),
        emulator="/usr/bin/qemu-system-x86_64",
        os=dataclasses.replace(_domain().os, machine="pc-i440fx-8.2", boot_devs=("hd",)),
        devices=tuple(
            dataclasses.replace(d, mac="52:54:00:12:34:56") if isinstance(d, GuestInterface) else d
            for d in _domain().devices
        ),
    )

    assert isinstance(as_read.os, GuestOS)
    assert spec_differences(as_read, made) == []


def test_a_different_flavour_image_or_seed_is_named_without_its_values() -> None:
    differences = spec_differences(
        _domain(), _domain(vcpus=4, ram_mb=1024, seed="ds=nocloud-net;s=http://meta/nocloud/x/other/")
    )

    assert differences == ["memory", "vcpus", "seed"]
    assert spec_differences(_domain(), _domain(kernel=KernelBoot(kernel="/cache/other"))) == ["kernel boot"]
    assert spec_differences(_domain(), _domain(tags={})) == ["project, name or tags"]


# --- KVM -----------------------------------------------------------------------------------


def test_kvm_is_used_only_when_asked_for_and_working() -> None:
    assert choose_domain_type(False, probe=lambda: True) == "qemu"
    assert choose_domain_type(True, probe=lambda: True) == "kvm"
    assert choose_domain_type(True, probe=lambda: False) == "qemu"


# --- direct-kernel manifests -----------------------------------------------------------------

MANIFEST = msgspec.convert(
    {
        "name": "nebula-tiny",
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "cmdline": "console=ttyS0",
        "files": {"vmlinuz": {"sha256": SHA, "size": 10}, "initrd.img": {"sha256": "cd" * 32}},
    },
    KernelManifest,
)


def test_files_named_by_a_manifest_sit_beside_it() -> None:
    local = manifest_artifact(MANIFEST, "/srv/images/tiny/manifest.json", "vmlinuz")
    remote = manifest_artifact(MANIFEST, "https://images.example/tiny/manifest.json", "initrd.img")
    file_url = manifest_artifact(MANIFEST, "file:///srv/tiny/manifest.json", "vmlinuz")

    assert (local.source, local.sha256, local.size) == ("/srv/images/tiny/vmlinuz", SHA, 10)
    assert (remote.source, remote.sha256) == ("https://images.example/tiny/initrd.img", "cd" * 32)
    assert file_url.source == "file:///srv/tiny/vmlinuz"


@pytest.mark.parametrize("name", ["../etc/passwd", "sub/vmlinuz", "..", ""])
def test_a_manifest_cannot_name_a_file_elsewhere(name: str) -> None:
    with pytest.raises(Invalid):
        manifest_artifact(MANIFEST, "/srv/images/tiny/manifest.json", name)


def test_a_manifest_must_vouch_for_every_file_it_names() -> None:
    with pytest.raises(Invalid, match="no sha256"):
        manifest_artifact(MANIFEST, "/srv/images/tiny/manifest.json", "bzImage")


# --- heartbeats and capacity --------------------------------------------------------------------


@pytest.mark.parametrize(("interval", "ttl"), [(5.0, 13), (2.0, 5), (1.0, 3), (0.2, 1), (0.5, 2)])
def test_a_heartbeat_lives_two_and_a_half_intervals_in_whole_seconds(interval: float, ttl: int) -> None:
    assert heartbeat_ttl(interval) == ttl


def test_the_heartbeat_key_is_the_node_id_and_must_be_a_subject_token() -> None:
    assert heartbeat_subject("node-1") == "$KV.nebula_nodes.node-1"
    with pytest.raises(ValueError):
        heartbeat_subject("a.b")


def test_capacity_settings_override_detection_field_by_field() -> None:
    detected = Resources(vcpus=16, ram_mb=65536, disk_gb=900)
    settings = Settings(node_vcpus=8, node_disk_gb=100)

    assert node_capacity(detected, settings) == Resources(vcpus=8, ram_mb=65536, disk_gb=100)
    assert node_capacity(detected, Settings()) == detected


def test_a_simulated_host_has_the_capacity_it_is_given() -> None:
    root = ET.fromstring(simulated_host_xml(Resources(vcpus=12, ram_mb=4096, disk_gb=50)))

    assert root.tag == "node"
    assert root.findtext("cpu/active") == "12"
    assert root.findtext("memory") == str(4096 * 1024)


# --- per-instance locks ----------------------------------------------------------------------------


async def test_operations_on_one_instance_take_turns_and_others_do_not_wait() -> None:
    locks = InstanceLocks()
    order: list[str] = []
    other = uuid.uuid4()

    async def op(instance_id: uuid.UUID, name: str, pause: float) -> None:
        async with locks.hold(instance_id):
            order.append(f"{name}+")
            await asyncio.sleep(pause)
            order.append(f"{name}-")

    first = asyncio.create_task(op(INSTANCE, "a", 0.05))
    await asyncio.sleep(0)
    second = asyncio.create_task(op(INSTANCE, "b", 0))
    third = asyncio.create_task(op(other, "c", 0))
    await asyncio.sleep(0.01)
    assert locks.busy(INSTANCE) and order == ["a+", "c+", "c-"]
    await asyncio.gather(first, second, third)

    assert order == ["a+", "c+", "c-", "a-", "b+", "b-"]
    assert not locks.busy(INSTANCE) and not locks.busy(other)
