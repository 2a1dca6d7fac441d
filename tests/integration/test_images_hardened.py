"""Images cannot read the host or the internal network (issue 12).

- Only cloud admins register and remove images; only they see an image's source.
- A local source lies under an image root: `..`, symlinks out of a root and any other
  path are a 422 naming `$.source` at registration, and refused again by the node.
- An http(s) source reaches no loopback, link-local, private or host-own address unless
  the operator allows it; a node checks every address a name resolves to, and every
  redirect. Real HTTP servers on loopback play the image servers.
- A qcow2 image with a backing file or an external data file never reaches a guest.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import socket
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from nebula_core.api.app import make_app
from nebula_core.contract.errors import Invalid
from nebula_core.contract.image_sources import ImageSources
from nebula_core.contract.node import CreateRequest, ImageSpec
from nebula_core.contract.types import Resources
from nebula_node import image_fetch
from nebula_node.images import ImageCache, ImageNotFound, ImageSourceRefused
from nebula_node.libvirt.driver import LibvirtDriver
from nebula_node.sim import simulated_host_uri
from tests.integration.conftest import ADMIN_TOKEN, Client, Cloud

IMAGE = b"a disk image, as far as the cache can tell\n" * 1000
IMAGE_SHA = hashlib.sha256(IMAGE).hexdigest()


def image_body(source: str, name: str = "img") -> dict[str, Any]:
    return {"name": name, "format": "qcow2", "source": source, "sha256": IMAGE_SHA, "size": len(IMAGE)}


# --- who registers, who sees the source ------------------------------------------------


@dataclass
class People:
    member: Client
    reader: Client
    outsider: Client


@pytest.fixture
async def people(cloud: Cloud) -> People:
    project = await cloud.project("alpha")
    member_id, member = await cloud.user("mia")
    reader_id, reader = await cloud.user("rex")
    _, outsider = await cloud.user("otto")
    await cloud.member(project, member_id, "member")
    await cloud.member(project, reader_id, "reader")
    return People(member, reader, outsider)


async def test_only_cloud_admins_register_and_remove_images(cloud: Cloud, people: People, image_roots: str) -> None:
    body = image_body(f"{image_roots}/base.qcow2")
    for who in (people.member, people.reader, people.outsider):
        status, answer = await who.post("/v1/images", body)
        assert (status, answer["code"]) == (403, "forbidden")

    status, created = await cloud.admin.post("/v1/images", body)
    assert status == 201, created
    for who in (people.member, people.reader, people.outsider):
        status, _ = await who.call("DELETE", f"/v1/images/{created['id']}")
        assert status == 403
    status, page = await cloud.admin.get("/v1/images")
    assert [i["id"] for i in page["items"]] == [created["id"]]


async def test_a_user_made_cloud_admin_registers_images(cloud: Cloud, image_roots: str) -> None:
    status, admin = await cloud.admin.post("/v1/users", {"name": "ada", "is_admin": True})
    assert status == 201, admin
    status, created = await cloud.client(admin["token"]).post("/v1/images", image_body(f"{image_roots}/a.qcow2"))
    assert (status, created["source"]) == (201, f"{image_roots}/a.qcow2")


async def test_an_images_source_is_shown_to_cloud_admins_only(cloud: Cloud, people: People) -> None:
    source = "https://mirror:s3cret@images.example/debian.qcow2?X-Amz-Signature=abc"
    status, created = await cloud.admin.post("/v1/images", image_body(source))
    assert (status, created["source"]) == (201, source)

    assert (await cloud.admin.get(f"/v1/images/{created['id']}"))[1]["source"] == source
    for who in (people.member, people.reader, people.outsider):
        status, one = await who.get(f"/v1/images/{created['id']}")
        assert (status, one["source"], one["sha256"]) == (200, None, IMAGE_SHA)
        status, page = await who.get("/v1/images")
        assert [(i["id"], i["source"]) for i in page["items"]] == [(created["id"], None)]

    # Nor does the event stream tell it.
    assert (await registered_event(cloud, people.member))["source"] is None
    assert (await registered_event(cloud, cloud.admin))["source"] == source


async def registered_event(cloud: Cloud, who: Client) -> dict[str, Any]:
    """The data of the first `image.registered` event `who` is shown by /v1/events."""
    headers = {"Authorization": f"Bearer {who.token}"}
    timeout = aiohttp.ClientTimeout(total=10)
    async with cloud.session.get(cloud.base + "/v1/events?since=0", headers=headers, timeout=timeout) as response:
        kind = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and kind == "image.registered":
                return dict(json.loads(line[5:])["data"])
    raise AssertionError("no image.registered event")


# --- local sources at registration -----------------------------------------------------


async def test_nebula_tiny_as_nebula_up_lays_it_out_is_accepted(cloud: Cloud, image_roots: str) -> None:
    """`nebula up` builds nebula-tiny into <state>/images/nebula-tiny and registers its manifest."""
    tiny = Path(image_roots) / "nebula-tiny"
    tiny.mkdir(parents=True)
    (tiny / "manifest.json").write_text("{}")
    body = {**image_body(str((tiny / "manifest.json").resolve()), "nebula-tiny"), "format": "direct-kernel"}

    status, created = await cloud.admin.post("/v1/images", body)
    assert status == 201, created
    status, created = await cloud.admin.post("/v1/images", image_body((tiny / "manifest.json").as_uri(), "by-url"))
    assert status == 201, created


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("/etc/passwd", "outside the image roots"),
        ("{root}/../../etc/passwd", "'..'"),
        ("{root}/tiny/../../secret.img", "'..'"),
        ("file://{root}/%2e%2e/secret.img", "'..'"),
        ("{root}/escape/passwd", "real path"),
        ("{root}-not-really/base.qcow2", "outside the image roots"),
        ("file:///etc/shadow", "outside the image roots"),
        ("file://fileserver/srv/base.qcow2", "local path"),
    ],
)
async def test_a_local_source_outside_the_roots_is_a_422_naming_the_source(
    cloud: Cloud, image_roots: str, source: str, why: str
) -> None:
    Path(image_roots).mkdir(parents=True, exist_ok=True)
    (Path(image_roots) / "escape").symlink_to("/etc")

    status, answer = await cloud.admin.post("/v1/images", image_body(source.format(root=image_roots)))

    assert (status, answer["fields"]) == (422, ["$.source"]), answer
    assert why in answer["message"]
    assert (await cloud.admin.get("/v1/images"))[1]["items"] == []


# --- http(s) sources at registration ---------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "http://127.0.0.1:8774/v1/users",
        "http://localhost:4222/",
        "http://[::1]/base.qcow2",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.2.2:4222/",
        "https://192.168.1.10/base.qcow2",
        "http://2130706433/base.qcow2",
    ],
)
async def test_a_url_naming_a_forbidden_address_is_a_422(cloud: Cloud, source: str) -> None:
    status, answer = await cloud.admin.post("/v1/images", image_body(source))
    assert (status, answer["fields"]) == (422, ["$.source"]), answer
    assert "NEBULA_IMAGE_ALLOW_PRIVATE=1 allows it" in answer["message"]


async def test_a_refusal_does_not_echo_credentials(cloud: Cloud) -> None:
    status, answer = await cloud.admin.post("/v1/images", image_body("http://ops:hunter2@127.0.0.1/x?token=t0ps3cret"))
    assert status == 422
    assert "hunter2" not in answer["message"] and "t0ps3cret" not in answer["message"]


async def test_with_allow_private_the_operator_may_register_internal_urls(cloud: Cloud) -> None:
    settings = msgspec.structs.replace(cloud.settings, image_allow_private=True)
    server = TestServer(make_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        admin = Client(cloud.session, str(server.make_url("")).rstrip("/"), ADMIN_TOKEN)
        status, created = await admin.post("/v1/images", image_body("http://10.0.0.5:8080/base.qcow2"))
        assert status == 201, created
    finally:
        await server.close()


# --- the node: local sources -------------------------------------------------------------


@pytest.fixture
async def driver(tmp_path: Path, image_roots: str) -> AsyncIterator[LibvirtDriver]:
    """A node on libvirt's test driver whose image root is the cloud's; real image cache
    and real qemu-img disks."""
    uri = simulated_host_uri(tmp_path / "host.xml", Resources(vcpus=8, ram_mb=8192))
    node = LibvirtDriver.for_node(
        uri, tmp_path / "state", node_id="n1", image_sources=ImageSources(roots=(image_roots,))
    )
    await node.open()
    yield node
    await node.close()


def create_request(source: Path | str, data: bytes, image_format: str = "qcow2") -> CreateRequest:
    image = ImageSpec(
        id=uuid.uuid4(),
        name="img",
        format=image_format,  # type: ignore[arg-type]
        source=str(source),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )
    return CreateRequest(
        instance_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        name="vm",
        vcpus=1,
        ram_mb=256,
        disk_gb=1,
        image=image,
        metadata_token="y",
    )


async def test_a_manifest_whose_kernel_leads_out_of_the_root_is_refused_by_the_node(
    driver: LibvirtDriver, image_roots: str, tmp_path: Path
) -> None:
    """The manifest lies under the root, but the kernel beside it is a symlink to a file
    outside: the node refuses to read it, and no domain is defined."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for guests\n")
    tiny = Path(image_roots) / "nebula-tiny"
    tiny.mkdir(parents=True)
    (tiny / "vmlinuz").symlink_to(secret)
    files = {"vmlinuz": {"sha256": hashlib.sha256(secret.read_bytes()).hexdigest(), "size": secret.stat().st_size}}
    manifest = json.dumps({"kernel": "vmlinuz", "cmdline": "console=ttyS0", "files": files}).encode()
    (tiny / "manifest.json").write_bytes(manifest)
    req = create_request(tiny / "manifest.json", manifest, "direct-kernel")

    with pytest.raises(Invalid, match=r"vmlinuz: its real path .* outside the image roots") as caught:
        await driver.create(req)
    assert caught.value.fields == ["$.image"]
    assert await driver._run(lambda conn: conn.listAllDomains(0)) == []


