"""The domain XML builder: round trips, libvirt acceptance, and hostile user text."""

from __future__ import annotations

import dataclasses
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager

import libvirt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nebula_core.contract.errors import Invalid
from nebula_node.libvirt.domain_xml import (
    NEBULA_XMLNS,
    AttachedDisk,
    GuestConsole,
    GuestCPU,
    GuestDisk,
    GuestDomain,
    GuestFeatures,
    GuestInterface,
    GuestMemballoon,
    GuestMetadata,
    GuestOS,
    GuestRng,
    GuestSerial,
    GuestSpec,
    GuestSysinfo,
    InvalidGuest,
    KernelBoot,
    MalformedDomainXML,
    UnrepresentableText,
    build_domain,
)

INSTANCE = uuid.UUID("6f1c2a52-3c1e-4a8e-9d55-0b7f5e0c9a11")
PROJECT = uuid.UUID("0e8f4b9a-51d2-4c36-8b8e-6a3f0d2c7e44")
SEED = f"ds=nocloud-net;s=http://10.0.2.2:8775/nocloud/{INSTANCE}/Zk9vYmFy-token/"
NS = {"nebula": NEBULA_XMLNS}


def kernel_spec(**changes: object) -> GuestSpec:
    """The nebula-tiny shape: direct kernel boot, a data disk, user networking."""
    spec = GuestSpec(
        instance_id=INSTANCE,
        project_id=PROJECT,
        name="web-1",
        description="the front end",
        tags={"env": "prod", "team": "web"},
        vcpus=2,
        ram_mb=512,
        domain_type="qemu",
        kernel=KernelBoot(
            kernel="/var/lib/nebula/images/k", initrd="/var/lib/nebula/images/i", cmdline="console=ttyS0"
        ),
        disks=(AttachedDisk(path=f"/var/lib/nebula/instances/{INSTANCE}/disk.qcow2"),),
        seed=SEED,
        console_log=f"/var/lib/nebula/instances/{INSTANCE}/console.log",
    )
    return dataclasses.replace(spec, **changes)


def disk_spec(**changes: object) -> GuestSpec:
    """A cloud image: boots its qcow2 overlay, on a named libvirt network with a fixed MAC."""
    spec = kernel_spec(
        kernel=None,
        disks=(AttachedDisk(path="/srv/root.qcow2"), AttachedDisk(path="/srv/swap.img", format="raw")),
        network="nebula-net",
        mac="52:54:00:12:34:56",
        machine="pc",
        emulator="/usr/bin/qemu-system-x86_64",
        domain_type="kvm",
    )
    return dataclasses.replace(spec, **changes)


def tree(domain: GuestDomain) -> ET.Element:
    return ET.fromstring(domain.to_xml())


def shape(el: ET.Element, path: str = "") -> Iterator[tuple[str, tuple[str, ...]]]:
    """Every element's path and attribute names, in document order: the structure."""
    here = f"{path}/{el.tag}"
    yield here, tuple(sorted(el.attrib))
    for child in el:
        yield from shape(child, here)


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    connection = libvirt.open("test:///default")
    yield connection
    connection.close()


@contextmanager
def defined(conn: libvirt.virConnect, domain: GuestDomain) -> Iterator[libvirt.virDomain]:
    dom = conn.defineXML(domain.to_xml())
    try:
        yield dom
    finally:
        dom.undefine()


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [kernel_spec(), disk_spec()], ids=["direct-kernel+user", "disk+network"])
def test_built_domain_survives_xml_round_trip(spec: GuestSpec) -> None:
    domain = build_domain(spec)
    assert GuestDomain.from_xml(domain.to_xml()) == domain


