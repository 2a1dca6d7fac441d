"""The node's hypervisor: libvirt-python behind async, idempotent operations.

`LibvirtDriver` turns a `CreateRequest` into a defined (and started) libvirt domain named
and identified by the instance id, and runs start / stop / reboot / delete / status /
console on it. Every blocking libvirt call runs in a worker thread (`asyncio.to_thread`)
on one connection per driver, opened lazily and reopened when it drops.

The guest's files come from a `GuestMedia` strategy: `LocalMedia` fetches images into the
node's cache (sha256-verified) and makes the instance's disks with qemu-img;
`SimulatedMedia` only names the same paths, for libvirt's `test:///` driver, which never
opens them. Everything else - define, create, shutdown, destroy, undefine, events - is
real libvirt in both cases.

Lifecycle events come from libvirt's default event loop, which runs in one daemon thread
per process (libvirt allows one event implementation per process, for its whole life);
each event is handed to the asyncio loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar
from urllib.parse import urljoin

import libvirt
import msgspec

from nebula_core.contract.errors import Conflict, Invalid, NebulaError, NodeUnavailable, NotFound
from nebula_core.contract.node import CreateRequest, DomainState, ImageSpec
from nebula_core.contract.types import Resources
from nebula_node import disks, images
from nebula_node.libvirt.domain_xml import (
    NEBULA_XMLNS,
    AttachedDisk,
    DomainType,
    GuestDisk,
    GuestDomain,
    GuestInterface,
    GuestSerial,
    GuestSpec,
    KernelBoot,
    MalformedDomainXML,
    build_domain,
    metadata_owner,
)

log = logging.getLogger("nebula.node.driver")

T = TypeVar("T")
GIB = 1 << 30
#: How often a graceful stop looks whether the guest has powered off.
STOP_POLL_S = 0.25


class HypervisorError(NebulaError):
    """libvirt (or qemu-img, or an image source) failed; the message says how."""


# --- states and events (pure) ------------------------------------------------------------

_STATES: dict[int, DomainState] = {
    libvirt.VIR_DOMAIN_NOSTATE: "other",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",  # shutting down, still running
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}


def domain_state(code: int) -> DomainState:
    """The contract's name for a `virDomainState`."""
    return _STATES.get(code, "other")


E = libvirt
#: What a lifecycle event says happened, by (event, detail); then by event alone.
_EVENT_REASONS: dict[tuple[int, int | None], str] = {
    (E.VIR_DOMAIN_EVENT_DEFINED, None): "the domain was defined",
    (E.VIR_DOMAIN_EVENT_UNDEFINED, None): "the domain was undefined",
    (E.VIR_DOMAIN_EVENT_STARTED, None): "the domain was started",
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_RESTORED): "the domain was restored",
    (E.VIR_DOMAIN_EVENT_SUSPENDED, None): "the domain was paused",
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR): "paused on a disk I/O error",
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG): "paused by its watchdog",
    (E.VIR_DOMAIN_EVENT_RESUMED, None): "the domain was resumed",
    (E.VIR_DOMAIN_EVENT_STOPPED, None): "the domain stopped",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN): "the guest shut down",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED): "the domain was destroyed",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_CRASHED): "the guest crashed",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_MIGRATED): "the domain migrated away",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SAVED): "the domain was saved to disk",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_FAILED): "the hypervisor failed",
    (E.VIR_DOMAIN_EVENT_SHUTDOWN, None): "the guest is shutting down",
    (E.VIR_DOMAIN_EVENT_PMSUSPENDED, None): "the guest suspended itself",
    (E.VIR_DOMAIN_EVENT_CRASHED, None): "the guest crashed",
    (E.VIR_DOMAIN_EVENT_CRASHED, E.VIR_DOMAIN_EVENT_CRASHED_PANICKED): "the guest kernel panicked",
}