async def test_a_source_registered_through_a_root_the_node_does_not_share_is_refused_there(
    driver: LibvirtDriver, tmp_path: Path
) -> None:
    """The node judges on its own filesystem: a path outside its roots is refused, whatever
    the API's host allowed."""
    elsewhere = tmp_path / "elsewhere.qcow2"
    elsewhere.write_bytes(IMAGE)
    with pytest.raises(Invalid, match="outside the image roots"):
        await driver.create(create_request(elsewhere, IMAGE))


# --- the node: qcow2 images that point at other files ----------------------------------


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (
            lambda path, other: qemu_img("create", "-q", "-f", "qcow2", "-b", str(other), "-F", "raw", str(path)),
            "backing file",
        ),
        (
            lambda path, other: qemu_img(
                "create", "-q", "-f", "qcow2", "-o", f"data_file={other},data_file_raw=on", str(path), "1M"
            ),
            "external file",
        ),
    ],
    ids=["backing-file", "data-file"],
)
async def test_a_qcow2_image_that_points_at_another_file_never_reaches_a_guest(
    driver: LibvirtDriver, image_roots: str, tmp_path: Path, make: Callable[[Path, Path], None], why: str
) -> None:
    """A guest booted on such an image would read (or write) the host file it names."""
    host_file = tmp_path / "host-secret"
    host_file.write_bytes(b"host secret\n".ljust(1 << 20, b"\0"))
    image = Path(image_roots) / "evil.qcow2"
    image.parent.mkdir(parents=True)
    make(image, host_file)
    req = create_request(image, image.read_bytes())

    with pytest.raises(Invalid, match=why) as caught:
        await driver.create(req)
    assert caught.value.fields == ["$.image"]
    assert await driver._run(lambda conn: conn.listAllDomains(0)) == []


