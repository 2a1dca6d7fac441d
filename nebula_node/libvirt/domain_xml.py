"""The libvirt domain XML of a Nebula guest, as typed objects.

Modelled on Nova's ``nova/virt/libvirt/config.py``: every libvirt element Nebula uses is
one small frozen dataclass with ``format_dom()`` (object -> ElementTree element) and
``parse_dom()`` (element -> object). `GuestDomain.to_xml()` / `GuestDomain.from_xml()`
sit on top, and `build_domain()` composes a whole guest from a `GuestSpec`. The module
does no I/O: probing /dev/kvm (`kvm`), making disks (`media`) and talking to libvirt
(`driver`) happen beside it, and the driver composes these objects, never formatting XML.

Guarantees:

* Structure comes only from this module. Element and attribute names are literals in the
  code; every value - above all user text (instance name, description, tags) - is placed by
  ElementTree into a text node or an attribute value, so no input can add, remove or
  rename an element or attribute.
* Exact round trip: ``GuestDomain.from_xml(d.to_xml()) == d`` for every domain that can be
  constructed, whatever its strings hold (``<``, ``&``, quotes, ``]]>``, TAB, LF and CR
  included).
* Text that XML 1.0 cannot carry is refused, never altered: constructing an element or a
  `GuestSpec` with a string holding a C0 control other than TAB/LF/CR, U+FFFE, U+FFFF or a
  lone surrogate raises `UnrepresentableText` (an `Invalid`, hence 422 / ``invalid``).
* Reading is lenient, like Nova's: elements and attributes we do not model (libvirt adds
  ``<clock>``, ``<currentMemory>``, device addresses, ...) are ignored, and memory in any
  libvirt unit is read as MiB, so ``virDomainGetXMLDesc`` output parses. (libvirt itself
  writes a CR in ``<title>``/``<description>`` literally, so after a trip through libvirt
  those read CR and CRLF as LF; ``<metadata>``, which holds the exact name and tags,
  comes back byte for byte.)
"""

from __future__ import annotations

import builtins
import dataclasses
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Self, TypeVar

from nebula_core.contract.errors import Invalid, NebulaError

DomainType = Literal["kvm", "qemu"]
DiskFormat = Literal["qcow2", "raw"]

#: The namespace of Nebula's element under ``<metadata>`` (libvirt requires one).
NEBULA_XMLNS = "https://nebula.dev/xmlns/instance/1"
ET.register_namespace("nebula", NEBULA_XMLNS)  # only so the prefix reads "nebula:", not "ns0:"

# XML 1.0 `Char`: https://www.w3.org/TR/xml/#charsets
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_BYTES_PER_UNIT = {
    "b": 1, "bytes": 1,
    "KB": 10**3, "k": 2**10, "KiB": 2**10,
    "MB": 10**6, "M": 2**20, "MiB": 2**20,
    "GB": 10**9, "G": 2**30, "GiB": 2**30,
    "TB": 10**12, "T": 2**40, "TiB": 2**40,
}  # fmt: skip


# --- errors ------------------------------------------------------------------------------


class InvalidGuest(Invalid, ValueError):
    """A guest that libvirt would refuse (or that XML could not carry)."""


class UnrepresentableText(InvalidGuest):
    """A string holds a character XML 1.0 cannot represent; `fields` names the field."""


class MalformedDomainXML(NebulaError, ValueError):
    """The XML is not a domain this module can read."""


def check_xml_text(value: str, field_name: str) -> str:
    """Return `value` if XML 1.0 can carry it, else raise `UnrepresentableText`."""
    bad = _NOT_XML_CHAR.search(value)
    if bad is not None:
        raise UnrepresentableText(
            f"{field_name} holds {bad.group()!r} at offset {bad.start()}, which XML 1.0 cannot represent",
            [f"$.{field_name}"],
        )
    return value