@dataclass(frozen=True)
class DomainEvent:
    """A lifecycle event of a Nebula domain: which instance, and what happened to it."""

    instance_id: uuid.UUID
    reason: str


def describe_event(name: str, event: int, detail: int) -> DomainEvent | None:
    """The event of domain `name` as Nebula sees it; None for a domain not named by a UUID."""
    instance_id = instance_of(name)
    if instance_id is None:
        return None
    reason = _EVENT_REASONS.get((event, detail)) or _EVENT_REASONS.get((event, None))
    return DomainEvent(instance_id, reason or f"libvirt lifecycle event {event}/{detail}")


def instance_of(domain_name: str) -> uuid.UUID | None:
    """The instance a domain belongs to: Nebula names domains by the canonical instance UUID."""
    try:
        instance_id = uuid.UUID(domain_name)
    except ValueError:
        return None
    return instance_id if str(instance_id) == domain_name else None


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


# --- KVM ---------------------------------------------------------------------------------

#: _IO(KVMIO, 0x00): every working KVM answers 12.
KVM_GET_API_VERSION = 0xAE00


def kvm_usable(device: str = "/dev/kvm") -> bool:
    """True if `device` opens read-write and answers KVM's API version ioctl."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def choose_domain_type(kvm: bool, *, probe: Callable[[], bool] = kvm_usable) -> DomainType:
    """`kvm` only when it was asked for and the device works; TCG otherwise.

    KVM is opt-in: on some hosts /dev/kvm opens and answers but guests hang, and TCG is
    slow but always boots.
    """
    if not kvm:
        return "qemu"
    if probe():
        return "kvm"
    log.warning("KVM was asked for but /dev/kvm does not work: using QEMU's TCG emulation")
    return "qemu"


# --- guest media: images and disks ------------------------------------------------------


@dataclass(frozen=True)
class Media:
    """The host files a guest uses: direct-kernel boot files (or None) and its disks."""

    kernel: KernelBoot | None
    disks: tuple[AttachedDisk, ...]


class GuestMedia(Protocol):
    def console_log(self, instance_id: uuid.UUID) -> Path: ...

    async def prepare(self, req: CreateRequest) -> Media:
        """Fetch what the guest boots from; name its disks (not created yet)."""

    async def create_disks(self, req: CreateRequest, media: Media) -> None:
        """Create the instance's disks; idempotent, `Conflict` if they exist otherwise."""

    async def remove(self, instance_id: uuid.UUID) -> None:
        """Delete the instance's files; succeeds if there are none."""


class _FileRef(msgspec.Struct, frozen=True):
    sha256: str
    size: int = 0


class KernelManifest(msgspec.Struct, frozen=True):
    """The part of a direct-kernel image's manifest.json (ops/guest/build-tiny.sh) a node reads."""

    kernel: str
    cmdline: str = ""
    initrd: str | None = None
    files: dict[str, _FileRef] = {}


class _Artifact(msgspec.Struct, frozen=True):
    source: str
    sha256: str
    size: int = 0


def manifest_artifact(manifest: KernelManifest, manifest_source: str, name: str) -> _Artifact:
    """The file `name` a manifest vouches for: beside the manifest, with its own sha256."""
    if PurePosixPath(name).name != name or name in ("", ".", ".."):
        raise Invalid(f"image manifest names {name!r}, which is not a file beside it", ["$.image"])
    ref = manifest.files.get(name)
    if ref is None:
        raise Invalid(f"image manifest gives no sha256 for {name!r}", ["$.image"])
    if manifest_source.startswith("/"):
        source = str(Path(manifest_source).parent / name)
    else:
        source = urljoin(manifest_source, name)
    return _Artifact(source=source, sha256=ref.sha256, size=ref.size)


