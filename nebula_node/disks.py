"""Per-instance disks on a compute node, made with qemu-img.

Each instance owns ``<root>/<instance id>/``: ``disk.qcow2`` (a qcow2 overlay on a cached
base image, grown to the requested size), blank qcow2 data disks such as ``data.qcow2``,
and ``console.log`` (where libvirt writes the serial console).

A disk is created under a temporary name and hard-linked into place, so a disk under its
final name is always complete, and two creators can never overwrite each other. Creating
a disk that exists with the same spec returns it; with a different spec it is a conflict.
qemu-img runs as a subprocess with an argument vector, never through a shell.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger(__name__)

GIB = 1 << 30
OVERLAY_NAME = "disk"
CONSOLE_LOG_NAME = "console.log"
BASE_FORMATS = frozenset({"qcow2", "raw"})
_DISK_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


# --- errors ------------------------------------------------------------------------------


class DiskError(Exception):
    """Base of every instance disk failure."""


class DiskTooSmall(DiskError):
    """The requested disk is smaller than the base image it would sit on."""

    def __init__(self, base: Path, *, base_size: int, requested_size: int) -> None:
        super().__init__(
            f"base image {base} is {base_size} bytes ({_gib(base_size)} GiB), "
            f"larger than the requested disk of {requested_size} bytes ({_gib(requested_size)} GiB)"
        )
        self.base = base
        self.base_size = base_size
        self.requested_size = requested_size


class DiskConflict(DiskError):
    """A disk already exists under that name with a different spec."""

    def __init__(self, path: Path, *, existing: DiskSpec, requested: DiskSpec) -> None:
        super().__init__(f"disk {path} exists as {existing}, requested {requested}")
        self.path = path
        self.existing = existing
        self.requested = requested


class BaseImageUnusable(DiskError):
    """The base image is missing, of an unsupported format, or has a backing file itself."""

    def __init__(self, base: Path, reason: str) -> None:
        super().__init__(f"base image {base}: {reason}")
        self.base = base


class QemuImgFailed(DiskError):
    """qemu-img failed: ``stderr`` holds what it said (or why it never answered).

    ``returncode`` is None when it could not be started or was killed after the timeout.
    """

    def __init__(self, argv: list[str], stderr: str, *, returncode: int | None = None) -> None:
        status = "failed" if returncode is None else f"exited {returncode}"
        super().__init__(f"{' '.join(argv)} {status}: {stderr.strip()}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


# --- values ------------------------------------------------------------------------------


class DiskSpec(msgspec.Struct, frozen=True):
    """What makes two disks the same: format, virtual size in bytes, backing file and format."""

    format: str
    virtual_size: int
    backing_file: str | None = None
    backing_format: str | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> DiskSpec:
        """Read the spec from ``qemu-img info --output=json``."""
        return cls(
            format=info["format"],
            virtual_size=info["virtual-size"],
            backing_file=info.get("backing-filename"),
            backing_format=info.get("backing-filename-format"),
        )

    def create_options(self) -> list[str]:
        """The ``qemu-img create`` options that make a disk of this spec (size aside)."""
        if not self.backing_file:
            return ["-f", self.format]
        return ["-f", self.format, "-b", self.backing_file, "-F", str(self.backing_format)]


def check_instance_id(instance_id: str | uuid.UUID) -> str:
    """Return the canonical (lowercase, hyphenated) form of a UUID, else raise ValueError.

    Instance ids become directory names; only a UUID is accepted, so no path traversal.
    """
    text = str(instance_id)
    try:
        canonical = str(uuid.UUID(text))
    except ValueError:
        canonical = None
    if canonical is None or canonical != text.lower():
        raise ValueError(f"instance id must be a UUID: {text!r}")
    return canonical


# --- the disks ---------------------------------------------------------------------------


class InstanceDisks:
    """The disks of every instance on this node, under ``<root>/<instance id>/``."""

    def __init__(self, root: Path, *, qemu_img: str = "qemu-img", timeout: float = 120.0) -> None:
        self.root = Path(root)
        self._qemu_img = qemu_img
        self._timeout = timeout

    def instance_dir(self, instance_id: str | uuid.UUID) -> Path:
        """The instance's directory (not created here)."""
        return self.root / check_instance_id(instance_id)

    def console_log_path(self, instance_id: str | uuid.UUID) -> Path:
        """Where libvirt writes the serial console; its directory exists once a disk does."""
        return self.instance_dir(instance_id) / CONSOLE_LOG_NAME

    async def create_overlay(self, instance_id: str | uuid.UUID, base_path: Path, size_gb: int) -> Path:
        """Make ``disk.qcow2``: a qcow2 overlay on ``base_path`` of ``size_gb`` GiB.

        The base is qcow2 or raw (probed, then pinned with ``-F``) and must not have a
        backing file of its own. Raises DiskTooSmall if the base is larger than the request.
        Idempotent: an existing overlay with the same base, format and size is returned;
        one with a different spec raises DiskConflict.
        """
        size = _size_bytes(size_gb)
        base = Path(base_path).resolve()
        base_info = await self._inspect_base(base)
        if base_info.virtual_size > size:
            raise DiskTooSmall(base, base_size=base_info.virtual_size, requested_size=size)
        want = DiskSpec("qcow2", size, str(base), base_info.format)
        return await self._ensure_disk(self._disk_path(instance_id, OVERLAY_NAME), want)

    async def create_blank(self, instance_id: str | uuid.UUID, size_gb: int, name: str = "data") -> Path:
        """Make ``<name>.qcow2``: an empty qcow2 disk of ``size_gb`` GiB.

        Idempotent: an existing blank disk of that size is returned; anything else under
        that name raises DiskConflict.
        """
        if not _DISK_NAME.fullmatch(name):
            raise ValueError(f"disk name must match {_DISK_NAME.pattern}: {name!r}")
        want = DiskSpec("qcow2", _size_bytes(size_gb))
        return await self._ensure_disk(self._disk_path(instance_id, name), want)

    async def delete(self, instance_id: str | uuid.UUID) -> None:
        """Remove the instance's directory and everything in it; succeeds if it is missing."""
        directory = self.instance_dir(instance_id)
        await asyncio.to_thread(_remove_tree, directory)
        log.info("deleted disks instance=%s", directory.name)

    def _disk_path(self, instance_id: str | uuid.UUID, name: str) -> Path:
        directory = self.instance_dir(instance_id)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{name}.qcow2"

    async def _inspect_base(self, base: Path) -> DiskSpec:
        if not base.is_file():
            raise BaseImageUnusable(base, "no such file")
        info = await self._info(base)
        spec = DiskSpec.from_info(info)
        if spec.format not in BASE_FORMATS:
            supported = ", ".join(sorted(BASE_FORMATS))
            raise BaseImageUnusable(base, f"format {spec.format!r} is not one of {supported}")
        # A base pointing at other files could expose any file of the host to the guest.
        backing = spec.backing_file or info.get("full-backing-filename")
        if backing is not None:
            raise BaseImageUnusable(base, f"has a backing file of its own ({backing})")
        data_file = info.get("format-specific", {}).get("data", {}).get("data-file")
        if data_file is not None:
            raise BaseImageUnusable(base, f"keeps its data in an external file ({data_file})")
        return spec

    async def _ensure_disk(self, path: Path, want: DiskSpec) -> Path:
        """Return ``path`` once it holds a disk of spec ``want``; create it if absent."""
        if not path.exists() and await self._publish_new(path, want):
            log.info("created disk %s spec=%s", path, want)
            return path
        have = DiskSpec.from_info(await self._info(path, pinned_format=want.format))
        if have != want:
            raise DiskConflict(path, existing=have, requested=want)
        return path

    async def _publish_new(self, path: Path, want: DiskSpec) -> bool:
        """Create the disk under a temporary name and link it to ``path``.

        Returns False, leaving ``path`` untouched, if something got there first.
        """
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            await self._run("create", "-q", *want.create_options(), tmp, str(want.virtual_size))
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    async def _info(self, path: Path, *, pinned_format: str | None = None) -> dict[str, Any]:
        """``qemu-img info`` as a dict; ``pinned_format`` stops qemu-img probing the format.

        Probing is for bases only: a guest can write any header into its own disk.
        """
        # -U: a running VM holds a write lock on its disks; reading metadata is still safe.
        pinned = ["-f", pinned_format] if pinned_format else []
        return json.loads(await self._run("info", "-U", "--output=json", *pinned, str(path)))

    async def _run(self, *args: str) -> bytes:
        """Run qemu-img with ``args``; return stdout or raise QemuImgFailed with its stderr."""
        argv = [self._qemu_img, *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise QemuImgFailed(argv, f"cannot start: {exc}") from exc
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), self._timeout)
        except TimeoutError:
            await _reap(proc)
            raise QemuImgFailed(argv, f"killed after no answer in {self._timeout:g}s") from None
        except BaseException:
            await _reap(proc)
            raise
        if proc.returncode != 0:
            raise QemuImgFailed(argv, stderr.decode(errors="replace"), returncode=proc.returncode)
        return stdout


def _size_bytes(size_gb: int) -> int:
    if isinstance(size_gb, bool) or not isinstance(size_gb, int) or size_gb < 1:
        raise ValueError(f"disk size must be a whole number of GiB, at least 1: {size_gb!r}")
    return size_gb * GIB


def _gib(size: int) -> str:
    return f"{size / GIB:g}"


def _remove_tree(directory: Path) -> None:
    try:
        shutil.rmtree(directory)
    except FileNotFoundError:
        pass


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill a qemu-img that must not outlive its caller, and wait for it."""
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