def _check_strings(obj: object) -> None:
    """Check every string of a dataclass's fields (in dicts and sequences too);
    lists become tuples so that equality does not depend on the container used."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if isinstance(value, list):
            value = tuple(value)
            object.__setattr__(obj, f.name, value)
        if isinstance(value, str):
            check_xml_text(value, f.name)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                check_xml_text(k, f.name)
                check_xml_text(v, f.name)
        elif isinstance(value, tuple):
            for item in value:
                if isinstance(item, str):
                    check_xml_text(item, f.name)


# --- element tree helpers ----------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None, /, **attrib: str | None) -> ET.Element:
    """Append `<tag>` with `text` and the attributes that are not None."""
    el = ET.SubElement(parent, tag, {k: v for k, v in attrib.items() if v is not None})
    el.text = text
    return el


def _find(el: ET.Element, tag: str) -> ET.Element:
    child = el.find(tag)
    if child is None:
        raise MalformedDomainXML(f"<{el.tag}> has no <{tag}>")
    return child


def _text(el: ET.Element, tag: str) -> str | None:
    """The text of child `<tag>` ("" when empty), or None when there is no such child."""
    child = el.find(tag)
    return None if child is None else child.text or ""


def _attr(el: ET.Element, name: str) -> str:
    value = el.get(name)
    if value is None:
        raise MalformedDomainXML(f"<{el.tag}> has no {name}=")
    return value


def _int(text: str | None, what: str) -> int:
    try:
        return int(text or "")
    except ValueError:
        raise MalformedDomainXML(f"{what} is not an integer: {text!r}") from None


# --- elements ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GuestElement:
    """One libvirt XML element. Subclasses set `TAG` and implement `format_dom`/`_parse`."""

    TAG: ClassVar[str]

    def __post_init__(self) -> None:
        _check_strings(self)

    def format_dom(self) -> ET.Element:
        raise NotImplementedError

    @classmethod
    def parse_dom(cls, el: ET.Element) -> Self:
        if el.tag != cls.TAG:
            raise MalformedDomainXML(f"expected <{cls.TAG}>, found <{el.tag}>")
        return cls._parse(el)

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        raise NotImplementedError


def _q(name: str) -> str:
    return f"{{{NEBULA_XMLNS}}}{name}"


@dataclass(frozen=True, kw_only=True)
class GuestMetadata(GuestElement):
    """``<nebula:instance>`` under ``<metadata>``: what Nebula knows about the guest."""

    TAG = _q("instance")
    project_id: uuid.UUID
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    #: The node agent that made the domain: its node id and the directory of its
    #: instances' disks. An agent touches only domains that name it, never those of
    #: another Nebula (a second cloud or a test run on the same host) or of other tools.
    owner_node: str = ""
    owner_home: str = ""

    def format_dom(self) -> ET.Element:
        el = ET.Element(self.TAG)
        if self.owner_node:
            _sub(el, _q("owner"), node=self.owner_node, home=self.owner_home)
        _sub(el, _q("project"), str(self.project_id))
        _sub(el, _q("name"), self.name)
        tags = _sub(el, _q("tags"))
        for key, value in self.tags.items():
            _sub(tags, _q("tag"), value, key=key)
        return el

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        try:
            project_id = uuid.UUID(_find(el, _q("project")).text or "")
        except ValueError:
            raise MalformedDomainXML("nebula:project is not a UUID") from None
        tags = el.find(_q("tags"))
        owner = el.find(_q("owner"))
        return cls(
            project_id=project_id,
            name=_find(el, _q("name")).text or "",
            tags={} if tags is None else {_attr(t, "key"): t.text or "" for t in tags.findall(_q("tag"))},
            owner_node="" if owner is None else owner.get("node", ""),
            owner_home="" if owner is None else owner.get("home", ""),
        )


def metadata_owner(xml: str) -> tuple[str, str] | None:
    """(node, home) of ``<nebula:owner>`` in Nebula's metadata element as libvirt's
    ``virDomainGetMetadata`` returns it (without the namespace); None if it names none."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    owner = next((el for el in root if el.tag.rpartition("}")[2] == "owner"), None)
    if owner is None or not owner.get("node"):
        return None
    return owner.get("node", ""), owner.get("home", "")


@dataclass(frozen=True, kw_only=True)
class GuestOS(GuestElement):
    """``<os>``: direct kernel boot (`kernel`, `initrd`, `cmdline`) or `boot_devs`."""

    TAG = "os"
    type: str = "hvm"
    arch: str = "x86_64"
    machine: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot_devs: tuple[str, ...] = ()
    #: "sysinfo" exposes the domain's `<sysinfo>` to the guest as its SMBIOS tables.
    smbios_mode: str | None = None

    def format_dom(self) -> ET.Element:
        el = ET.Element(self.TAG)
        _sub(el, "type", self.type, arch=self.arch, machine=self.machine)
        for tag in ("kernel", "initrd", "cmdline"):
            if (value := getattr(self, tag)) is not None:
                _sub(el, tag, value)
        for dev in self.boot_devs:
            _sub(el, "boot", dev=dev)
        if self.smbios_mode is not None:
            _sub(el, "smbios", mode=self.smbios_mode)
        return el

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        type_el = _find(el, "type")
        smbios = el.find("smbios")
        return cls(
            type=type_el.text or "",
            arch=_attr(type_el, "arch"),
            machine=type_el.get("machine"),
            kernel=_text(el, "kernel"),
            initrd=_text(el, "initrd"),
            cmdline=_text(el, "cmdline"),
            boot_devs=tuple(_attr(b, "dev") for b in el.findall("boot")),
            smbios_mode=None if smbios is None else _attr(smbios, "mode"),
        )


