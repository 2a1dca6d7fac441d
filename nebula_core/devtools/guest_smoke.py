"""Boot nebula-tiny under libvirt/QEMU (TCG) for real, along the node agent's own path.

    .venv/bin/python -m nebula_core.devtools.guest_smoke [--runs N] [--state-dir DIR] [--keep]

Needs root (qemu:///system). First runs ops/host/libvirt-up.sh (libvirtd up, the state
dir reachable by QEMU's user) and ops/guest/build-tiny.sh (the image, if not current).
Then, per run, exactly what a node agent does with the project's own pieces:

* kernel and initrd into the node's image cache by sha256 (`nebula_node.images.ImageCache`);
* a blank 1 GiB data disk and the console log path under ``<state>/instances/<id>/``
  (`nebula_node.disks.InstanceDisks`);
* the domain from `nebula_node.libvirt.domain_xml.build_domain` (direct kernel boot, the data disk,
  user-mode networking, the seed in the SMBIOS serial, the serial console logged to a
  file, type='qemu'), defined and started with libvirt-python;
* a throwaway NoCloud seed served by aiohttp on 127.0.0.1:<free port>, which the guest
  reaches as 10.0.2.2 through QEMU's user-mode networking; its user-data is
  ``#!/bin/sh`` + ``echo nonce-<random>``, a fresh nonce for every boot.

Checks, each with a deadline: the boot's nonce between NEBULA-USERDATA-BEGIN/END on the
console and its phone-home POST; ``dom.shutdown()`` (ACPI power button) makes the domain
shut off; ``dom.create()`` boots it again; ``dom.reboot()`` (ACPI, then libvirt resets
the machine) boots it again; destroy, undefine and the instance's files are gone.
Prints the timings of each run and their medians; exits 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import pwd
import re
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import libvirt
import msgspec
from aiohttp import web

from nebula_core.allinone.opsfiles import ops_path
from nebula_core.contract.image_sources import ImageSources
from nebula_node.disks import InstanceDisks
from nebula_node.images import ImageCache
from nebula_node.libvirt.domain_xml import AttachedDisk, GuestSpec, KernelBoot, build_domain

URI = "qemu:///system"
#: What the guest calls the host's loopback under QEMU's user-mode networking.
GUEST_HOST_ADDR = "10.0.2.2"
HOSTNAME = "tiny-smoke"
BOOT_DEADLINE = 120.0
SHUTDOWN_DEADLINE = 60.0


class SmokeFailed(Exception):
    """A check did not pass; the message says which."""


# --- the fake metadata service ------------------------------------------------------------


@dataclasses.dataclass
class Seed:
    """One instance's NoCloud documents, and the phone-homes it received."""

    instance_id: uuid.UUID
    token: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(16))
    nonce: str = ""
    phone_homes: list[tuple[float, dict[str, str]]] = dataclasses.field(default_factory=list)
    arrived: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def new_boot(self) -> str:
        """A fresh nonce for the next boot's user-data; returns it."""
        self.nonce = f"nonce-{secrets.token_hex(6)}"
        self.arrived.clear()
        return self.nonce

    def documents(self) -> dict[str, bytes]:
        return {
            "meta-data": f"instance-id: {self.instance_id}\nlocal-hostname: {HOSTNAME}\n".encode(),
            "user-data": f"#!/bin/sh\necho {self.nonce}\n".encode(),
            "vendor-data": b"",
            "network-config": b"",
        }

    async def wait_phone_home(self, count: int, deadline: float) -> float:
        """The arrival time of phone-home number `count` (1-based)."""
        while len(self.phone_homes) < count:
            try:
                await asyncio.wait_for(self.arrived.wait(), deadline - time.monotonic())
            except TimeoutError:
                raise SmokeFailed(f"no phone-home #{count} within the deadline") from None
            self.arrived.clear()
        return self.phone_homes[count - 1][0]