# --- the node: http(s) sources, redirects ----------------------------------------------


@dataclass
class ImageServer:
    """A real HTTP server: serves `IMAGE` at /base.img, redirects /to?url=…, counts requests."""

    host: str
    port: int = 0
    requests: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[str], Awaitable[ImageServer]]]:
    runners: list[web.AppRunner] = []

    async def start(host: str) -> ImageServer:
        server = ImageServer(host)

        async def handle(request: web.Request) -> web.StreamResponse:
            server.requests[request.path] += 1
            if request.path == "/base.img":
                return web.Response(body=IMAGE)
            if request.path == "/to":
                raise web.HTTPFound(request.query["url"])
            if request.path == "/loop":
                raise web.HTTPFound("/loop")
            raise web.HTTPNotFound()

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, host, 0).start()
        server.port = runner.addresses[0][1]
        runners.append(runner)
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


def cache_of(tmp_path: Path, *, allow_private: bool = False) -> ImageCache:
    return ImageCache(tmp_path / "cache", sources=ImageSources(roots=(), allow_private=allow_private))


def cached(cache: ImageCache) -> list[str]:
    return [entry.sha256 for entry in cache.entries()]


@dataclass(frozen=True)
class Artifact:
    source: str
    sha256: str = IMAGE_SHA
    size: int = len(IMAGE)


async def test_an_image_server_on_loopback_is_refused_by_default_and_allowed_with_allow_private(
    tmp_path: Path, serve: Callable[[str], Awaitable[ImageServer]]
) -> None:
    server = await serve("127.0.0.1")

    with pytest.raises(ImageSourceRefused) as caught:
        await cache_of(tmp_path).ensure(Artifact(server.url("/base.img")))
    assert str(caught.value) == (
        f"image {server.url('/base.img')}: reaches 127.0.0.1, a loopback address "
        "(NEBULA_IMAGE_ALLOW_PRIVATE=1 allows it)"
    )
    assert server.requests == Counter()  # refused before connecting

    allowed = cache_of(tmp_path, allow_private=True)
    assert (await allowed.ensure(Artifact(server.url("/base.img")))).path.read_bytes() == IMAGE


class DNS(AbstractResolver):
    """This test's DNS: names answered from a table."""

    table: ClassVar[dict[str, list[str]]] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in self.table[host]
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The names the node resolves, as this test's DNS answers them."""
    table: dict[str, list[str]] = {}
    DNS.table = table
    monkeypatch.setattr(image_fetch, "DefaultResolver", DNS)
    return table