@pytest.mark.parametrize(
    "element",
    [
        GuestMetadata(project_id=PROJECT, name="n", tags={}),
        GuestMetadata(project_id=PROJECT, name="", tags={"a": "", "": "b"}),
        GuestOS(machine="q35", boot_devs=("hd", "network"), smbios_mode="sysinfo"),
        GuestOS(kernel="/k", cmdline=""),
        GuestSysinfo(system={"serial": SEED, "manufacturer": "Nebula"}),
        GuestFeatures(acpi=False),
        GuestCPU(mode="host-model"),
        GuestDisk(source_path="/a b/ç.img", target_dev="vdb", driver_type="raw", device="cdrom", target_bus="sata"),
        GuestInterface(type="network", source_network="n", model="e1000", mac="52:54:00:AB:cd:ef"),
        GuestSerial(log_file="/log", log_append=True, target_port=1),
        GuestSerial(),
        GuestConsole(target_port=1),
        GuestMemballoon(model="none"),
        GuestRng(backend_path="/dev/random"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_element_parses_back_to_itself(element) -> None:
    assert type(element).parse_dom(element.format_dom()) == element


def test_same_spec_gives_the_same_xml_so_redefining_is_harmless() -> None:
    assert build_domain(disk_spec()).to_xml() == build_domain(disk_spec()).to_xml()


def test_lists_given_for_tuples_compare_equal_after_round_trip() -> None:
    domain = build_domain(kernel_spec())
    as_list = dataclasses.replace(domain, devices=list(domain.devices))
    assert as_list == domain == GuestDomain.from_xml(as_list.to_xml())


# --- what a Nebula guest looks like ------------------------------------------------------


def test_domain_is_named_by_instance_id_and_titled_by_the_users_name() -> None:
    root = tree(build_domain(kernel_spec()))
    assert root.findtext("name") == root.findtext("uuid") == str(INSTANCE)
    assert root.findtext("title") == "web-1"
    assert root.findtext("description") == "the front end"
    assert root.find("memory").attrib == {"unit": "MiB"} and root.findtext("memory") == "512"
    assert root.findtext("vcpu") == "2"
    assert [root.findtext(e) for e in ("on_poweroff", "on_reboot", "on_crash")] == [
        "destroy",
        "restart",
        "destroy",
    ]
    assert [f.tag for f in root.find("features")] == ["acpi", "apic"]


def test_metadata_carries_project_exact_name_and_tags_in_nebula_namespace() -> None:
    root = tree(build_domain(kernel_spec()))
    instance = root.find("metadata/nebula:instance", NS)
    assert instance.findtext("nebula:project", namespaces=NS) == str(PROJECT)
    assert instance.findtext("nebula:name", namespaces=NS) == "web-1"
    tags = {t.get("key"): t.text for t in instance.findall("nebula:tags/nebula:tag", NS)}
    assert tags == {"env": "prod", "team": "web"}


def test_seed_is_the_smbios_system_serial_and_exposed_to_the_guest() -> None:
    root = tree(build_domain(kernel_spec()))
    assert root.find("sysinfo").get("type") == "smbios"
    assert root.findtext("sysinfo/system/entry[@name='serial']") == SEED
    assert root.find("os/smbios").get("mode") == "sysinfo"


def test_without_seed_there_is_no_sysinfo() -> None:
    root = tree(build_domain(kernel_spec(seed=None)))
    assert root.find("sysinfo") is None and root.find("os/smbios") is None


def test_direct_kernel_boot_loads_kernel_initrd_cmdline_and_no_boot_device() -> None:
    os_el = tree(build_domain(kernel_spec())).find("os")
    assert os_el.find("type").attrib == {"arch": "x86_64"} and os_el.findtext("type") == "hvm"
    assert os_el.findtext("kernel") == "/var/lib/nebula/images/k"
    assert os_el.findtext("initrd") == "/var/lib/nebula/images/i"
    assert os_el.findtext("cmdline") == "console=ttyS0"
    assert os_el.find("boot") is None


def test_disk_boot_boots_hd_and_names_disks_vda_vdb_in_order() -> None:
    root = tree(build_domain(disk_spec()))
    assert root.find("os/kernel") is None and root.find("os/boot").get("dev") == "hd"
    assert root.find("os/type").get("machine") == "pc"
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    disks = root.findall("devices/disk")
    assert [
        (d.find("source").get("file"), d.find("driver").get("type"), d.find("target").get("dev")) for d in disks
    ] == [
        ("/srv/root.qcow2", "qcow2", "vda"),
        ("/srv/swap.img", "raw", "vdb"),
    ]
    assert all(d.attrib == {"type": "file", "device": "disk"} for d in disks)
    assert all(d.find("target").get("bus") == "virtio" and d.find("driver").get("name") == "qemu" for d in disks)


def test_user_networking_is_the_default_interface() -> None:
    (iface,) = tree(build_domain(kernel_spec())).findall("devices/interface")
    assert iface.get("type") == "user" and iface.find("source") is None and iface.find("mac") is None
    assert iface.find("model").get("type") == "virtio"


def test_named_network_interface_has_source_and_mac() -> None:
    (iface,) = tree(build_domain(disk_spec())).findall("devices/interface")
    assert iface.get("type") == "network"
    assert iface.find("source").get("network") == "nebula-net"
    assert iface.find("mac").get("address") == "52:54:00:12:34:56"


def test_serial_console_is_a_pty_logged_to_the_console_file() -> None:
    devices = tree(build_domain(kernel_spec())).find("devices")
    serial = devices.find("serial")
    assert serial.get("type") == "pty"
    assert serial.find("log").attrib == {
        "file": f"/var/lib/nebula/instances/{INSTANCE}/console.log",
        "append": "off",
    }
    assert serial.find("target").get("port") == "0"
    console = devices.find("console")
    assert console.get("type") == "pty" and console.find("target").attrib == {"type": "serial", "port": "0"}


def test_memballoon_and_rng_are_on_by_default_and_can_be_left_out() -> None:
    devices = tree(build_domain(kernel_spec())).find("devices")
    assert devices.find("memballoon").get("model") == "virtio"
    assert devices.find("rng").get("model") == "virtio"
    assert devices.find("rng/backend").attrib == {"model": "random"}
    assert devices.findtext("rng/backend") == "/dev/urandom"
    bare = tree(build_domain(kernel_spec(memballoon=False, rng=False))).find("devices")
    assert bare.find("memballoon") is None and bare.find("rng") is None


@pytest.mark.parametrize("domain_type", ["kvm", "qemu"])
def test_host_cpu_is_passed_through_only_under_kvm(domain_type: str) -> None:
    root = tree(build_domain(kernel_spec(domain_type=domain_type)))
    assert root.get("type") == domain_type
    if domain_type == "kvm":
        assert root.find("cpu").attrib == {"mode": "host-passthrough"}
    else:
        assert root.find("cpu") is None


def test_title_is_the_name_on_one_line_while_metadata_keeps_it_exactly() -> None:
    domain = build_domain(kernel_spec(name="two\nlines\r\nand\rthree"))
    assert domain.title == "two lines and three"
    assert domain.metadata.name == "two\nlines\r\nand\rthree"


def test_empty_description_leaves_out_the_element() -> None:
    assert tree(build_domain(kernel_spec(description=""))).find("description") is None


# --- libvirt accepts it ------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [kernel_spec(), disk_spec(), kernel_spec(domain_type="kvm")],
    ids=["kernel-qemu", "disk-kvm", "kernel-kvm"],
)
def test_libvirt_test_driver_defines_the_domain(conn, spec: GuestSpec) -> None:
    with defined(conn, build_domain(spec)) as dom:
        desc = dom.XMLDesc()
        assert dom.UUIDString() == str(INSTANCE)
        assert str(INSTANCE) in desc
        assert ET.fromstring(desc).findtext("sysinfo/system/entry[@name='serial']") == SEED


@pytest.mark.parametrize("spec", [kernel_spec(), disk_spec()], ids=["direct-kernel+user", "disk+network"])
def test_libvirt_output_reads_back_as_what_we_wrote(conn, spec: GuestSpec) -> None:
    """libvirt adds what it defaults (a MAC, `<boot dev='hd'/>`, memory in KiB, `<clock>`…);
    everything we set comes back unchanged."""
    domain = build_domain(spec)
    with defined(conn, domain) as dom:
        back = GuestDomain.from_xml(dom.XMLDesc())
    for f in dataclasses.fields(GuestDomain):
        if f.name not in ("os", "devices"):
            assert getattr(back, f.name) == getattr(domain, f.name), f.name
    assert dataclasses.replace(back.os, boot_devs=domain.os.boot_devs) == domain.os
    if spec.mac is None:
        back = dataclasses.replace(
            back,
            devices=tuple(
                dataclasses.replace(d, mac=None) if isinstance(d, GuestInterface) else d for d in back.devices
            ),
        )
    assert back.devices == domain.devices


# What libvirt 9.0's QEMU driver (qemu:///system on Debian 12, TCG) returned for a running
# `build_domain(kernel_spec())`: captured by starting it for real, with the host paths of
# kernel, initrd, disk and console log written back as the spec has them.
QEMU_DRIVER_XML = """\
<domain type='qemu' id='25'>
  <name>6f1c2a52-3c1e-4a8e-9d55-0b7f5e0c9a11</name>
  <uuid>6f1c2a52-3c1e-4a8e-9d55-0b7f5e0c9a11</uuid>
  <title>web-1</title>
  <description>the front end</description>
  <metadata xmlns:nebula="https://nebula.dev/xmlns/instance/1">
    <nebula:instance>
      <nebula:project>0e8f4b9a-51d2-4c36-8b8e-6a3f0d2c7e44</nebula:project>
      <nebula:name>web-1</nebula:name>
      <nebula:tags>
        <nebula:tag key="env">prod</nebula:tag>
        <nebula:tag key="team">web</nebula:tag>
      </nebula:tags>
    </nebula:instance>
  </metadata>
  <memory unit='KiB'>524288</memory>
  <currentMemory unit='KiB'>524288</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource>
    <partition>/machine</partition>
  </resource>
  <sysinfo type='smbios'>
    <system>
      <entry name='serial'>ds=nocloud-net;s=http://10.0.2.2:8775/nocloud/6f1c2a52-3c1e-4a8e-9d55-0b7f5e0c9a11/Zk9vYmFy-token/</entry>
    </system>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/var/lib/nebula/images/k</kernel>
    <initrd>/var/lib/nebula/images/i</initrd>
    <cmdline>console=ttyS0</cmdline>
    <boot dev='hd'/>
    <smbios mode='sysinfo'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>qemu64</model>
    <feature policy='require' name='hypervisor'/>
    <feature policy='require' name='lahf_lm'/>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/nebula/instances/6f1c2a52-3c1e-4a8e-9d55-0b7f5e0c9a11/disk.qcow2' index='1'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </disk>
    <controller type='usb' index='0' model='piix3-uhci'>
      <alias name='usb'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/>
    </controller>
    <controller type='pci' index='0' model='pci-root'>
      <alias name='pci.0'/>
    </controller>
    <interface type='user'>
      <mac address='52:54:00:c2:13:e2'/>
      <model type='virtio'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </interface>
    <serial type='pty'>
      <source path='/dev/pts/0'/>
      <log file='/var/lib/nebula/instances/6f1c2a52-3c1e-4a8e-9d55-0b7f5e0c9a11/console.log' append='off'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
      <alias name='serial0'/>
    </serial>
    <console type='pty' tty='/dev/pts/0'>
      <source path='/dev/pts/0'/>
      <log file='/var/lib/nebula/instances/6f1c2a52-3c1e-4a8e-9d55-0b7f5e0c9a11/console.log' append='off'/>
      <target type='serial' port='0'/>
      <alias name='serial0'/>
    </console>
    <input type='mouse' bus='ps2'>
      <alias name='input0'/>
    </input>
    <input type='keyboard' bus='ps2'>
      <alias name='input1'/>
    </input>
    <audio id='1' type='none'/>
    <memballoon model='virtio'>
      <alias name='balloon0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </memballoon>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
      <alias name='rng0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </rng>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+999:+994</label>
    <imagelabel>+999:+994</imagelabel>
  </seclabel>
</domain>
"""


def test_qemu_driver_output_reads_back_as_what_we_wrote_plus_its_defaults() -> None:
    """The QEMU driver fills in a machine type, `<boot dev='hd'/>`, a CPU model for TCG, the
    emulator and a MAC, and adds devices we do not model; all we set comes back unchanged."""
    domain = build_domain(kernel_spec())
    back = GuestDomain.from_xml(QEMU_DRIVER_XML)
    assert back.os == dataclasses.replace(domain.os, machine="pc-i440fx-7.2", boot_devs=("hd",))
    assert back.cpu == GuestCPU(mode="custom")
    assert back.emulator == "/usr/bin/qemu-system-x86_64"
    assert [d.mac for d in back.devices_of(GuestInterface)] == ["52:54:00:c2:13:e2"]
    without_defaults = dataclasses.replace(
        back,
        os=domain.os,
        cpu=None,
        emulator=None,
        devices=tuple(dataclasses.replace(d, mac=None) if isinstance(d, GuestInterface) else d for d in back.devices),
    )
    assert without_defaults == domain


# --- hostile and unrepresentable text ----------------------------------------------------


def is_xml_char(c: str) -> bool:
    """XML 1.0 `Char` production, written from the spec rather than from the module."""
    o = ord(c)
    return o in (0x9, 0xA, 0xD) or 0x20 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or o >= 0x10000


HOSTILE = [
    "<", ">", "&", "'", '"', "]]>", "<![CDATA[", "</domain>", "</description><devices><disk/>",
    "&amp;", "&#0;", "&lt;", "<!--", "-->", "<?xml version='1.0'?>", 'xmlns:x="y"', "\r", "\r\n",
    "\n", "\t", " ", "\x85", "\u2028", "\ufffd", "\U0001f600", "<nebula:tag key='x'>",
]  # fmt: skip
xml_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE), st.text(st.characters(exclude_categories=("Cs",)).filter(is_xml_char))),
    max_size=8,
).map("".join)
nonempty_xml_text = xml_text.filter(bool)
tag_dicts = st.dictionaries(xml_text, xml_text, max_size=5)