SEED_KEY = web.AppKey("seed", Seed)
routes = web.RouteTableDef()


def _seed_for(request: web.Request) -> Seed:
    """The seed the URL names, or the uniform 404 for a wrong instance or token."""
    seed = request.app[SEED_KEY]
    iid, token = request.match_info["instance_id"], request.match_info["token"]
    if iid != str(seed.instance_id) or not secrets.compare_digest(token, seed.token):
        raise web.HTTPNotFound()
    return seed


@routes.get("/nocloud/{instance_id}/{token}/{document}")
async def get_document(request: web.Request) -> web.Response:
    body = _seed_for(request).documents().get(request.match_info["document"])
    if body is None:
        raise web.HTTPNotFound()
    return web.Response(body=body, content_type="text/plain")


@routes.post("/nocloud/{instance_id}/{token}/phone-home")
async def phone_home(request: web.Request) -> web.Response:
    seed = _seed_for(request)
    form = {k: str(v) for k, v in (await request.post()).items()}
    seed.phone_homes.append((time.monotonic(), form))
    seed.arrived.set()
    return web.Response(text="ok")


@asynccontextmanager
async def serving(seed: Seed) -> AsyncIterator[str]:
    """Serve `seed` on 127.0.0.1:<free port>; yields the seed URL as the guest sees it."""
    app = web.Application()
    app[SEED_KEY] = seed
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{GUEST_HOST_ADDR}:{port}/nocloud/{seed.instance_id}/{seed.token}/"
    finally:
        await runner.cleanup()


# --- the console ----------------------------------------------------------------------------


def userdata_blocks(console: str) -> list[list[str]]:
    """The lines between each NEBULA-USERDATA-BEGIN and the next NEBULA-USERDATA-END."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in console.replace("\r", "").splitlines():
        if line == "NEBULA-USERDATA-BEGIN":
            current = []
        elif line == "NEBULA-USERDATA-END" and current is not None:
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


async def poll(what: str, predicate: Callable[[], bool], deadline: float, interval: float = 0.2) -> float:
    """Wait until `predicate()` holds; returns when (monotonic), or raises SmokeFailed."""
    while not predicate():
        if time.monotonic() >= deadline:
            raise SmokeFailed(f"{what}: not within the deadline")
        await asyncio.sleep(interval)
    return time.monotonic()


# --- one run ----------------------------------------------------------------------------------


class Artifact(msgspec.Struct, frozen=True):
    """An `ArtifactRef` for the image cache: a file of the built image."""

    sha256: str
    source: str
    size: int


class Manifest(msgspec.Struct):
    """The part of build-tiny.sh's manifest.json a node uses."""

    kernel: str
    initrd: str
    cmdline: str
    files: dict[str, dict[str, str | int]]

    def artifact(self, image_dir: Path, name: str) -> Artifact:
        f = self.files[name]
        return Artifact(sha256=str(f["sha256"]), source=str(image_dir / name), size=int(f["size"]))


@dataclasses.dataclass
class Timings:
    define_to_nonce: float = float("nan")
    define_to_phone_home: float = float("nan")
    shutdown_to_shutoff: float = float("nan")
    start_to_phone_home: float = float("nan")
    reboot_to_phone_home: float = float("nan")


def qemu_user(name: str) -> str:
    """The user the domain's QEMU process runs as (from libvirt's pid file)."""
    pid = Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()
    found = re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    if found is None:
        raise SmokeFailed(f"no Uid line in /proc/{pid}/status")
    uid = int(found.group(1))
    return pwd.getpwuid(uid).pw_name