@contextlib.contextmanager
def _media_errors() -> Iterator[None]:
    """The image cache's and the disks' own errors, as the typed errors a reply carries."""
    try:
        yield
    except images.ImageNotFound as err:
        raise NotFound(str(err)) from err
    except images.ImageVerificationFailed as err:
        raise Invalid(str(err), ["$.image"]) from err
    except images.ImageError as err:
        raise HypervisorError(str(err)) from err
    except disks.DiskConflict as err:
        raise Conflict(str(err)) from err
    except disks.DiskTooSmall as err:
        raise Invalid(str(err), ["$.disk_gb"]) from err
    except disks.BaseImageUnusable as err:
        raise Invalid(str(err), ["$.image"]) from err
    except disks.DiskError as err:
        raise HypervisorError(str(err)) from err
    except ValueError as err:  # a malformed sha256 or disk size
        raise Invalid(str(err), ["$.image"]) from err


class LocalMedia:
    """Real files: images in the node's sha256 cache, disks made by qemu-img.

    A qcow2 image becomes `disk.qcow2`, an overlay on the cached base grown to `disk_gb`.
    A direct-kernel image boots the kernel and initrd its manifest names, with a blank
    data disk of `disk_gb`.
    """

    def __init__(self, cache: images.ImageCache, instance_disks: disks.InstanceDisks) -> None:
        self._cache = cache
        self._disks = instance_disks

    def console_log(self, instance_id: uuid.UUID) -> Path:
        return self._disks.console_log_path(instance_id)

    async def prepare(self, req: CreateRequest) -> Media:
        with _media_errors():
            base = await self._cache.ensure(req.image)
            directory = self._disks.instance_dir(req.instance_id)
            if req.image.format == "qcow2":
                return Media(None, (AttachedDisk(path=str(directory / f"{disks.OVERLAY_NAME}.qcow2")),))
            kernel = await self._kernel(req.image, base.path)
            return Media(kernel, (AttachedDisk(path=str(directory / "data.qcow2")),))

    async def _kernel(self, image: ImageSpec, manifest_path: Path) -> KernelBoot:
        try:
            manifest = msgspec.json.decode(await asyncio.to_thread(manifest_path.read_bytes), type=KernelManifest)
        except msgspec.DecodeError as err:
            raise Invalid(f"image {image.name}: not a direct-kernel manifest: {err}", ["$.image"]) from err
        kernel = await self._cache.ensure(manifest_artifact(manifest, image.source, manifest.kernel))
        initrd = None
        if manifest.initrd:
            initrd = await self._cache.ensure(manifest_artifact(manifest, image.source, manifest.initrd))
        return KernelBoot(
            kernel=str(kernel.path), initrd=None if initrd is None else str(initrd.path), cmdline=manifest.cmdline
        )

    async def create_disks(self, req: CreateRequest, media: Media) -> None:
        with _media_errors():
            if media.kernel is None:
                base = self._cache.path_for(req.image.sha256)
                await self._disks.create_overlay(req.instance_id, base, req.disk_gb)
            else:
                await self._disks.create_blank(req.instance_id, req.disk_gb, name="data")

    async def remove(self, instance_id: uuid.UUID) -> None:
        await self._disks.delete(instance_id)