UNREPRESENTABLE = [chr(o) for o in range(0x20) if o not in (0x9, 0xA, 0xD)] + [
    "\ufffe",
    "\uffff",
    "\ud800",
    "\udfff",
]


def plain_twin(spec: GuestSpec) -> GuestSpec:
    """The same spec with harmless text of the same emptiness and the same number of tags."""
    return dataclasses.replace(
        spec,
        name="n",
        description="d" if spec.description else "",
        tags={f"k{i}": f"v{i}" for i in range(len(spec.tags))},
    )


@given(name=nonempty_xml_text, description=xml_text, tags=tag_dicts)
def test_hostile_text_cannot_change_the_element_tree(name: str, description: str, tags: dict[str, str]) -> None:
    spec = kernel_spec(name=name, description=description, tags=tags)
    hostile, plain = build_domain(spec), build_domain(plain_twin(spec))
    assert list(shape(tree(hostile))) == list(shape(tree(plain)))


@given(name=nonempty_xml_text, description=xml_text, tags=tag_dicts)
def test_hostile_text_round_trips_exactly(name: str, description: str, tags: dict[str, str]) -> None:
    domain = build_domain(kernel_spec(name=name, description=description, tags=tags))
    root = tree(domain)
    assert (root.findtext("description") or "") == description
    assert root.findtext("metadata/nebula:instance/nebula:name", namespaces=NS) == name
    assert {
        t.get("key"): t.text or "" for t in root.iterfind("metadata/nebula:instance/nebula:tags/nebula:tag", NS)
    } == tags
    assert GuestDomain.from_xml(domain.to_xml()) == domain