class Run:
    """One instance's life: define, boot, stop, start, reboot, destroy, undefine."""

    def __init__(self, conn: libvirt.virConnect, state: Path, image_dir: Path, keep: bool) -> None:
        self.conn, self.keep = conn, keep
        self.image_dir = image_dir
        self.cache = ImageCache(state / "images", sources=ImageSources(roots=(str(image_dir),)))
        self.disks = InstanceDisks(state / "instances")
        self.seed = Seed(instance_id=uuid.uuid4())
        self.console_log = self.disks.console_log_path(self.seed.instance_id)
        self.timings = Timings()
        self.dom: libvirt.virDomain = None  # defined by boot()

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def nonce_on_console(self) -> bool:
        return any(self.seed.nonce in block for block in userdata_blocks(self.console()))

    async def boot_checked(self, count: int, since: float) -> tuple[float, float]:
        """Wait for this boot's nonce on the console, then for phone-home number `count`;
        returns when each was seen (the nonce to within the 0.2 s polling interval)."""
        deadline = since + BOOT_DEADLINE
        nonce_at = await poll(
            f"{self.seed.nonce} between the user-data markers on the console", self.nonce_on_console, deadline
        )
        at = await self.seed.wait_phone_home(count, deadline)
        form = self.seed.phone_homes[count - 1][1]
        if form.get("instance_id") != str(self.seed.instance_id) or form.get("hostname") != HOSTNAME:
            raise SmokeFailed(f"phone-home #{count} carries {form}")
        return nonce_at, at

    def state(self) -> int:
        return self.dom.state()[0]

    async def spec(self, seed_url: str) -> GuestSpec:
        """What a node agent builds for a nebula-tiny instance with a 1 GiB data disk."""
        manifest = msgspec.json.decode((self.image_dir / "manifest.json").read_bytes(), type=Manifest)
        kernel = await self.cache.ensure(manifest.artifact(self.image_dir, manifest.kernel))
        initrd = await self.cache.ensure(manifest.artifact(self.image_dir, manifest.initrd))
        data = await self.disks.create_blank(self.seed.instance_id, 1, "data")
        return GuestSpec(
            instance_id=self.seed.instance_id,
            project_id=uuid.uuid4(),
            name="tiny-smoke",
            vcpus=1,
            ram_mb=256,
            domain_type="qemu",  # TCG: a KVM guest hangs on this host
            kernel=KernelBoot(kernel=str(kernel.path), initrd=str(initrd.path), cmdline=manifest.cmdline),
            disks=(AttachedDisk(path=str(data)),),
            seed=f"ds=nocloud-net;s={seed_url}",
            console_log=str(self.console_log),
        )

    async def first_boot(self, xml: str) -> None:
        """Define and start; the user-data runs and the guest phones home."""
        self.seed.new_boot()
        t0 = time.monotonic()
        self.dom = await asyncio.to_thread(self.conn.defineXML, xml)
        await asyncio.to_thread(self.dom.create)
        name = self.dom.name()
        print(f"  {name}: started in {time.monotonic() - t0:.2f}s, QEMU runs as {qemu_user(name)}")
        nonce_at, phoned_at = await self.boot_checked(1, t0)
        self.timings.define_to_nonce = nonce_at - t0
        self.timings.define_to_phone_home = phoned_at - t0
        if not re.search(r"^NEBULA-DISKS vda=1073741824\b", self.console(), re.MULTILINE):
            raise SmokeFailed("the 1 GiB data disk is not vda in the guest")
        if self.seed.token in self.console():
            raise SmokeFailed("the seed token leaked onto the console")

    async def acpi_shutdown(self) -> None:
        """dom.shutdown(): the power button, acpid, the guest's graceful poweroff."""
        t1 = time.monotonic()
        await asyncio.to_thread(self.dom.shutdown)
        done = await poll(
            "shutoff after dom.shutdown()", lambda: self.state() == libvirt.VIR_DOMAIN_SHUTOFF, t1 + SHUTDOWN_DEADLINE
        )
        self.timings.shutdown_to_shutoff = done - t1
        if "NEBULA-POWEROFF" not in self.console():
            raise SmokeFailed("shut off, but not by the guest's own poweroff")

    async def start_again(self) -> None:
        """dom.create() of the stopped domain (its console log starts afresh: append='off')."""
        self.seed.new_boot()
        t2 = time.monotonic()
        await asyncio.to_thread(self.dom.create)
        self.timings.start_to_phone_home = (await self.boot_checked(2, t2))[1] - t2

    async def reboot(self) -> None:
        """dom.reboot(0): the power button; the guest powers off and libvirt resets it."""
        self.seed.new_boot()
        t3 = time.monotonic()
        await asyncio.to_thread(self.dom.reboot, 0)
        self.timings.reboot_to_phone_home = (await self.boot_checked(3, t3))[1] - t3
        if self.state() != libvirt.VIR_DOMAIN_RUNNING:
            raise SmokeFailed("not running after the reboot")

    async def __call__(self) -> Timings:
        async with serving(self.seed) as seed_url:
            try:
                await self.first_boot(build_domain(await self.spec(seed_url)).to_xml())
                await self.acpi_shutdown()
                await self.start_again()
                await self.reboot()
            except BaseException:
                tail = self.console().replace("\r", "").splitlines()[-30:]
                print("  console (last 30 lines):\n    " + "\n    ".join(tail))
                raise
            finally:
                await self.cleanup()
        return self.timings

    async def cleanup(self) -> None:
        """Destroy and undefine the domain, delete the instance's files; check they are gone."""
        iid = str(self.seed.instance_id)
        if self.dom is not None:
            if self.dom.isActive():
                await asyncio.to_thread(self.dom.destroy)
            await asyncio.to_thread(self.dom.undefine)
            try:
                self.conn.lookupByName(iid)
                raise SmokeFailed("the domain is still defined after undefine")
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        if self.keep:
            print(f"  kept {self.disks.instance_dir(iid)}")
            return
        await self.disks.delete(iid)
        if self.disks.instance_dir(iid).exists():
            raise SmokeFailed("the instance directory survived delete")


