"""The host files a guest boots from and writes to, as the driver attaches them.

A `GuestMedia` prepares them for a create (images fetched into the node's sha256 cache,
direct-kernel manifests read), makes the instance's disks, names its console log and
removes it all on delete. `LocalMedia` is the real one; the fleet simulator has its own
(in `nebula_node.sim`). Failures of the image cache and of qemu-img come out as the typed
errors a node's reply carries (`media_errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urljoin

import msgspec

from nebula_core.contract.errors import Conflict, Invalid, NotFound
from nebula_core.contract.node import CreateRequest, ImageSpec
from nebula_node import disks, images
from nebula_node.libvirt.domain_xml import AttachedDisk, KernelBoot
from nebula_node.libvirt.errors import HypervisorError


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


def disk_paths(directory: Path, image: ImageSpec) -> tuple[AttachedDisk, ...]:
    """An instance's disks in its directory: a qcow2 image's overlay, or a direct-kernel
    guest's blank data disk."""
    name = f"{disks.OVERLAY_NAME}.qcow2" if image.format == "qcow2" else "data.qcow2"
    return (AttachedDisk(path=str(directory / name)),)


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
def media_errors() -> Iterator[None]:
    """The image cache's and the disks' own errors, as the typed errors a reply carries."""
    try:
        yield
    except images.ImageNotFound as err:
        raise NotFound(str(err)) from err
    except (images.ImageVerificationFailed, images.ImageSourceRefused) as err:
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
        with media_errors():
            base = await self._cache.ensure(req.image)
            attached = disk_paths(self._disks.instance_dir(req.instance_id), req.image)
            if req.image.format == "qcow2":
                return Media(None, attached)
            return Media(await self._kernel(req.image, base.path), attached)

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
        with media_errors():
            if media.kernel is None:
                base = self._cache.path_for(req.image.sha256)
                await self._disks.create_overlay(req.instance_id, base, req.disk_gb)
            else:
                await self._disks.create_blank(req.instance_id, req.disk_gb, name="data")

    async def remove(self, instance_id: uuid.UUID) -> None:
        await self._disks.delete(instance_id)
