"""The node's image cache: artifacts fetched once per node and kept by sha256.

An artifact (a qcow2 or raw base image, a kernel, an initrd) is named by the sha256 of its
bytes and lives at ``<root>/sha256/<hex>``. It is fetched from a local path, a ``file://``
URL or an ``http(s)://`` URL - as the operator's image policy allows (`image_fetch`) - into
a temporary file in the same directory, hashed while it streams, and renamed into place
only once its sha256 (and size, when known) match. So a file under its final name is
always complete and verified, and is trusted by its name. A mismatch says what was
expected and how much was read, never the hash of what was read (which would make the
cache an oracle for files it may not serve).

A direct-kernel image is two artifacts (kernel and initrd): ensure each of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

import aiohttp
import msgspec

from nebula_core.contract.image_sources import ImageSources
from nebula_core.contract.redaction import redacted_url
from nebula_node.image_fetch import (
    CHUNK_BYTES,
    ImageError,
    ImageFetchFailed,
    ImageNotFound,
    ImageSourceRefused,
    read,
)

__all__ = [
    "ArtifactRef",
    "CachedImage",
    "ImageCache",
    "ImageChecksumMismatch",
    "ImageError",
    "ImageFetchFailed",
    "ImageNotFound",
    "ImageSizeMismatch",
    "ImageSourceRefused",
    "ImageVerificationFailed",
    "check_sha256",
]

log = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_HTTP_SCHEMES = ("http://", "https://")
# No total deadline: a multi-GiB image may take long; a stalled connection may not.
DEFAULT_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30, sock_read=60)


# --- errors (those of reading a source live in `image_fetch`) ----------------------------


class ImageVerificationFailed(ImageError):
    """The fetched bytes are not the artifact that was asked for; nothing was cached."""


class ImageChecksumMismatch(ImageVerificationFailed):
    """The fetched bytes do not hash to the registered sha256 (``expected``); ``size`` is
    how many bytes were read. The hash of what was read is not told."""

    def __init__(self, source: str, *, expected: str, size: int) -> None:
        super().__init__(source, f"did not match its registered sha256 {expected} ({size} bytes read)")
        self.expected = expected
        self.size = size


class ImageSizeMismatch(ImageVerificationFailed):
    """The fetched bytes are longer or shorter than the expected size."""

    def __init__(self, source: str, *, expected: int, actual: int, aborted: bool = False) -> None:
        got = f"more than {expected} (stopped after {actual})" if aborted else str(actual)
        super().__init__(source, f"size is {got} bytes, expected {expected}")
        self.expected = expected
        self.actual = actual


# --- values ------------------------------------------------------------------------------


class ArtifactRef(Protocol):
    """What the cache needs to know about an artifact.

    ``nebula_core.contract.node.ImageSpec`` fits as it is. ``sha256`` is lowercase hex;
    ``source`` is an absolute local path, a ``file://`` URL or an ``http(s)://`` URL;
    ``size`` in bytes, with None or 0 meaning unknown (the sha256 check still applies).
    """

    @property
    def sha256(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def size(self) -> int | None: ...


class CachedImage(msgspec.Struct, frozen=True):
    """A verified artifact in the cache."""

    sha256: str
    path: Path
    size: int


def check_sha256(sha256: str) -> str:
    """Return ``sha256`` if it is 64 lowercase hex digits, else raise ValueError."""
    if not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"not a lowercase hex sha256: {sha256!r}")
    return sha256


# --- the cache ---------------------------------------------------------------------------


class ImageCache:
    """Artifacts under ``<root>/sha256/``, each fetched at most once per node.

    ``sources`` is the operator's image policy (`Settings.image_sources`); without one,
    local sources must lie under ``root`` itself (the default image root is the cache's
    own directory, `Settings.images_dir`) and http(s) ones reach only global addresses.
    Each http(s) download uses a session of its own, whose resolver enforces the policy.
    """

    def __init__(
        self,
        root: Path,
        *,
        sources: ImageSources | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_HTTP_TIMEOUT,
    ) -> None:
        self.root = Path(root)
        self._dir = self.root / "sha256"
        self.sources = sources or ImageSources(roots=(str(self.root),))
        self._timeout = timeout
        self._locks = _KeyedLocks()

    def path_for(self, sha256: str) -> Path:
        """Where the artifact with this sha256 lives (whether or not it is cached yet)."""
        return self._dir / check_sha256(sha256)

    async def ensure(self, artifact: ArtifactRef, *, verify: bool = False) -> CachedImage:
        """Return the cached artifact, fetching and verifying it first if it is missing.

        Idempotent: a file under its sha256 name is trusted and returned as it is, unless
        it contradicts a known ``artifact.size`` or, with ``verify=True``, its contents no
        longer hash to its name; then it is discarded and fetched again. Concurrent calls
        for one sha256 in this process share a lock, so the source is read once.
        """
        path = self.path_for(artifact.sha256)
        _check_source(artifact.source)
        async with self._locks.hold(artifact.sha256):
            if not await self._usable(artifact, path, verify=verify):
                await self._fetch(artifact, path)
            return CachedImage(artifact.sha256, path, path.stat().st_size)

    async def remove(self, sha256: str) -> None:
        """Delete a cached artifact; succeeds if it is not cached.

        The caller must know that no instance disk still uses it as a backing file.
        """
        path = self.path_for(sha256)
        async with self._locks.hold(sha256):
            path.unlink(missing_ok=True)

    def entries(self) -> list[CachedImage]:
        """Every cached artifact, sorted by sha256 (downloads in progress are not listed)."""
        if not self._dir.is_dir():
            return []
        found = (p for p in self._dir.iterdir() if _SHA256_HEX.fullmatch(p.name) and p.is_file())
        return [CachedImage(p.name, p, p.stat().st_size) for p in sorted(found)]

    def discard_partial_downloads(self) -> int:
        """Delete temporary files left by downloads a crash interrupted; return how many.

        Call it at agent start, before any ``ensure`` runs.
        """
        if not self._dir.is_dir():
            return 0
        partial = list(self._dir.glob(".*.part"))
        for path in partial:
            path.unlink(missing_ok=True)
        return len(partial)

    async def _usable(self, artifact: ArtifactRef, path: Path, *, verify: bool) -> bool:
        """True if ``path`` holds the artifact; a cached file proven wrong is deleted."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        expected = _expected_size(artifact)
        if expected is not None and size != expected:
            problem = f"size {size} != expected {expected}"
        elif verify and await asyncio.to_thread(_hash_file, path) != artifact.sha256:
            problem = "its contents no longer hash to its name"
        else:
            return True
        log.warning("discarding corrupt cached image sha256=%s: %s", artifact.sha256, problem)
        path.unlink(missing_ok=True)
        return False

    async def _fetch(self, artifact: ArtifactRef, path: Path) -> None:
        """Download into a temporary file beside ``path``; rename it into place once verified."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        except OSError as exc:
            raise ImageFetchFailed(artifact.source, f"cannot write to the cache: {exc}") from exc
        part = Path(name)
        log.info("fetching image sha256=%s source=%s", artifact.sha256, redacted_url(artifact.source))
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = await self._copy(artifact, out)
                await asyncio.to_thread(os.fsync, out.fileno())
            _verify(artifact, digest, size)
            # Base images are read by the hypervisor's own user; their bytes are public.
            part.chmod(0o644)
            part.replace(path)
        except OSError as exc:
            raise ImageFetchFailed(artifact.source, f"download failed: {exc}") from exc
        finally:
            part.unlink(missing_ok=True)
        log.info("cached image sha256=%s size=%d", artifact.sha256, size)

    async def _copy(self, artifact: ArtifactRef, out: BinaryIO) -> tuple[str, int]:
        """Stream the source into ``out``; return its sha256 and length.

        Stops as soon as more bytes than a known ``artifact.size`` arrive, so a runaway
        source cannot fill the disk.
        """
        hasher = hashlib.sha256()
        size, limit = 0, _expected_size(artifact)
        async with aclosing(read(artifact.source, self.sources, self._timeout)) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                if limit is not None and size > limit:
                    raise ImageSizeMismatch(artifact.source, expected=limit, actual=size, aborted=True)
                await asyncio.to_thread(_absorb, hasher, out, chunk)
        return hasher.hexdigest(), size


# --- helpers -----------------------------------------------------------------------------


class _KeyedLocks:
    """One asyncio.Lock per key, forgotten once nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: Counter[str] = Counter()

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


def _is_http(source: str) -> bool:
    return source.lower().startswith(_HTTP_SCHEMES)


def _check_source(source: str) -> None:
    if not (source.startswith(("/", "file://")) or _is_http(source)):
        raise ImageFetchFailed(source, "unsupported source: use an absolute path, a file:// or an http(s):// URL")


def _expected_size(artifact: ArtifactRef) -> int | None:
    """The size to verify against; 0 means unknown, as no image is empty."""
    return artifact.size or None


def _absorb(hasher: hashlib._Hash, out: BinaryIO, chunk: bytes) -> None:
    hasher.update(chunk)
    out.write(chunk)


def _verify(artifact: ArtifactRef, digest: str, size: int) -> None:
    expected = _expected_size(artifact)
    if expected is not None and size != expected:
        raise ImageSizeMismatch(artifact.source, expected=expected, actual=size)
    if digest != artifact.sha256:
        raise ImageChecksumMismatch(artifact.source, expected=artifact.sha256, size=size)


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()
