"""The node's hypervisor: libvirt-python behind async, idempotent operations.

`LibvirtDriver` turns a `CreateRequest` into a defined (and started) libvirt domain named
and identified by the instance id, and runs start / stop / reboot / delete / status /
console on it. Every blocking libvirt call runs in a worker thread (`asyncio.to_thread`)
on one connection per driver, opened lazily and reopened when it drops.

The guest's files come from a `GuestMedia` (`media`): a real node's `LocalMedia` fetches
images into the node's cache (sha256-verified) and makes the instance's disks with
qemu-img; the fleet simulator's media only names them. Everything else - define, create,
shutdown, destroy, undefine, events - is real libvirt either way.

A driver touches only the domains it made: those whose Nebula metadata names its node and
home (`owner`). Any other domain on the host - another agent's, another cloud's, a tool's,
one without Nebula metadata - is left alone, as if it were not there.

Lifecycle events come from libvirt's default event loop, which runs in one daemon thread
per process (libvirt allows one event implementation per process, for its whole life);
each event is handed to the asyncio loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import libvirt

from nebula_core.contract.errors import Conflict, NodeUnavailable, NotFound
from nebula_core.contract.image_sources import ImageSources
from nebula_core.contract.node import CreateRequest, DomainState, guest_mac, nocloud_seed
from nebula_core.contract.types import InstanceAddress, Resources
from nebula_node import disks, images
from nebula_node.libvirt.domain_xml import (
    NEBULA_XMLNS,
    DomainType,
    GuestDisk,
    GuestDomain,
    GuestInterface,
    GuestSerial,
    GuestSpec,
    MalformedDomainXML,
    build_domain,
    metadata_owner,
)
from nebula_node.libvirt.errors import HypervisorError
from nebula_node.libvirt.kvm import choose_domain_type
from nebula_node.libvirt.media import GuestMedia, LocalMedia, Media
from nebula_node.libvirt.states import DomainEvent, describe_event, domain_state, instance_of
from nebula_node.network import GuestNetwork, NetworkPlan, Reservations, user_mode
from nebula_node.network import prepare as prepare_network

log = logging.getLogger("nebula.node.driver")

T = TypeVar("T")
GIB = 1 << 30
#: How often a graceful stop looks whether the guest has powered off.
STOP_POLL_S = 0.25


def spec_differences(have: GuestDomain, want: GuestDomain) -> list[str]:
    """The aspects in which an existing domain is not the one a create asks for.

    Only what the request decides is compared: libvirt fills in MAC addresses, machine
    types, emulators and boot order on its own, and the accelerator (kvm or qemu) is the
    node's choice, not the instance's.
    """

    def aspects(d: GuestDomain) -> dict[str, object]:
        return {
            "name": (d.name, d.uuid),
            "project, name or tags": d.metadata,
            "memory": d.memory_mib,
            "vcpus": d.vcpus,
            "kernel boot": (d.os.kernel, d.os.initrd, d.os.cmdline),
            "seed": d.sysinfo,
            "disks": [(x.source_path, x.driver_type, x.target_dev) for x in d.devices_of(GuestDisk)],
            "network": [(i.type, i.source_network) for i in d.devices_of(GuestInterface)],
            "console log": [s.log_file for s in d.devices_of(GuestSerial)],
        }

    mine, theirs = aspects(have), aspects(want)
    return [aspect for aspect in mine if mine[aspect] != theirs[aspect]]


# --- libvirt's event loop (one per process) ----------------------------------------------

_event_loop_lock = threading.Lock()
_event_loop_running = False


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised and logged instead."""