# --- main -----------------------------------------------------------------------------------------


def setup(state: Path, image_dir: Path) -> None:
    """libvirtd up and the state dir reachable by QEMU; the image built if not current."""
    subprocess.run(["sh", str(ops_path("host", "libvirt-up.sh")), str(state)], check=True)
    subprocess.run(["sh", str(ops_path("guest", "build-tiny.sh")), str(image_dir)], check=True)


def median_line(label: str, values: list[float]) -> str:
    shown = ", ".join(f"{v:.2f}" for v in values)
    return f"  {label:<22} median {statistics.median(values):6.2f}s  ({shown})"


async def smoke(state: Path, image_dir: Path, runs: int, keep: bool) -> bool:
    """`runs` instance lives, one after the other; True if all passed."""
    # libvirt-python prints every error to stderr unless a handler takes them; the
    # exceptions carry them anyway.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(URI)
    results: list[Timings] = []
    try:
        for i in range(1, runs + 1):
            print(f"run {i}/{runs}")
            try:
                t = await Run(conn, state, image_dir, keep)()
            except SmokeFailed as exc:
                print(f"  FAIL: {exc}")
                continue
            results.append(t)
            print("  PASS: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}s" for k, v in dataclasses.asdict(t).items()))
    finally:
        conn.close()
    if results:
        print(f"timings over {len(results)} passing run(s):")
        for f in dataclasses.fields(Timings):
            print(median_line(f.name.replace("_", " "), [getattr(t, f.name) for t in results]))
    return len(results) == runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--state-dir", type=Path, default=Path(os.environ.get("NEBULA_STATE_DIR") or ".state"))
    ap.add_argument("--keep", action="store_true", help="keep the instance directory (console log, disk)")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # in order with the setup scripts' output
    state = args.state_dir.resolve()
    image_dir = state / "images" / "nebula-tiny"
    setup(state, image_dir)
    ok = asyncio.run(smoke(state, image_dir, args.runs, args.keep))
    print("SMOKE " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