def test_hostile_description_cannot_add_elements() -> None:
    evil = (
        "</description></metadata><cpu mode='host-passthrough'/>"
        "<devices><disk type='file'><source file='/etc/shadow'/></disk>"
    )
    domain = build_domain(kernel_spec(description=evil, name="x</title><on_crash>restart</on_crash>"))
    root = tree(domain)
    assert root.findtext("description") == evil
    assert root.find("cpu") is None
    assert len(root.findall("devices/disk")) == 1 and len(root.findall(".//source[@file='/etc/shadow']")) == 0
    assert root.findall("on_crash")[0].text == "destroy" and len(root.findall("on_crash")) == 1


def test_carriage_returns_survive_as_character_references() -> None:
    domain = build_domain(kernel_spec(description="a\rb\r\nc", tags={"k\r": "v\r\n"}))
    assert "&#13;" in domain.to_xml()
    assert GuestDomain.from_xml(domain.to_xml()) == domain


@settings(max_examples=50, deadline=None)
@given(name=nonempty_xml_text, description=xml_text, tags=tag_dicts)
def test_libvirt_keeps_hostile_metadata_verbatim(conn, name: str, description: str, tags: dict[str, str]) -> None:
    """libvirt writes a CR inside `<description>` literally, so there (only) a reader sees
    CR and CRLF as LF; `<metadata>` comes back exactly."""
    domain = build_domain(kernel_spec(name=name, description=description, tags=tags))
    with defined(conn, domain) as dom:
        back = GuestDomain.from_xml(dom.XMLDesc())
    assert back.metadata == domain.metadata
    assert back.title == domain.title
    assert (back.description or "") == re.sub(r"\r\n?", "\n", description)


