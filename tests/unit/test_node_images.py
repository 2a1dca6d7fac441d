"""The node image cache: fetch once, verify before trusting, never keep bad bytes, and
read only what the image policy allows (local files under the image roots)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from nebula_core.contract.image_sources import ImageSources
from nebula_core.contract.node import ImageSpec
from nebula_node.images import (
    CachedImage,
    ImageCache,
    ImageChecksumMismatch,
    ImageFetchFailed,
    ImageNotFound,
    ImageSizeMismatch,
    ImageSourceRefused,
)

IMAGE = b"nebula base image\n" * 100_000  # ~1.8 MB: several chunks
IMAGE_SHA = hashlib.sha256(IMAGE).hexdigest()
OTHER_SHA = hashlib.sha256(b"something else").hexdigest()


@dataclass(frozen=True)
class ImageArtifact:
    """The smallest thing shaped like ``ArtifactRef``."""

    sha256: str
    source: str
    size: int | None = None


@dataclass
class ImageServer:
    """A real HTTP server on 127.0.0.1 serving ``files``, counting requests per path."""

    base_url: str
    files: dict[str, bytes]
    requests: Counter[str] = field(default_factory=Counter)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


@pytest.fixture
async def server() -> AsyncIterator[ImageServer]:
    image_server = ImageServer(base_url="", files={"base.img": IMAGE})
    image_server.gate.set()

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        image_server.requests[name] += 1
        if name == "broken":
            raise web.HTTPInternalServerError()
        if name not in image_server.files:
            raise web.HTTPNotFound()
        await image_server.gate.wait()
        return web.Response(body=image_server.files[name])

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    image_server.base_url = f"http://127.0.0.1:{port}"
    try:
        yield image_server
    finally:
        await runner.cleanup()


@pytest.fixture
def cache(tmp_path: Path) -> ImageCache:
    """Local sources under <tmp>/source; the test server on 127.0.0.1 is allowed (the
    policy on addresses has tests of its own, in tests/integration/test_images_hardened.py)."""
    return ImageCache(tmp_path / "cache", sources=ImageSources(roots=(str(tmp_path / "source"),), allow_private=True))


@pytest.fixture
def local_image(tmp_path: Path) -> Path:
    path = tmp_path / "source" / "base.img"
    path.parent.mkdir()
    path.write_bytes(IMAGE)
    return path


def files_in(cache: ImageCache) -> list[str]:
    directory = cache.root / "sha256"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


# --- http(s) -----------------------------------------------------------------------------


async def test_http_image_is_fetched_verified_and_stored_by_sha256(cache, server):
    cached = await cache.ensure(ImageArtifact(IMAGE_SHA, server.url("base.img")))

    assert cached == CachedImage(IMAGE_SHA, cache.root / "sha256" / IMAGE_SHA, len(IMAGE))
    assert cached.path.read_bytes() == IMAGE
    assert files_in(cache) == [IMAGE_SHA]


async def test_second_ensure_is_a_cache_hit_without_a_request(cache, server):
    artifact = ImageArtifact(IMAGE_SHA, server.url("base.img"), size=len(IMAGE))
    first = await cache.ensure(artifact)
    second = await cache.ensure(artifact)

    assert first == second
    assert server.requests["base.img"] == 1


async def test_checksum_mismatch_raises_and_leaves_nothing_in_the_cache(cache, server):
    with pytest.raises(ImageChecksumMismatch) as caught:
        await cache.ensure(ImageArtifact(OTHER_SHA, server.url("base.img")))

    assert (caught.value.expected, caught.value.size) == (OTHER_SHA, len(IMAGE))
    assert files_in(cache) == []


async def test_a_checksum_mismatch_says_what_was_expected_never_the_hash_of_what_was_read(cache, local_image):
    """Telling the sha256 of what was read would make the cache an oracle: register any
    file with a wrong sha256 and learn the hash of its contents."""
    with pytest.raises(ImageChecksumMismatch) as caught:
        await cache.ensure(ImageArtifact(OTHER_SHA, str(local_image)))

    message = str(caught.value)
    assert f"did not match its registered sha256 {OTHER_SHA} ({len(IMAGE)} bytes read)" in message
    assert IMAGE_SHA not in message and IMAGE_SHA not in repr(vars(caught.value))


async def test_mismatch_is_not_remembered_so_the_next_ensure_fetches_again(cache, server):
    for _ in range(2):
        with pytest.raises(ImageChecksumMismatch):
            await cache.ensure(ImageArtifact(OTHER_SHA, server.url("base.img")))
    assert server.requests["base.img"] == 2


async def test_size_mismatch_raises_and_leaves_nothing_in_the_cache(cache, server):
    for wrong_size in (len(IMAGE) - 1, len(IMAGE) + 1):
        with pytest.raises(ImageSizeMismatch) as caught:
            await cache.ensure(ImageArtifact(IMAGE_SHA, server.url("base.img"), size=wrong_size))
        assert caught.value.expected == wrong_size
    assert files_in(cache) == []


async def test_http_404_is_image_not_found(cache, server):
    with pytest.raises(ImageNotFound, match="404"):
        await cache.ensure(ImageArtifact(IMAGE_SHA, server.url("missing.img")))
    assert files_in(cache) == []


async def test_http_server_error_is_fetch_failed(cache, server):
    with pytest.raises(ImageFetchFailed, match="500"):
        await cache.ensure(ImageArtifact(IMAGE_SHA, server.url("broken")))
    assert files_in(cache) == []


async def test_unreachable_server_is_fetch_failed(cache):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the fetch: nobody listens
    with pytest.raises(ImageFetchFailed):
        await cache.ensure(ImageArtifact(IMAGE_SHA, f"http://127.0.0.1:{port}/base.img"))


async def test_concurrent_ensures_of_one_image_fetch_it_once(cache, server):
    server.gate.clear()  # hold the first response until every caller is waiting
    artifact = ImageArtifact(IMAGE_SHA, server.url("base.img"))
    callers = [asyncio.create_task(cache.ensure(artifact)) for _ in range(5)]

    await wait_until(lambda: server.requests["base.img"] >= 1)
    server.gate.set()
    results = await asyncio.gather(*callers)

    assert server.requests["base.img"] == 1
    assert {r.path for r in results} == {cache.path_for(IMAGE_SHA)}


# --- local sources -----------------------------------------------------------------------


async def test_local_path_source_is_copied_into_the_cache(cache, local_image):
    cached = await cache.ensure(ImageArtifact(IMAGE_SHA, str(local_image)))

    assert cached.path.read_bytes() == IMAGE
    assert cached.path != local_image


async def test_file_url_source_is_copied_into_the_cache(cache, local_image):
    cached = await cache.ensure(ImageArtifact(IMAGE_SHA, local_image.as_uri()))
    assert cached.path.read_bytes() == IMAGE


async def test_missing_local_source_is_image_not_found(cache, tmp_path):
    with pytest.raises(ImageNotFound):
        await cache.ensure(ImageArtifact(IMAGE_SHA, str(tmp_path / "source" / "nope.img")))
    assert files_in(cache) == []


async def test_local_checksum_mismatch_leaves_nothing_in_the_cache(cache, local_image):
    with pytest.raises(ImageChecksumMismatch):
        await cache.ensure(ImageArtifact(OTHER_SHA, str(local_image)))
    assert files_in(cache) == []


async def test_cached_image_is_trusted_by_name_even_if_the_source_is_gone(cache, local_image):
    artifact = ImageArtifact(IMAGE_SHA, str(local_image))
    await cache.ensure(artifact)
    local_image.unlink()

    cached = await cache.ensure(artifact)
    assert cached.path.read_bytes() == IMAGE


async def test_verify_replaces_a_corrupted_cached_file(cache, local_image):
    artifact = ImageArtifact(IMAGE_SHA, str(local_image))
    cached = await cache.ensure(artifact)
    cached.path.write_bytes(IMAGE[:-1] + b"X")  # same size: only hashing can tell

    assert (await cache.ensure(artifact)).path.read_bytes() != IMAGE  # trusted by name
    assert (await cache.ensure(artifact, verify=True)).path.read_bytes() == IMAGE


async def test_cached_file_contradicting_the_known_size_is_fetched_again(cache, local_image):
    artifact = ImageArtifact(IMAGE_SHA, str(local_image), size=len(IMAGE))
    cached = await cache.ensure(artifact)
    cached.path.write_bytes(IMAGE[: len(IMAGE) // 2])  # e.g. truncated by a crash

    assert (await cache.ensure(artifact)).path.read_bytes() == IMAGE


# --- the image roots ---------------------------------------------------------------------


async def test_a_local_source_outside_the_image_roots_is_refused_and_not_read(cache, tmp_path):
    elsewhere = tmp_path / "elsewhere.img"
    elsewhere.write_bytes(IMAGE)

    with pytest.raises(ImageSourceRefused, match="outside the image roots") as caught:
        await cache.ensure(ImageArtifact(IMAGE_SHA, str(elsewhere)))
    assert "NEBULA_IMAGE_ROOTS" in str(caught.value)
    with pytest.raises(ImageSourceRefused):
        await cache.ensure(ImageArtifact(IMAGE_SHA, elsewhere.as_uri()))
    assert files_in(cache) == []


@pytest.mark.parametrize(
    "source",
    [
        "{root}/../source/base.img",
        "{root}/../../../../etc/hostname",
        "file://{root}/../source/base.img",
        "file://{root}/%2e%2e/source/base.img",
    ],
)
async def test_a_path_with_dot_dot_is_refused_even_when_it_would_land_inside_a_root(cache, local_image, source):
    with pytest.raises(ImageSourceRefused, match=r"may not hold '\.\.'"):
        await cache.ensure(ImageArtifact(IMAGE_SHA, source.format(root=local_image.parent)))
    assert files_in(cache) == []


async def test_a_symlink_that_leads_out_of_the_root_is_refused(cache, local_image, tmp_path):
    outside = tmp_path / "secret.img"
    outside.write_bytes(IMAGE)
    (local_image.parent / "escape.img").symlink_to(outside)
    (local_image.parent / "etc").symlink_to("/etc")

    with pytest.raises(ImageSourceRefused, match="real path"):
        await cache.ensure(ImageArtifact(IMAGE_SHA, str(local_image.parent / "escape.img")))
    with pytest.raises(ImageSourceRefused, match="real path"):
        await cache.ensure(ImageArtifact(IMAGE_SHA, str(local_image.parent / "etc" / "hostname")))
    assert files_in(cache) == []


async def test_a_symlink_that_stays_inside_the_root_is_followed(cache, local_image):
    (local_image.parent / "current.img").symlink_to(local_image.name)

    cached = await cache.ensure(ImageArtifact(IMAGE_SHA, str(local_image.parent / "current.img")))
    assert cached.path.read_bytes() == IMAGE


async def test_a_root_that_is_itself_a_symlink_holds_what_its_target_holds(tmp_path, local_image):
    (tmp_path / "published").symlink_to(local_image.parent)
    cache = ImageCache(tmp_path / "cache", sources=ImageSources(roots=(str(tmp_path / "published"),)))

    assert (await cache.ensure(ImageArtifact(IMAGE_SHA, str(tmp_path / "published" / "base.img")))).size == len(IMAGE)
    assert (await cache.ensure(ImageArtifact(IMAGE_SHA, str(local_image)))).size == len(IMAGE)


async def test_only_regular_files_are_read_a_fifo_does_not_hang_the_node(cache, local_image):
    fifo = local_image.parent / "pipe.img"
    os.mkfifo(fifo)

    with pytest.raises(ImageSourceRefused, match="not a regular file"):
        await asyncio.wait_for(cache.ensure(ImageArtifact(IMAGE_SHA, str(fifo))), timeout=5)
    with pytest.raises(ImageSourceRefused, match="not a regular file"):
        await cache.ensure(ImageArtifact(IMAGE_SHA, str(local_image.parent)))


async def test_a_file_url_naming_another_host_is_refused(cache, local_image):
    with pytest.raises(ImageSourceRefused, match="local path"):
        await cache.ensure(ImageArtifact(IMAGE_SHA, f"file://fileserver{local_image}"))


async def test_by_default_the_image_root_is_the_cache_directory_itself(tmp_path):
    """As on a node with the default settings: `<state>/images` is both the cache and the
    one image root, where `nebula up` builds nebula-tiny."""
    images = tmp_path / "state" / "images"
    (images / "nebula-tiny").mkdir(parents=True)
    (images / "nebula-tiny" / "vmlinuz").write_bytes(IMAGE)
    (tmp_path / "vmlinuz").write_bytes(IMAGE)
    cache = ImageCache(images)

    assert (await cache.ensure(ImageArtifact(IMAGE_SHA, str(images / "nebula-tiny" / "vmlinuz")))).size == len(IMAGE)
    await cache.remove(IMAGE_SHA)
    with pytest.raises(ImageSourceRefused):
        await cache.ensure(ImageArtifact(IMAGE_SHA, str(tmp_path / "vmlinuz")))


async def test_an_image_already_cached_is_used_without_reading_its_source_again(cache, local_image, tmp_path):
    """The policy guards reading; bytes already cached (and named by their sha256) are not
    read from the source again, whatever the source says now."""
    await cache.ensure(ImageArtifact(IMAGE_SHA, str(local_image)))

    cached = await cache.ensure(ImageArtifact(IMAGE_SHA, str(tmp_path / "moved-away.img")))
    assert cached.path.read_bytes() == IMAGE


# --- listing and removal -----------------------------------------------------------------


async def test_entries_list_cached_images_and_ignore_partial_downloads(cache, local_image):
    assert cache.entries() == []
    cached = await cache.ensure(ImageArtifact(IMAGE_SHA, str(local_image)))
    (cache.root / "sha256" / f".{OTHER_SHA}.abc.part").write_bytes(b"half")

    assert cache.entries() == [cached]
    assert cache.discard_partial_downloads() == 1
    assert files_in(cache) == [IMAGE_SHA]


async def test_remove_deletes_the_image_and_succeeds_if_missing(cache, local_image):
    await cache.ensure(ImageArtifact(IMAGE_SHA, str(local_image)))

    await cache.remove(IMAGE_SHA)
    await cache.remove(IMAGE_SHA)

    assert cache.entries() == []


# --- artifact references ----------------------------------------------------------------


async def test_the_contract_image_spec_is_accepted_as_it_is(cache, local_image):
    artifact = ImageSpec(id=uuid.uuid4(), name="base", format="qcow2", source=str(local_image), sha256=IMAGE_SHA)
    assert (await cache.ensure(artifact)).path.read_bytes() == IMAGE


async def test_size_zero_means_unknown_and_only_the_sha256_is_checked(cache, local_image):
    cached = await cache.ensure(ImageArtifact(IMAGE_SHA, str(local_image), size=0))
    assert cached.size == len(IMAGE)


@pytest.mark.parametrize("sha256", ["../../etc/passwd", IMAGE_SHA.upper(), IMAGE_SHA[:-1], IMAGE_SHA + "0", ""])
async def test_anything_but_a_lowercase_hex_sha256_is_rejected_before_any_io(cache, local_image, sha256):
    with pytest.raises(ValueError, match="sha256"):
        await cache.ensure(ImageArtifact(sha256, str(local_image)))
    with pytest.raises(ValueError, match="sha256"):
        await cache.remove(sha256)
    assert not cache.root.exists()


@pytest.mark.parametrize("source", ["images/base.img", "ftp://host/base.img", "", "s3://b/k"])
async def test_relative_paths_and_other_schemes_are_unsupported_sources(cache, source):
    with pytest.raises(ImageFetchFailed, match="unsupported source"):
        await cache.ensure(ImageArtifact(IMAGE_SHA, source))
    assert not cache.root.exists()