async def test_a_name_that_resolves_to_loopback_is_refused_before_connecting(
    tmp_path: Path, serve: Callable[[str], Awaitable[ImageServer]], dns: dict[str, list[str]]
) -> None:
    server = await serve("127.0.0.1")
    dns["images.example"] = ["127.0.0.1"]

    with pytest.raises(ImageSourceRefused, match=r"images.example reaches 127.0.0.1, a loopback address"):
        await cache_of(tmp_path).ensure(Artifact(f"http://images.example:{server.port}/base.img"))
    assert server.requests == Counter()


@pytest.fixture
async def public(serve: Callable[[str], Awaitable[ImageServer]], monkeypatch: pytest.MonkeyPatch) -> ImageServer:
    """An image server on the internet, played by 127.0.0.2: the node's judge lets that one
    address through and judges every other address as it would (127.0.0.1 is loopback)."""
    server = await serve("127.0.0.2")
    judge = image_fetch.address_problem
    played = ipaddress.ip_address("127.0.0.2")
    monkeypatch.setattr(image_fetch, "address_problem", lambda address: None if address == played else judge(address))
    return server


async def test_a_redirect_is_followed_when_it_stays_public(tmp_path: Path, public: ImageServer) -> None:
    cache = cache_of(tmp_path)
    hop = f"/to?url={public.url('/base.img')}"
    assert (await cache.ensure(Artifact(public.url(hop)))).path.read_bytes() == IMAGE
    assert public.requests == Counter({"/to": 1, "/base.img": 1})


async def test_a_redirect_to_loopback_is_refused(
    tmp_path: Path, public: ImageServer, serve: Callable[[str], Awaitable[ImageServer]]
) -> None:
    inside = await serve("127.0.0.1")
    cache = cache_of(tmp_path)
    source = public.url(f"/to?url={inside.url('/base.img')}")

    with pytest.raises(ImageSourceRefused) as caught:
        await cache.ensure(Artifact(source))
    assert "redirected to http://127.0.0.1:" in str(caught.value)
    assert "which reaches 127.0.0.1, a loopback address" in str(caught.value)
    assert inside.requests == Counter() and cached(cache) == []

    # With the operator's leave, the same redirect is followed.
    assert (await cache_of(tmp_path, allow_private=True).ensure(Artifact(source))).size == len(IMAGE)
    assert inside.requests == Counter({"/base.img": 1})


async def test_a_redirect_to_a_name_that_resolves_inside_is_refused(
    tmp_path: Path,
    public: ImageServer,
    serve: Callable[[str], Awaitable[ImageServer]],
    dns: dict[str, list[str]],
) -> None:
    inside = await serve("127.0.0.1")
    dns["nats.internal"] = ["127.0.0.1"]

    with pytest.raises(ImageSourceRefused, match=r"nats\.internal reaches 127\.0\.0\.1, a loopback address"):
        await cache_of(tmp_path).ensure(Artifact(public.url(f"/to?url=http://nats.internal:{inside.port}/base.img")))
    assert inside.requests == Counter()


@pytest.mark.parametrize("target", ["file:///etc/passwd", "http://169.254.169.254/latest/meta-data/"])
async def test_a_redirect_out_of_http_or_to_the_metadata_address_is_refused(
    tmp_path: Path, public: ImageServer, target: str
) -> None:
    with pytest.raises(ImageSourceRefused, match="redirected to"):
        await cache_of(tmp_path).ensure(Artifact(public.url(f"/to?url={target}")))


async def test_redirects_are_followed_a_bounded_number_of_times(tmp_path: Path, public: ImageServer) -> None:
    with pytest.raises(image_fetch.ImageFetchFailed, match="more than 5 redirects"):
        await cache_of(tmp_path).ensure(Artifact(public.url("/loop")))
    assert public.requests["/loop"] == 6


async def test_credentials_in_a_source_reach_no_message_and_no_log(
    tmp_path: Path, serve: Callable[[str], Awaitable[ImageServer]], caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve("127.0.0.1")
    source = f"http://ops:hunter2@127.0.0.1:{server.port}/missing.img?sig=t0ps3cret"
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ImageSourceRefused) as refused:
        await cache_of(tmp_path).ensure(Artifact(source))
    with pytest.raises(ImageNotFound) as missing:
        await cache_of(tmp_path, allow_private=True).ensure(Artifact(source))

    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("nebula"))  # not the server's
    for said in (str(refused.value), str(missing.value), logged):
        assert "hunter2" not in said and "t0ps3cret" not in said
    assert f"http://ops:***@127.0.0.1:{server.port}/missing.img?***" in str(missing.value)
    assert "source=http://ops:***@" in logged