@given(
    field=st.sampled_from(["name", "description", "tag key", "tag value"]),
    before=xml_text,
    bad=st.sampled_from(UNREPRESENTABLE),
    after=xml_text,
)
def test_text_xml_cannot_carry_is_rejected_naming_the_field(field: str, before: str, bad: str, after: str) -> None:
    text = before + bad + after
    changes, path = {
        "name": ({"name": text}, "$.name"),
        "description": ({"description": text}, "$.description"),
        "tag key": ({"tags": {text: "v"}}, "$.tags"),
        "tag value": ({"tags": {"k": text}}, "$.tags"),
    }[field]
    with pytest.raises(UnrepresentableText) as caught:
        kernel_spec(**changes)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, Invalid)
    assert caught.value.code == "invalid" and caught.value.http_status == 422
    assert caught.value.fields == [path]


@pytest.mark.parametrize("bad", UNREPRESENTABLE, ids=lambda c: f"U+{ord(c):04X}")
def test_elements_refuse_text_xml_cannot_carry(bad: str) -> None:
    with pytest.raises(UnrepresentableText):
        GuestDisk(source_path=f"/a{bad}", target_dev="vda")
    with pytest.raises(UnrepresentableText):
        GuestMetadata(project_id=PROJECT, name="n", tags={"k": bad})