@dataclass(frozen=True, kw_only=True)
class GuestSysinfo(GuestElement):
    """``<sysinfo type='smbios'>``; `system` maps entry names (e.g. "serial") to values."""

    TAG = "sysinfo"
    type: str = "smbios"
    system: dict[str, str] = field(default_factory=dict)

    def format_dom(self) -> ET.Element:
        el = ET.Element(self.TAG, type=self.type)
        system = _sub(el, "system")
        for name, value in self.system.items():
            _sub(system, "entry", value, name=name)
        return el

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        entries = el.findall("system/entry")
        return cls(type=_attr(el, "type"), system={_attr(e, "name"): e.text or "" for e in entries})


@dataclass(frozen=True, kw_only=True)
class GuestFeatures(GuestElement):
    """``<features>``: the hypervisor features Nebula turns on."""

    TAG = "features"
    acpi: bool = True
    apic: bool = True

    def format_dom(self) -> ET.Element:
        el = ET.Element(self.TAG)
        for name in ("acpi", "apic"):
            if getattr(self, name):
                _sub(el, name)
        return el

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        return cls(acpi=el.find("acpi") is not None, apic=el.find("apic") is not None)


@dataclass(frozen=True, kw_only=True)
class GuestCPU(GuestElement):
    """``<cpu mode=...>``; host-passthrough needs KVM (QEMU's TCG cannot emulate "host")."""

    TAG = "cpu"
    mode: str = "host-passthrough"

    def format_dom(self) -> ET.Element:
        return ET.Element(self.TAG, mode=self.mode)

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        return cls(mode=_attr(el, "mode"))


@dataclass(frozen=True, kw_only=True)
class GuestDevice(GuestElement):
    """An element under ``<devices>``."""


@dataclass(frozen=True, kw_only=True)
class GuestDisk(GuestDevice):
    """``<disk type='file'>``: a disk image file attached on `target_bus`."""

    TAG = "disk"
    source_path: str
    target_dev: str
    target_bus: str = "virtio"
    driver_name: str = "qemu"
    driver_type: DiskFormat = "qcow2"
    device: str = "disk"

    def format_dom(self) -> ET.Element:
        el = ET.Element(self.TAG, type="file", device=self.device)
        _sub(el, "driver", name=self.driver_name, type=self.driver_type)
        _sub(el, "source", file=self.source_path)
        _sub(el, "target", dev=self.target_dev, bus=self.target_bus)
        return el

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        if el.get("type") != "file":
            raise MalformedDomainXML(f"only file disks are modelled, not type={el.get('type')!r}")
        driver, target = _find(el, "driver"), _find(el, "target")
        return cls(
            source_path=_attr(_find(el, "source"), "file"),
            target_dev=_attr(target, "dev"),
            target_bus=_attr(target, "bus"),
            driver_name=_attr(driver, "name"),
            driver_type=_attr(driver, "type"),  # type: ignore[arg-type]
            device=_attr(el, "device"),
        )


