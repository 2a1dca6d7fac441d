"""Where an image may come from: the policy the API applies when an image is registered,
and a node applies again, on its own filesystem and DNS, each time it fetches one.

- A local source (an absolute path or a `file://` URL) lies under one of the operator's
  image roots (`NEBULA_IMAGE_ROOTS`): it has no `..`, and its real path (every symlink
  followed) is inside a root's real path.
- An http(s) source reaches only globally routable addresses: not loopback, link-local,
  private-use, reserved or this host's own, unless the operator allows it
  (`NEBULA_IMAGE_ALLOW_PRIVATE`). At registration only a literal address (or `localhost`)
  can be judged; a node judges every address a name resolves to, at every redirect.

The decisions here are made from values: resolving a path is the caller's, given as a
function (`realpath`), and so is resolving a host name. Messages name a source only with
its credentials redacted.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import socket
from collections.abc import Callable, Sequence
from urllib.parse import unquote, urlsplit

import msgspec

from nebula_core.contract.redaction import redacted_url

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

HTTP_SCHEMES = ("http", "https")
ALLOW_PRIVATE_HINT = "NEBULA_IMAGE_ALLOW_PRIVATE=1 allows it"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Forms of IPv4 that inet_aton (and so getaddrinfo) reads as an address: 127.1, 0x7f.1, 2130706433.
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")


class SourceRefused(ValueError):
    """The source is not one the policy allows: `reason` says why; the message names the
    source with its credentials redacted."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"image source {redacted_url(source)}: {reason}")
        self.source = redacted_url(source)
        self.reason = reason


class ImageSources(msgspec.Struct, frozen=True, kw_only=True):
    """The operator's policy: the directories local sources may lie under (as configured,
    not yet resolved), and whether http(s) sources may reach non-global addresses."""

    roots: tuple[str, ...]
    allow_private: bool = False


def is_http(source: str) -> bool:
    return urlsplit(source).scheme.lower() in HTTP_SCHEMES


# --- local sources -----------------------------------------------------------------------


def local_path(source: str) -> str:
    """The absolute, normalised path an absolute path or a `file://` URL names, judged by
    its text alone: `SourceRefused` for a relative path, a `..` component, a NUL byte, or a
    `file://` URL naming another host."""
    path = source
    if source.startswith("file://"):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise SourceRefused(source, "a file:// URL must name a local path")
        path = unquote(parts.path)
    if "\x00" in path:
        raise SourceRefused(source.replace("\x00", "\\x00"), "a path may not hold a NUL byte")
    if not path.startswith("/"):
        raise SourceRefused(source, "not an absolute path")
    if ".." in path.split("/"):
        raise SourceRefused(source, "a path may not hold '..'")
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/")


def within(path: str, root: str) -> bool:
    """True if `path` is `root` or lies below it (both absolute and normalised)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_local(source: str, roots: Sequence[str], realpath: Callable[[str], str]) -> str:
    """The real path of a local source that lies under one of `roots`, each root and the
    source resolved by `realpath` (symlinks followed); `SourceRefused` otherwise."""
    path = local_path(source)
    real = realpath(path)
    if any(within(real, realpath(root)) for root in roots):
        return real
    where = ", ".join(roots) or "(none configured)"
    how = "its real path (symlinks followed) lies" if real != path else "it lies"
    raise SourceRefused(source, f"{how} outside the image roots: {where} (NEBULA_IMAGE_ROOTS)")


# --- http(s) sources ---------------------------------------------------------------------


def address_refusal(address: Address) -> str | None:
    """What kind of address `address` is when an image may not be fetched from it by
    default (None: a globally routable address). An IPv4 address embedded in an IPv6 one
    (`::ffff:127.0.0.1`, NAT64 `64:ff9b::7f00:1`) is judged as itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private-use address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved or not address.is_global:
        return "an address that is not globally routable"
    return None


def refused_address(address: Address | str, kind: str) -> str:
    """The reason an address is refused, as `SourceRefused` gives it."""
    return f"reaches {address}, {kind} ({ALLOW_PRIVATE_HINT})"


def forbidden_address(address: Address) -> str | None:
    """Why no image may be fetched from `address` by default, as `SourceRefused` gives it
    (None: it may be)."""
    kind = address_refusal(address)
    return None if kind is None else refused_address(address, kind)


def literal_address(host: str) -> Address | None:
    """The address a URL's host is written as (including legacy IPv4 forms such as
    `127.1` or `2130706433`, which resolvers read as addresses), or None for a name."""
    host = host.rstrip(".").lower()
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_url(source: str, *, allow_private: bool, judge: Callable[[Address], str | None] = forbidden_address) -> None:
    """What can be judged of an http(s) URL from its text: its scheme, that it names a
    host, and - unless `allow_private` - that the host is neither `localhost` nor written
    as an address `judge` forbids (a node's judge knows its own addresses too).
    `SourceRefused` otherwise."""
    try:
        parts = urlsplit(source)
        host = parts.hostname
    except ValueError as err:
        raise SourceRefused(source, f"not a valid URL ({err})") from err
    if parts.scheme.lower() not in HTTP_SCHEMES:
        raise SourceRefused(source, "only http(s) URLs are fetched")
    if not host:
        raise SourceRefused(source, "names no host")
    if allow_private:
        return
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        raise SourceRefused(source, refused_address(host, "this host"))
    address = literal_address(host)
    if address is not None and (problem := judge(address)) is not None:
        raise SourceRefused(source, problem)


# --- registration ------------------------------------------------------------------------


def check_source(source: str, policy: ImageSources, realpath: Callable[[str], str]) -> None:
    """What the API checks when an image is registered: a local source lies under a root,
    an http(s) URL names no forbidden host by its text. `SourceRefused` otherwise."""
    if is_http(source):
        check_url(source, allow_private=policy.allow_private)
    else:
        check_local(source, policy.roots, realpath)