# --- invalid guests and malformed XML ----------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: GuestInterface(type="network"),
        lambda: GuestInterface(type="user", source_network="default"),
        lambda: GuestInterface(mac="52:54:00:12:34"),
        lambda: dataclasses.replace(build_domain(kernel_spec()), title="two\nlines"),
        lambda: dataclasses.replace(build_domain(kernel_spec()), vcpus=0),
        lambda: dataclasses.replace(build_domain(kernel_spec()), name=""),
        lambda: kernel_spec(kernel=None, disks=()),
        lambda: kernel_spec(disks=tuple(AttachedDisk(path=f"/d{i}") for i in range(27))),
    ],
    ids=[
        "network-without-source",
        "user-with-source",
        "bad-mac",
        "title-newline",
        "no-vcpu",
        "no-name",
        "disk-boot-no-disk",
        "27-disks",
    ],
)
def test_guests_libvirt_would_refuse_are_invalid(make) -> None:
    with pytest.raises(InvalidGuest):
        make()


def minimal_xml(
    uuid_el: str = f"<uuid>{INSTANCE}</uuid>", memory: str = "<memory>1024</memory>", vcpu: str = "1"
) -> str:
    """The smallest domain libvirt could hand back, with one part swapped out."""
    os_el = "<os><type arch='x86_64'>hvm</type></os>"
    return f"<domain type='qemu'><name>x</name>{uuid_el}{memory}<vcpu>{vcpu}</vcpu>{os_el}</domain>"


@pytest.mark.parametrize(
    "xml",
    [
        "not xml at all",
        "<network><name>x</name></network>",
        minimal_xml(uuid_el=""),
        minimal_xml(uuid_el="<uuid>nope</uuid>"),
        minimal_xml(memory="<memory unit='parsec'>1</memory>"),
        minimal_xml(memory="<memory>1000</memory>"),
        minimal_xml(vcpu="many"),
    ],
    ids=["not-xml", "not-a-domain", "no-uuid", "bad-uuid", "unknown-unit", "fractional-mib", "bad-vcpu"],
)
def test_malformed_domain_xml_is_refused(xml: str) -> None:
    with pytest.raises(MalformedDomainXML):
        GuestDomain.from_xml(xml)


@pytest.mark.parametrize(
    ("memory", "mib"),
    [
        ("<memory>262144</memory>", 256),
        ("<memory unit='KiB'>262144</memory>", 256),
        ("<memory unit='GiB'>2</memory>", 2048),
        ("<memory unit='b'>1048576</memory>", 1),
    ],
)
def test_memory_in_any_libvirt_unit_reads_as_mib(memory: str, mib: int) -> None:
    domain = GuestDomain.from_xml(minimal_xml(memory=memory))
    assert domain.memory_mib == mib
    assert domain.metadata is None and domain.devices == () and domain.cpu is None