@dataclass(frozen=True, kw_only=True)
class GuestInterface(GuestDevice):
    """``<interface>``: QEMU user-mode networking, or a port on libvirt network
    `source_network`. Without a `mac`, libvirt generates one. `nic_filter` names the
    nwfilter on the port (``<filterref>``), with `filter_ip` as its ``IP`` parameter."""

    TAG = "interface"
    type: Literal["user", "network"] = "user"
    source_network: str | None = None
    model: str = "virtio"
    mac: str | None = None
    nic_filter: str | None = None
    filter_ip: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.type == "network") != (self.source_network is not None):
            raise InvalidGuest("a network interface, and only that, names a source network")
        if self.mac is not None and not _MAC.fullmatch(self.mac):
            raise InvalidGuest(f"not a MAC address: {self.mac!r}", ["$.mac"])

    def format_dom(self) -> ET.Element:
        el = ET.Element(self.TAG, type=self.type)
        if self.mac is not None:
            _sub(el, "mac", address=self.mac)
        if self.source_network is not None:
            _sub(el, "source", network=self.source_network)
        _sub(el, "model", type=self.model)
        if self.nic_filter is not None:
            ref = _sub(el, "filterref", filter=self.nic_filter)
            if self.filter_ip is not None:
                _sub(ref, "parameter", name="IP", value=self.filter_ip)
        return el

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        mac, source, ref = el.find("mac"), el.find("source"), el.find("filterref")
        ip = None if ref is None else ref.find("parameter[@name='IP']")
        return cls(
            type=_attr(el, "type"),  # type: ignore[arg-type]
            source_network=None if source is None else _attr(source, "network"),
            model=_attr(_find(el, "model"), "type"),
            mac=None if mac is None else _attr(mac, "address"),
            nic_filter=None if ref is None else _attr(ref, "filter"),
            filter_ip=None if ip is None else _attr(ip, "value"),
        )


@dataclass(frozen=True, kw_only=True)
class GuestSerial(GuestDevice):
    """``<serial type='pty'>``; with `log_file`, libvirt also copies the output there,
    so ``virsh console`` keeps working while the log captures the boot."""

    TAG = "serial"
    type: str = "pty"
    log_file: str | None = None
    log_append: bool = False
    target_port: int = 0

    def format_dom(self) -> ET.Element:
        el = ET.Element(self.TAG, type=self.type)
        if self.log_file is not None:
            _sub(el, "log", file=self.log_file, append="on" if self.log_append else "off")
        _sub(el, "target", port=str(self.target_port))
        return el

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        log = el.find("log")
        return cls(
            type=_attr(el, "type"),
            log_file=None if log is None else _attr(log, "file"),
            log_append=log is not None and log.get("append") == "on",
            target_port=_int(_attr(_find(el, "target"), "port"), "serial port"),
        )


@dataclass(frozen=True, kw_only=True)
class GuestConsole(GuestDevice):
    """``<console>``: the guest's console, here the first serial port."""

    TAG = "console"
    type: str = "pty"
    target_type: str = "serial"
    target_port: int = 0

    def format_dom(self) -> ET.Element:
        el = ET.Element(self.TAG, type=self.type)
        _sub(el, "target", type=self.target_type, port=str(self.target_port))
        return el

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        target = _find(el, "target")
        return cls(
            type=_attr(el, "type"),
            target_type=_attr(target, "type"),
            target_port=_int(_attr(target, "port"), "console port"),
        )


@dataclass(frozen=True, kw_only=True)
class GuestMemballoon(GuestDevice):
    TAG = "memballoon"
    model: str = "virtio"

    def format_dom(self) -> ET.Element:
        return ET.Element(self.TAG, model=self.model)

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        return cls(model=_attr(el, "model"))


@dataclass(frozen=True, kw_only=True)
class GuestRng(GuestDevice):
    """``<rng>``: entropy for the guest from the host's `backend_path`."""

    TAG = "rng"
    model: str = "virtio"
    backend_model: str = "random"
    backend_path: str = "/dev/urandom"

    def format_dom(self) -> ET.Element:
        el = ET.Element(self.TAG, model=self.model)
        _sub(el, "backend", self.backend_path, model=self.backend_model)
        return el

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        backend = _find(el, "backend")
        return cls(model=_attr(el, "model"), backend_model=_attr(backend, "model"), backend_path=backend.text or "")


_DEVICE_TYPES: dict[str, type[GuestDevice]] = {
    cls.TAG: cls for cls in (GuestDisk, GuestInterface, GuestSerial, GuestConsole, GuestMemballoon, GuestRng)
}
D = TypeVar("D", bound=GuestDevice)


