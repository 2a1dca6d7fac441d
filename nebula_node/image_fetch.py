"""Reading an image's bytes from its source, as the operator's image policy allows
(`nebula_core.contract.image_sources`), judged here on this node's own filesystem and DNS.

- A local source is opened only if its real path lies under an image root. The file that
  was opened is checked again through its descriptor, so a symlink swapped in after the
  check cannot lead out of the root, and it must be a regular file.
- An http(s) source is fetched through a resolver that refuses a host when any address it
  resolves to is forbidden; the connection goes to the addresses that were checked, with
  no second lookup, so a DNS answer cannot change in between. Redirects are followed here,
  at most `MAX_REDIRECTS`, each new URL judged as the first was.

Every error names the source with its credentials (`user:pass@`, the query) redacted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import stat
from collections.abc import AsyncGenerator, Sequence
from typing import BinaryIO

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from nebula_core.contract.image_sources import (
    Address,
    ImageSources,
    SourceRefused,
    check_local,
    check_url,
    forbidden_address,
    is_http,
    refused_address,
)
from nebula_core.contract.redaction import redacted_url

CHUNK_BYTES = 1 << 20
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


# --- errors ------------------------------------------------------------------------------


class ImageError(Exception):
    """Base of every image failure; ``source`` names where the bytes came from, redacted."""

    def __init__(self, source: str, message: str) -> None:
        self.source = redacted_url(source)
        super().__init__(f"image {self.source}: {message}")


class ImageNotFound(ImageError):
    """The source does not exist (a missing local file, HTTP 404 or 410)."""


class ImageFetchFailed(ImageError):
    """The source exists but could not be read or stored (HTTP error, network, I/O)."""


class ImageSourceRefused(ImageError):
    """The image policy forbids reading this source (outside the image roots, a forbidden
    address); nothing was read."""


# --- reading -----------------------------------------------------------------------------


def read(source: str, policy: ImageSources, timeout: aiohttp.ClientTimeout) -> AsyncGenerator[bytes, None]:
    """The bytes of `source` in chunks, if `policy` allows reading it."""
    if is_http(source):
        return _http_chunks(source, policy, timeout)
    return _file_chunks(source, policy.roots)


# --- local files -------------------------------------------------------------------------


async def _file_chunks(source: str, roots: Sequence[str]) -> AsyncGenerator[bytes, None]:
    stream = await asyncio.to_thread(open_local, source, roots)
    with stream:
        while chunk := await asyncio.to_thread(stream.read, CHUNK_BYTES):
            yield chunk


def open_local(source: str, roots: Sequence[str]) -> BinaryIO:
    """The local source opened for reading, once it is known to be a regular file under
    one of `roots` - checked on its real path before opening, and on the open file after."""
    try:
        real = check_local(source, roots, os.path.realpath)
    except SourceRefused as err:
        raise ImageSourceRefused(source, err.reason) from err
    try:
        # NOFOLLOW: the real path has no symlink left, unless one was swapped in since.
        # NONBLOCK: a FIFO put in a root must not hang the agent on open.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ImageNotFound(source, "no such file") from exc
    except OSError as exc:
        raise ImageFetchFailed(source, f"cannot open: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageSourceRefused(source, "not a regular file")
        opened = _opened_path(fd)
        if opened is not None and not _under_any(opened, roots):
            raise ImageSourceRefused(source, "changed while it was opened: it now leads outside the image roots")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _opened_path(fd: int) -> str | None:
    """The path the kernel knows an open file by (Linux's /proc); None where there is none."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _under_any(real: str, roots: Sequence[str]) -> bool:
    try:
        check_local(real, roots, os.path.realpath)
    except SourceRefused:
        return False
    return True


# --- http(s) -----------------------------------------------------------------------------


def is_own_address(address: Address) -> bool:
    """True if `address` is one of this host's own: the kernel lets a socket bind to it.
    (On a host with `ip_nonlocal_bind` set every address binds, so every global address
    is refused as this host's own, which errs on the safe side.)"""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def address_problem(address: Address) -> str | None:
    """Why no image may be fetched from `address` without NEBULA_IMAGE_ALLOW_PRIVATE: one
    the contract forbids anywhere, or one of this host's own."""
    problem = forbidden_address(address)
    if problem is None and is_own_address(address):
        problem = refused_address(address, "one of this host's own addresses")
    return problem


class _HostRefused(Exception):
    """A host name resolved to a forbidden address (raised through aiohttp, which wraps
    only OSError)."""


class GuardedResolver(AbstractResolver):
    """Resolves a host name and refuses it when any of its addresses is forbidden; the
    connector then connects only to the addresses returned here."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for result in found:
            problem = address_problem(ipaddress.ip_address(result["host"]))
            if problem is not None:
                raise _HostRefused(f"{host} {problem}")
        return found

    async def close(self) -> None:
        await self._inner.close()


def check_hop(url: str, policy: ImageSources) -> None:
    """What can be judged of a URL before connecting (a host written as an address is seen
    by no resolver): `check_url`, with this host's own addresses forbidden too."""
    check_url(url, allow_private=policy.allow_private, judge=address_problem)


async def _http_chunks(
    source: str, policy: ImageSources, timeout: aiohttp.ClientTimeout
) -> AsyncGenerator[bytes, None]:
    url = source
    try:
        async with _session(policy, timeout) as session:
            for _ in range(MAX_REDIRECTS + 1):
                check_hop(url, policy)
                async with session.get(url, allow_redirects=False) as response:
                    location = response.headers.get("Location")
                    if response.status in _REDIRECT_STATUSES and location:
                        url = str(response.url.join(URL(location)))
                        continue
                    _check_status(source, response.status, response.reason)
                    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                        yield chunk
                    return
            raise ImageFetchFailed(source, f"more than {MAX_REDIRECTS} redirects")
    except (SourceRefused, _HostRefused) as err:
        reason = err.reason if isinstance(err, SourceRefused) else str(err)
        if url != source:
            reason = f"redirected to {redacted_url(url)}, which {reason}"
        raise ImageSourceRefused(source, reason) from None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        said = str(exc).replace(url, redacted_url(url)).replace(source, redacted_url(source))
        raise ImageFetchFailed(source, f"{type(exc).__name__}: {said}") from exc


def _session(policy: ImageSources, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    """A session of its own per download: its resolver enforces `policy` (unless private
    addresses are allowed), no proxy from the environment, no redirects of its own."""
    resolver = None if policy.allow_private else GuardedResolver()
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)


def _check_status(source: str, status: int, reason: str | None) -> None:
    if status in (404, 410):
        raise ImageNotFound(source, f"HTTP {status} {reason or ''}".rstrip())
    if status != 200:
        raise ImageFetchFailed(source, f"HTTP {status} {reason or ''}".rstrip())