def _ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread.

    Must happen before a connection that wants events is opened. libvirt has no way to
    unregister it, so the thread lives as long as the process.
    """
    global _event_loop_running
    with _event_loop_lock:
        if _event_loop_running:
            return
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _event_loop_running = True


def _run_event_loop() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            log.error("libvirt's event loop failed an iteration")


# --- the driver ----------------------------------------------------------------------------


class LibvirtDriver:
    """One node's libvirt, as idempotent async operations on Nebula domains. Guests join
    the network `network` plans (see `nebula_node.network`), prepared when the driver
    opens: a port with a fixed address on a libvirt network, or QEMU's user-mode networking
    (also without a plan)."""

    def __init__(
        self,
        uri: str,
        media: GuestMedia,
        *,
        node_id: str,
        domain_type: DomainType = "qemu",
        disk_root: Path,
        network: NetworkPlan | None = None,
    ) -> None:
        self.uri = uri
        self.node_id = node_id
        self.domain_type = domain_type
        self._plan = network or NetworkPlan()
        #: Where the guests are plugged in: known once the driver has opened.
        self.network: GuestNetwork = user_mode(self._plan, "not prepared yet")
        self._reservations: Reservations | None = None
        self._media = media
        self._disk_root = Path(disk_root)
        #: Written into every domain this driver defines; the only domains it ever touches.
        self.owner = (node_id, str(self._disk_root.absolute()))
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._conn_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: Callable[[DomainEvent], None] | None = None

    @classmethod
    def for_node(
        cls,
        uri: str,
        state_dir: Path,
        *,
        node_id: str,
        kvm: bool = False,
        network: NetworkPlan | None = None,
        image_sources: ImageSources | None = None,
    ) -> LibvirtDriver:
        """Node `node_id`'s driver, keeping images and disks under `state_dir` (see
        `Settings.images_dir`) and fetching images as `image_sources` allows (default: local
        ones under the images directory); KVM if `kvm` and the host's /dev/kvm works."""
        images_dir, instances_dir = Path(state_dir) / "images", Path(state_dir) / "instances"
        return cls(
            uri,
            LocalMedia(images.ImageCache(images_dir, sources=image_sources), disks.InstanceDisks(instances_dir)),
            node_id=node_id,
            domain_type=choose_domain_type(kvm),
            disk_root=instances_dir,
            network=network,
        )

    # --- connection --------------------------------------------------------------------

    async def open(self) -> None:
        """Connect now (later calls reconnect by themselves) and prepare the guests'
        network; `NodeUnavailable` if libvirt cannot be reached."""
        self._loop = asyncio.get_running_loop()
        self.network = await self._run(lambda conn: prepare_network(conn, self._plan))
        self._reservations = Reservations(self.network) if self.network.dhcp_range else None
        log.info("node=%s guests: %s", self.node_id, self.network.summary)

    def listen(self, listener: Callable[[DomainEvent], None] | None) -> None:
        """Call `listener` (on the asyncio loop that opened the driver) for every lifecycle
        event of a domain named by a UUID, whoever caused it; None stops listening."""
        self._listener = listener

    async def close(self) -> None:
        await asyncio.to_thread(self._disconnect)

    def _connection(self) -> libvirt.virConnect:
        """The live connection, (re)opened if needed. Runs in a worker thread."""
        with self._conn_lock:
            if self._conn is not None and self._conn.isAlive():
                return self._conn
            if self._conn is not None:
                log.warning("libvirt connection to %s was lost: reconnecting", self.uri)
                self._disconnect_locked()
            _ensure_event_loop()
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as err:
                raise NodeUnavailable(f"cannot connect to libvirt at {self.uri}: {err}") from err
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
            with contextlib.suppress(libvirt.libvirtError):  # drivers without keepalive (test:///)
                conn.setKeepAlive(5, 3)
            self._conn = conn
            log.info("connected to libvirt at %s", self.uri)
            return conn

    def _disconnect(self) -> None:
        with self._conn_lock:
            self._disconnect_locked()

    def _disconnect_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            if self._callback_id is not None:
                conn.domainEventDeregisterAny(self._callback_id)
        self._callback_id = None
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def _on_lifecycle(self, _conn: Any, dom: libvirt.virDomain, event: int, detail: int, _opaque: Any) -> None:
        """Runs in libvirt's event thread: hand the event to the asyncio loop."""
        described = describe_event(dom.name(), event, detail)
        loop, listener = self._loop, self._listener
        if described is None or loop is None or listener is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            loop.call_soon_threadsafe(listener, described)

    async def _run(self, call: Callable[[libvirt.virConnect], T]) -> T:
        """`call(connection)` in a worker thread; a lost connection is `NodeUnavailable`."""

        def work() -> T:
            conn = self._connection()
            try:
                return call(conn)
            except libvirt.libvirtError as err:
                if not conn.isAlive():
                    raise NodeUnavailable(f"libvirt at {self.uri} went away: {err}") from err
                raise

        return await asyncio.to_thread(work)

    # --- inventory ---------------------------------------------------------------------

    async def capacity(self) -> Resources:
        """What this host has: CPUs and memory from libvirt, disk from the filesystem that
        holds the instances' disks."""
        info = await self._run(lambda conn: conn.getInfo())
        self._disk_root.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(self._disk_root)
        return Resources(vcpus=int(info[2]), ram_mb=int(info[1]), disk_gb=disk.total // GIB)

    async def domains(self) -> dict[uuid.UUID, DomainState]:
        """Every domain of this node (named by a UUID, its metadata naming this driver's
        owner) libvirt holds, with its state."""

        def listing(conn: libvirt.virConnect) -> dict[uuid.UUID, DomainState]:
            found = {}
            for dom in conn.listAllDomains(0):
                instance_id = instance_of(dom.name())
                if instance_id is not None:
                    with contextlib.suppress(libvirt.libvirtError):  # undefined meanwhile
                        if self._made(dom):
                            found[instance_id] = domain_state(dom.state()[0])
            return found

        return await self._run(listing)

    async def status(self, instance_id: uuid.UUID) -> DomainState:
        """The domain's state, `missing` if there is none. Read-only."""

        def state(conn: libvirt.virConnect) -> DomainState:
            dom = self._lookup(conn, instance_id)
            return "missing" if dom is None else domain_state(dom.state()[0])

        return await self._lifecycle_call(state)

    # --- operations --------------------------------------------------------------------

    async def create(self, req: CreateRequest) -> DomainState:
        """Define the instance's domain (and start it if `req.start`); returns its state.

        Idempotent: images are fetched once and disks made once; a domain that exists with
        the same spec is kept (and started if asked), so a repeated create ends as the first
        did. One that exists with another spec raises `Conflict` and is left untouched.
        """
        media = await self._media.prepare(req)
        address = await self._reserve(req.instance_id)
        wanted = build_domain(self._guest_spec(req, media, address))
        existing = await self._lifecycle_call(lambda conn: self._inactive_xml(conn, req.instance_id))
        if existing is not None:
            try:
                differences = spec_differences(GuestDomain.from_xml(existing), wanted)
            except MalformedDomainXML as err:
                raise Conflict(f"domain {req.instance_id} exists and is not a Nebula domain: {err}") from err
            if differences:
                raise Conflict(f"domain {req.instance_id} exists with a different {', '.join(differences)}")
        await self._media.create_disks(req, media)
        if existing is None:
            xml = wanted.to_xml()
            await self._lifecycle_call(lambda conn: conn.defineXML(xml))
            log.info(
                "instance=%s defined (%s, %d vCPU, %d MiB)", req.instance_id, self.domain_type, req.vcpus, req.ram_mb
            )
        if req.start:
            return await self.start(req.instance_id)
        return await self.status(req.instance_id)

    async def _reserve(self, instance_id: uuid.UUID) -> str | None:
        """The instance's fixed address on the managed network (None: user mode)."""
        reservations = self._reservations
        if reservations is None:
            return None
        return await self._lifecycle_call(lambda conn: reservations.reserve(conn, guest_mac(instance_id)))

    def _guest_spec(self, req: CreateRequest, media: Media, address: str | None) -> GuestSpec:
        return GuestSpec(
            instance_id=req.instance_id,
            project_id=req.project_id,
            name=req.name,
            description=req.description,
            tags=dict(req.tags),
            vcpus=req.vcpus,
            ram_mb=req.ram_mb,
            domain_type=self.domain_type,
            kernel=media.kernel,
            disks=media.disks,
            network=self.network.name,
            mac=guest_mac(req.instance_id),
            nic_filter=self.network.nic_filter if address else None,
            address=address,
            seed=nocloud_seed(self.network.meta_url, req.instance_id, req.metadata_token),
            console_log=str(self._media.console_log(req.instance_id)),
            owner_node=self.owner[0],
            owner_home=self.owner[1],
        )

    async def start(self, instance_id: uuid.UUID) -> DomainState:
        """Make the domain run. Idempotent: a running domain is left alone, a paused one is
        resumed. `NotFound` if there is no domain."""

        def start(conn: libvirt.virConnect) -> DomainState:
            dom = self._require(conn, instance_id)
            state = domain_state(dom.state()[0])
            if state == "paused":
                dom.resume()
            elif state != "running":
                _tolerate(libvirt.VIR_ERR_OPERATION_INVALID, dom.create)  # started meanwhile
            return domain_state(dom.state()[0])

        return await self._lifecycle_call(start)

    async def stop(self, instance_id: uuid.UUID, grace_seconds: float) -> DomainState:
        """Power the domain off: ACPI shutdown, then destroy once `grace_seconds` have passed
        without the guest powering off (at once with a grace of 0, or when it is paused).
        Idempotent: a domain that is off stays off. `NotFound` if there is no domain."""
        state = await self._lifecycle_call(lambda conn: domain_state(self._require(conn, instance_id).state()[0]))
        if state == "shutoff":
            return state
        if state == "running" and grace_seconds > 0:
            await self._lifecycle_call(
                lambda conn: _tolerate(libvirt.VIR_ERR_OPERATION_INVALID, self._require(conn, instance_id).shutdown)
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace_seconds
            while (state := await self.status(instance_id)) not in ("shutoff", "missing"):
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(STOP_POLL_S)
            if state in ("shutoff", "missing"):
                return state
            log.warning("instance=%s did not power off within %gs: destroying it", instance_id, grace_seconds)
        await self._lifecycle_call(
            lambda conn: _tolerate(libvirt.VIR_ERR_OPERATION_INVALID, self._require(conn, instance_id).destroy)
        )
        return await self.status(instance_id)

    async def reboot(self, instance_id: uuid.UUID) -> DomainState:
        """Reboot a running domain (ACPI, the guest's choice of how), or start one that is
        off: a reboot always ends with the domain running. `NotFound` if there is none."""

        def reboot(conn: libvirt.virConnect) -> DomainState:
            dom = self._require(conn, instance_id)
            state = domain_state(dom.state()[0])
            if state == "running":
                dom.reboot(0)
            elif state == "paused":
                dom.reset(0)
                dom.resume()
            else:
                _tolerate(libvirt.VIR_ERR_OPERATION_INVALID, dom.create)
            return domain_state(dom.state()[0])

        return await self._lifecycle_call(reboot)

    async def delete(self, instance_id: uuid.UUID) -> DomainState:
        """Destroy and undefine the domain and remove its disks. Idempotent: whatever is
        already gone is skipped, and a missing domain is success. Returns `missing`."""

        def delete(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, instance_id)
            if dom is None:
                return
            _tolerate(libvirt.VIR_ERR_OPERATION_INVALID, dom.destroy)  # not running
            try:
                dom.undefineFlags(_UNDEFINE_FLAGS)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                _tolerate(libvirt.VIR_ERR_NO_DOMAIN, dom.undefine)  # a driver refusing the flags

        await self._lifecycle_call(delete)
        reservations = self._reservations
        if reservations is not None:
            await self._lifecycle_call(lambda conn: reservations.release(conn, guest_mac(instance_id)))
        await self._media.remove(instance_id)
        log.info("instance=%s deleted with its disks", instance_id)
        return "missing"

    async def addresses(self, instance_id: uuid.UUID) -> tuple[InstanceAddress, ...]:
        """The IPv4 addresses the running domain's NICs leased on the node's network, as
        libvirt knows them (its DHCP leases); empty when it has none (yet), is not running
        or is on user-mode networking."""
        network = self.network.name
        if network is None:
            return ()

        def leased(conn: libvirt.virConnect) -> tuple[InstanceAddress, ...]:
            dom = self._lookup(conn, instance_id)
            if dom is None or not dom.isActive():
                return ()
            found = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0) or {}
            addresses = [
                InstanceAddress(network=network, mac=str(nic.get("hwaddr", "")).lower(), ipv4=str(addr["addr"]))
                for nic in found.values()
                for addr in nic.get("addrs") or ()
                if addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4
            ]
            return tuple(sorted(addresses, key=lambda a: (a.mac, a.ipv4)))

        return await self._lifecycle_call(leased)

    async def console(self, instance_id: uuid.UUID, max_bytes: int) -> tuple[str, bool]:
        """The last `max_bytes` of the serial console log and whether it was cut.
        An instance with no log yet has an empty console; one with neither domain nor log is
        `NotFound`."""
        path = self._media.console_log(instance_id)
        try:
            data, truncated = await asyncio.to_thread(_tail, path, max(0, max_bytes))
        except FileNotFoundError:
            if await self.status(instance_id) == "missing":
                raise NotFound(f"instance {instance_id} has no domain on this node") from None
            return "", False
        except PermissionError as err:
            raise HypervisorError(f"cannot read the console log of instance {instance_id}: {err}") from err
        return data.decode("utf-8", errors="replace"), truncated

    def _made(self, dom: libvirt.virDomain) -> bool:
        """Whether this driver made `dom`: its Nebula metadata names this node and home.
        A domain without that metadata is not Nebula's, whatever its name or files."""
        return _owner(dom) == self.owner

    def _lookup(self, conn: libvirt.virConnect, instance_id: uuid.UUID) -> libvirt.virDomain | None:
        """The instance's domain if this node made it; anyone else's counts as none."""
        dom = _any_domain(conn, instance_id)
        return dom if dom is not None and self._made(dom) else None

    def _require(self, conn: libvirt.virConnect, instance_id: uuid.UUID) -> libvirt.virDomain:
        dom = self._lookup(conn, instance_id)
        if dom is None:
            raise NotFound(f"instance {instance_id} has no domain on this node")
        return dom

    def _inactive_xml(self, conn: libvirt.virConnect, instance_id: uuid.UUID) -> str | None:
        dom = _any_domain(conn, instance_id)
        if dom is None:
            return None
        if not self._made(dom):
            raise Conflict(
                f"a domain named {instance_id} exists on this host but this node agent did not make it;"
                " it is left alone"
            )
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    async def _lifecycle_call(self, call: Callable[[libvirt.virConnect], T]) -> T:
        try:
            return await self._run(call)
        except libvirt.libvirtError as err:
            raise HypervisorError(f"libvirt: {err.get_error_message() or err}") from err


_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)


def _any_domain(conn: libvirt.virConnect, instance_id: uuid.UUID) -> libvirt.virDomain | None:
    """The domain named `instance_id`, whoever made it."""
    try:
        return conn.lookupByName(str(instance_id))
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _owner(dom: libvirt.virDomain) -> tuple[str, str] | None:
    """(node, home) of the node agent that made `dom`, from Nebula's metadata element."""
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NEBULA_XMLNS, 0)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise
    return metadata_owner(xml)


def _tolerate(code: int, call: Callable[[], object]) -> None:
    """Run `call`, treating libvirt error `code` as "already done"."""
    try:
        call()
    except libvirt.libvirtError as err:
        if err.get_error_code() != code:
            raise


def _tail(path: Path, max_bytes: int) -> tuple[bytes, bool]:
    with path.open("rb") as stream:
        size = stream.seek(0, os.SEEK_END)
        stream.seek(max(0, size - max_bytes))
        return stream.read(max_bytes), size > max_bytes