@dataclass(frozen=True, kw_only=True)
class GuestDomain(GuestElement):
    """``<domain>``: a whole guest. `title` is one line (libvirt refuses newlines there)."""

    TAG = "domain"
    type: DomainType
    name: str
    uuid: uuid.UUID
    title: str | None = None
    description: str | None = None
    metadata: GuestMetadata | None = None
    memory_mib: int
    vcpus: int
    os: GuestOS
    sysinfo: GuestSysinfo | None = None
    features: GuestFeatures = field(default_factory=GuestFeatures)
    cpu: GuestCPU | None = None
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    emulator: str | None = None
    devices: tuple[GuestDevice, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name:
            raise InvalidGuest("a domain needs a name", ["$.name"])
        if self.title is not None and "\n" in self.title:
            raise InvalidGuest("a domain title is one line", ["$.title"])
        if self.vcpus < 1 or self.memory_mib < 1:
            raise InvalidGuest("a domain needs at least one vCPU and one MiB", ["$.vcpus", "$.ram_mb"])

    def devices_of(self, kind: builtins.type[D]) -> tuple[D, ...]:  # `type` is a field here
        """The devices of one kind, in document order (e.g. ``devices_of(GuestDisk)``)."""
        return tuple(d for d in self.devices if isinstance(d, kind))

    def format_dom(self) -> ET.Element:
        el = ET.Element(self.TAG, type=self.type)
        _sub(el, "name", self.name)
        _sub(el, "uuid", str(self.uuid))
        if self.title is not None:
            _sub(el, "title", self.title)
        if self.description is not None:
            _sub(el, "description", self.description)
        if self.metadata is not None:
            _sub(el, "metadata").append(self.metadata.format_dom())
        _sub(el, "memory", str(self.memory_mib), unit="MiB")
        _sub(el, "vcpu", str(self.vcpus))
        if self.sysinfo is not None:
            el.append(self.sysinfo.format_dom())
        el.append(self.os.format_dom())
        el.append(self.features.format_dom())
        if self.cpu is not None:
            el.append(self.cpu.format_dom())
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            _sub(el, event, getattr(self, event))
        devices = _sub(el, "devices")
        if self.emulator is not None:
            _sub(devices, "emulator", self.emulator)
        for device in self.devices:
            devices.append(device.format_dom())
        return el

    @classmethod
    def _parse(cls, el: ET.Element) -> Self:
        metadata = el.find(f"metadata/{GuestMetadata.TAG}")
        sysinfo, features_el, cpu = el.find("sysinfo"), el.find("features"), el.find("cpu")
        features = GuestFeatures(acpi=False, apic=False)
        if features_el is not None:
            features = GuestFeatures.parse_dom(features_el)
        devices = el.find("devices")
        devices = ET.Element("devices") if devices is None else devices
        try:
            domain_uuid = uuid.UUID(_find(el, "uuid").text or "")
        except ValueError:
            raise MalformedDomainXML("<uuid> is not a UUID") from None
        return cls(
            type=_attr(el, "type"),  # type: ignore[arg-type]
            name=_find(el, "name").text or "",
            uuid=domain_uuid,
            title=_text(el, "title"),
            description=_text(el, "description"),
            metadata=None if metadata is None else GuestMetadata.parse_dom(metadata),
            memory_mib=_mib(_find(el, "memory")),
            vcpus=_int(_find(el, "vcpu").text, "<vcpu>"),
            os=GuestOS.parse_dom(_find(el, "os")),
            sysinfo=None if sysinfo is None else GuestSysinfo.parse_dom(sysinfo),
            features=features,
            # A <cpu> without mode= describes a custom CPU model, which is not modelled here.
            cpu=None if cpu is None or cpu.get("mode") is None else GuestCPU.parse_dom(cpu),
            on_poweroff=_text(el, "on_poweroff") or "destroy",
            on_reboot=_text(el, "on_reboot") or "restart",
            on_crash=_text(el, "on_crash") or "destroy",
            emulator=_text(devices, "emulator"),
            devices=tuple(_DEVICE_TYPES[d.tag].parse_dom(d) for d in devices if d.tag in _DEVICE_TYPES),
        )

    def to_xml(self) -> str:
        """The domain as an XML document (indented, no XML declaration)."""
        root = self.format_dom()
        ET.indent(root)
        # ElementTree writes CR as a character reference in attribute values but literally
        # in text, where any XML parser would fold it into LF (XML 1.0, 2.11). A literal
        # CR in the output can therefore only sit in a text node: write it as &#13; too.
        return ET.tostring(root, encoding="unicode").replace("\r", "&#13;")

    @classmethod
    def from_xml(cls, xml: str) -> Self:
        """Read a domain written by `to_xml` or by libvirt; `MalformedDomainXML` if not one."""
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise MalformedDomainXML(f"not XML: {exc}") from None
        return cls.parse_dom(root)


def _mib(memory: ET.Element) -> int:
    """`<memory>` in MiB, whatever unit libvirt chose (its default is KiB)."""
    unit = memory.get("unit", "KiB")
    if unit not in _BYTES_PER_UNIT:
        raise MalformedDomainXML(f"unknown memory unit {unit!r}")
    mib, rest = divmod(_int(memory.text, "<memory>") * _BYTES_PER_UNIT[unit], 2**20)
    if rest:
        raise MalformedDomainXML(f"memory of {memory.text} {unit} is not a whole number of MiB")
    return mib


# --- composing a Nebula guest ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class KernelBoot:
    """Direct kernel boot: QEMU loads these host files instead of a bootloader."""

    kernel: str
    initrd: str | None = None
    cmdline: str = ""

    def __post_init__(self) -> None:
        _check_strings(self)


@dataclass(frozen=True, kw_only=True)
class AttachedDisk:
    """A disk image file on the node; attached as vda, vdb, ... in list order."""

    path: str
    format: DiskFormat = "qcow2"

    def __post_init__(self) -> None:
        _check_strings(self)


@dataclass(frozen=True, kw_only=True)
class GuestSpec:
    """What the node agent knows about a guest; `build_domain` turns it into XML objects.

    `kernel` None boots the first disk. `network` None gives QEMU user-mode networking,
    else a port on that libvirt network, with nwfilter `nic_filter` holding it to its fixed
    `address`. `seed` is the NoCloud seed
    (``ds=nocloud-net;s=http://<meta>:8775/nocloud/<id>/<token>/``) put in the SMBIOS
    system serial. `console_log` is the file the serial console is copied to.
    """

    instance_id: uuid.UUID
    project_id: uuid.UUID
    name: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    vcpus: int
    ram_mb: int
    domain_type: DomainType
    kernel: KernelBoot | None = None
    disks: tuple[AttachedDisk, ...] = ()
    network: str | None = None
    mac: str | None = None
    nic_filter: str | None = None
    address: str | None = None
    seed: str | None = None
    console_log: str | None = None
    owner_node: str = ""
    owner_home: str = ""
    machine: str | None = None
    emulator: str | None = None
    memballoon: bool = True
    rng: bool = True

    def __post_init__(self) -> None:
        _check_strings(self)
        if self.kernel is None and not self.disks:
            raise InvalidGuest("a guest that boots from disk needs a disk", ["$.image"])
        if len(self.disks) > 26:
            raise InvalidGuest("at most 26 disks (vda to vdz)", ["$.disks"])


def build_domain(spec: GuestSpec) -> GuestDomain:
    """The libvirt domain of a Nebula guest: named by its instance id, the user's name as
    title and in the metadata, the seed in SMBIOS, serial console logged to a file.

    Deterministic: the same spec always gives the same XML, so a retried create that
    defines the domain again changes nothing."""
    smbios_mode = None if spec.seed is None else "sysinfo"
    if spec.kernel is None:
        guest_os = GuestOS(machine=spec.machine, boot_devs=("hd",), smbios_mode=smbios_mode)
    else:
        guest_os = GuestOS(
            machine=spec.machine,
            kernel=spec.kernel.kernel,
            initrd=spec.kernel.initrd,
            cmdline=spec.kernel.cmdline or None,
            smbios_mode=smbios_mode,
        )
    devices: list[GuestDevice] = [
        GuestDisk(source_path=disk.path, driver_type=disk.format, target_dev=f"vd{chr(ord('a') + i)}")
        for i, disk in enumerate(spec.disks)
    ]
    if spec.network is None:
        devices.append(GuestInterface(mac=spec.mac))
    else:
        devices.append(
            GuestInterface(
                type="network",
                source_network=spec.network,
                mac=spec.mac,
                nic_filter=spec.nic_filter,
                filter_ip=spec.address if spec.nic_filter else None,
            )
        )
    devices += [GuestSerial(log_file=spec.console_log), GuestConsole()]
    if spec.memballoon:
        devices.append(GuestMemballoon())
    if spec.rng:
        devices.append(GuestRng())
    return GuestDomain(
        type=spec.domain_type,
        name=str(spec.instance_id),
        uuid=spec.instance_id,
        title=re.sub(r"\r\n?|\n", " ", spec.name),
        description=spec.description or None,
        metadata=GuestMetadata(
            project_id=spec.project_id,
            name=spec.name,
            tags=dict(spec.tags),
            owner_node=spec.owner_node,
            owner_home=spec.owner_home,
        ),
        memory_mib=spec.ram_mb,
        vcpus=spec.vcpus,
        os=guest_os,
        sysinfo=None if spec.seed is None else GuestSysinfo(system={"serial": spec.seed}),
        cpu=GuestCPU() if spec.domain_type == "kvm" else None,
        emulator=spec.emulator,
        devices=tuple(devices),
    )