class SimulatedMedia:
    """The same paths as `LocalMedia`, but nothing is fetched and no disk is made: for
    libvirt's test driver, which never opens them. Disk sizes are remembered in memory so
    a repeated create with another size is still a conflict; each instance's console log
    gets one line saying that no guest runs. `fetch_delay` seconds stand for the time a
    real node spends fetching the image and making the disks."""

    def __init__(self, images_dir: Path, instances_dir: Path, *, fetch_delay: float = 0.0) -> None:
        self._cache = images.ImageCache(images_dir)
        self._disks = disks.InstanceDisks(instances_dir)
        self._sizes: dict[uuid.UUID, int] = {}
        self._fetch_delay = fetch_delay

    def console_log(self, instance_id: uuid.UUID) -> Path:
        return self._disks.console_log_path(instance_id)

    async def prepare(self, req: CreateRequest) -> Media:
        if self._fetch_delay:
            await asyncio.sleep(self._fetch_delay)
        with _media_errors():
            image = self._cache.path_for(req.image.sha256)
            directory = self._disks.instance_dir(req.instance_id)
        if req.image.format == "qcow2":
            return Media(None, (AttachedDisk(path=str(directory / f"{disks.OVERLAY_NAME}.qcow2")),))
        kernel = KernelBoot(kernel=str(image), cmdline="console=ttyS0")
        return Media(kernel, (AttachedDisk(path=str(directory / "data.qcow2")),))

    async def create_disks(self, req: CreateRequest, media: Media) -> None:
        known = self._sizes.setdefault(req.instance_id, req.disk_gb)
        if known != req.disk_gb:
            raise Conflict(f"instance {req.instance_id} has a disk of {known} GiB, not {req.disk_gb} GiB")
        log_path = self.console_log(req.instance_id)
        line = f"nebula-sim: {req.name} ({req.instance_id}) is simulated by libvirt's test driver; no guest runs\n"
        await asyncio.to_thread(_write_once, log_path, line)

    async def remove(self, instance_id: uuid.UUID) -> None:
        self._sizes.pop(instance_id, None)
        await self._disks.delete(instance_id)


def _write_once(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError), path.open("x") as out:
        out.write(text)


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
    """One node's libvirt, as idempotent async operations on Nebula domains. Guests get
    QEMU's user-mode networking, or a port on libvirt network `network` when it is named."""

    def __init__(
        self,
        uri: str,
        media: GuestMedia,
        *,
        node_id: str,
        domain_type: DomainType = "qemu",
        disk_root: Path,
        network: str | None = None,
    ) -> None:
        self.uri = uri
        self.node_id = node_id
        self.domain_type = domain_type
        self.network = network
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
        simulated: bool = False,
        kvm: bool = False,
        fetch_delay: float = 0.0,
        network: str | None = None,
    ) -> LibvirtDriver:
        """Node `node_id`'s driver, keeping images and disks under `state_dir` (see
        `Settings.images_dir`); `fetch_delay` applies to a simulated node only."""
        images_dir, instances_dir = Path(state_dir) / "images", Path(state_dir) / "instances"
        media: GuestMedia
        if simulated:
            media = SimulatedMedia(images_dir, instances_dir, fetch_delay=fetch_delay)
        else:
            media = LocalMedia(images.ImageCache(images_dir), disks.InstanceDisks(instances_dir))
        return cls(
            uri,
            media,
            node_id=node_id,
            domain_type="qemu" if simulated else choose_domain_type(kvm),
            disk_root=instances_dir,
            network=network,
        )

    # --- connection --------------------------------------------------------------------

    async def open(self) -> None:
        """Connect now (later calls reconnect by themselves); `NodeUnavailable` if libvirt
        cannot be reached."""
        self._loop = asyncio.get_running_loop()
        await self._run(lambda conn: None)

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
        wanted = build_domain(self._guest_spec(req, media))
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

    def _guest_spec(self, req: CreateRequest, media: Media) -> GuestSpec:
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
            network=self.network,
            seed=req.seed,
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
        await self._media.remove(instance_id)
        log.info("instance=%s deleted with its disks", instance_id)
        return "missing"

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
        """Whether this node agent made `dom`: its metadata names this owner, or - a domain
        from before owners were written - its disks and console log are under this home."""
        owner = _owner(dom)
        if owner is not None:
            return owner == self.owner
        paths = _file_paths(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        return bool(paths) and all(PurePosixPath(p).is_relative_to(self.owner[1]) for p in paths)

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


def _file_paths(xml: str) -> list[str]:
    """The files a domain writes to: its disks' sources and its serial console's log."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    found = [el.get("file") for el in root.iterfind("devices/disk/source")]
    found += [el.get("file") for el in root.iterfind("devices/serial/log")]
    return [path for path in found if path]


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
