"""Where an image may come from, decided from values: which addresses an http(s) source may
reach, which local paths lie under an image root, what of a source a message may show."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from nebula_core import config
from nebula_core.contract.image_sources import (
    ImageSources,
    SourceRefused,
    address_refusal,
    check_local,
    check_source,
    check_url,
    literal_address,
)
from nebula_core.contract.redaction import redacted_url
from nebula_node import image_fetch
from nebula_node.image_fetch import GuardedResolver, address_problem, is_own_address

# --- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("64:ff9b::7f00:1", "loopback"),  # NAT64
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "link-local"),  # a cloud's metadata service
        ("fe80::1", "link-local"),
        ("10.0.2.2", "private-use"),  # the host, as a QEMU user-mode guest sees it
        ("172.16.0.1", "private-use"),
        ("192.168.1.1", "private-use"),
        ("fd00::2", "private-use"),
        ("::ffff:10.1.2.3", "private-use"),
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
    ],
)
def test_addresses_inside_a_host_or_its_network_are_refused(address: str, kind: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None and kind in refusal


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_globally_routable_addresses_are_allowed(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("::1", "::1"),
        ("images.example", None),
        ("1.2.3.4.example", None),
        ("0xdeadbeef.example", None),
    ],
)
def test_a_host_written_as_an_address_is_read_as_resolvers_read_it(host: str, address: str | None) -> None:
    expected = None if address is None else ipaddress.ip_address(address)
    assert literal_address(host) == expected


# --- http(s) URLs as written -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/base.qcow2",
        "http://localhost:8774/v1/users",
        "http://LOCALHOST./x",
        "http://nats.localhost:4222/",
        "http://[::1]/x",
        "http://[::ffff:7f00:1]/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.2.2:4222/",
        "http://2130706433/x",
        "https://0x7f.1/x",
    ],
)
def test_a_url_naming_a_forbidden_host_is_refused_by_its_text(url: str) -> None:
    with pytest.raises(SourceRefused, match="NEBULA_IMAGE_ALLOW_PRIVATE=1 allows it"):
        check_url(url, allow_private=False)
    check_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url", ["https://images.example/debian.qcow2", "http://93.184.216.34/x", "HTTPS://cdn.example/"]
)
def test_a_url_naming_a_public_host_passes_the_check_by_text(url: str) -> None:
    check_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "why"),
    [("ftp://images.example/x", "only http"), ("file:///etc/passwd", "only http"), ("http:///x", "no host")],
)
def test_only_http_urls_naming_a_host_are_fetched(url: str, why: str) -> None:
    with pytest.raises(SourceRefused, match=why):
        check_url(url, allow_private=True)


def test_a_refusal_never_shows_credentials() -> None:
    with pytest.raises(SourceRefused) as caught:
        check_url("http://admin:hunter2@127.0.0.1/x.qcow2?X-Amz-Signature=abc123", allow_private=False)
    message = str(caught.value)
    assert "hunter2" not in message and "abc123" not in message
    assert "http://admin:***@127.0.0.1/x.qcow2?***" in message


# --- local paths -------------------------------------------------------------------------


def links(table: dict[str, str]) -> Callable[[str], str]:
    """A `realpath` for a filesystem whose only symlinks are `table` (a path prefix → its target)."""

    def realpath(path: str) -> str:
        for link, target in table.items():
            if path == link or path.startswith(link + "/"):
                return target + path[len(link) :]
        return path

    return realpath


ROOTS = ("/srv/images",)


@pytest.mark.parametrize(
    "source",
    ["/srv/images/tiny/manifest.json", "file:///srv/images/base.qcow2", "file://localhost/srv/images/a", "/srv/images"],
)
def test_a_path_under_a_root_is_allowed(source: str) -> None:
    assert check_local(source, ROOTS, links({})).startswith("/srv/images")


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("/etc/shadow", "outside the image roots"),
        ("/srv/images-private/a", "outside the image roots"),  # a name that only starts like the root
        ("/srv/images/../secrets/a", "'..'"),
        ("/srv/images/a/..", "'..'"),
        ("file:///srv/images/%2E%2E/x", "'..'"),
        ("srv/images/a", "not an absolute path"),
        ("file://fileserver/srv/images/a", "local path"),
        ("/srv/images/a\x00b", "NUL"),
    ],
)
def test_a_path_outside_the_roots_or_written_to_climb_out_is_refused(source: str, why: str) -> None:
    with pytest.raises(SourceRefused, match=why):
        check_local(source, ROOTS, links({}))


def test_a_symlink_is_judged_by_where_it_leads() -> None:
    fs = links({"/srv/images/etc": "/etc", "/srv/images/current": "/srv/images/v2"})

    with pytest.raises(SourceRefused, match="real path"):
        check_local("/srv/images/etc/shadow", ROOTS, fs)
    assert check_local("/srv/images/current/a.qcow2", ROOTS, fs) == "/srv/images/v2/a.qcow2"


def test_a_root_that_is_a_symlink_holds_what_its_target_holds() -> None:
    fs = links({"/srv/images": "/data/images"})

    assert check_local("/srv/images/a.qcow2", ROOTS, fs) == "/data/images/a.qcow2"
    assert check_local("/data/images/a.qcow2", ROOTS, fs) == "/data/images/a.qcow2"


def test_no_root_configured_allows_no_local_path() -> None:
    with pytest.raises(SourceRefused, match="none configured"):
        check_local("/srv/images/a", (), links({}))


def test_registration_judges_local_paths_by_the_roots_and_urls_by_their_text() -> None:
    policy = ImageSources(roots=ROOTS)
    check_source("/srv/images/a", policy, links({}))
    check_source("https://images.example/a", policy, links({}))
    for refused in ("/etc/passwd", "http://127.0.0.1/a"):
        with pytest.raises(SourceRefused):
            check_source(refused, policy, links({}))
    check_source("http://127.0.0.1/a", ImageSources(roots=ROOTS, allow_private=True), links({}))


# --- redaction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@images.example/a.qcow2", "https://user:***@images.example/a.qcow2"),
        ("https://token@images.example/a", "https://***@images.example/a"),
        ("https://images.example/a?X-Amz-Signature=abc&x=1", "https://images.example/a?***"),
        ("https://u:p@h/a?sig=1#frag", "https://u:***@h/a?***"),
        ("https://images.example/a.qcow2", "https://images.example/a.qcow2"),
        ("/srv/images/odd?name@x", "/srv/images/odd?name@x"),  # a path is not a URL
    ],
)
def test_a_source_is_shown_without_its_credentials(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


# --- settings ----------------------------------------------------------------------------


def test_the_default_image_root_is_the_state_directorys_images() -> None:
    settings = config.load({}, state_dir="/var/lib/nebula")
    assert settings.image_sources == ImageSources(roots=("/var/lib/nebula/images",), allow_private=False)


def test_image_roots_and_allow_private_come_from_the_environment() -> None:
    environ = {"NEBULA_IMAGE_ROOTS": "/srv/images:/mnt/published, /opt/img", "NEBULA_IMAGE_ALLOW_PRIVATE": "1"}
    settings = config.load({**environ, "NEBULA_CONFIG": "/nonexistent"})
    assert settings.image_sources == ImageSources(
        roots=("/srv/images", "/mnt/published", "/opt/img"), allow_private=True
    )


# --- on a node: its own addresses, and every address a name resolves to ---------------


def test_the_hosts_own_addresses_are_known_by_binding_to_them() -> None:
    assert is_own_address(ipaddress.ip_address("127.0.0.1"))
    assert not is_own_address(ipaddress.ip_address("8.8.8.8"))


def test_a_global_address_of_this_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = ipaddress.ip_address("93.184.216.34")
    monkeypatch.setattr(image_fetch, "is_own_address", lambda address: address == mine)

    assert "this host's own" in (address_problem(mine) or "")
    assert address_problem(ipaddress.ip_address("8.8.8.8")) is None


class StaticDNS(AbstractResolver):
    """A DNS that answers from a table."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in self.table[host]
        ]

    async def close(self) -> None:
        pass


async def test_a_name_is_refused_when_any_of_its_addresses_is_forbidden() -> None:
    resolver = GuardedResolver(
        StaticDNS({"cdn.example": ["93.184.216.34", "8.8.8.8"], "split.example": ["93.184.216.34", "10.0.0.7"]})
    )

    assert [r["host"] for r in await resolver.resolve("cdn.example", 443)] == ["93.184.216.34", "8.8.8.8"]
    with pytest.raises(Exception, match=r"split.example reaches 10.0.0.7, a private-use address"):
        await resolver.resolve("split.example", 443)
