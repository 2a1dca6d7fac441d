"""What `nebula up` does through the API once the cloud answers: build and register the
nebula-tiny image if it is missing, and (`--demo`) boot one instance and show its console.

Both go through the public HTTP API with the admin token, exactly as an operator would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from nebula_core.allinone.opsfiles import ops_path

TINY = "nebula-tiny"
BUILDER = ops_path("guest", "build-tiny.sh")


class ApiSession:
    """The few calls `nebula up` makes, with the admin token."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self._session = session
        self._base = base.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self._session.request(method, self._base + path, json=body, headers=self._headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {data.get('message', data)}")
            return data


async def build_tiny(out_dir: Path, say: Callable[[str], None]) -> Path:
    """Run ops/guest/build-tiny.sh (a no-op when the image is current); its manifest."""
    manifest = out_dir / "manifest.json"
    if not manifest.exists():
        say(f"building the {TINY} guest image from Debian packages into {out_dir} (once)")
    proc = await asyncio.create_subprocess_exec(
        "sh", str(BUILDER), str(out_dir), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        tail = output.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"building {TINY} failed: {' / '.join(tail)}")
    return manifest


async def ensure_tiny_image(api: ApiSession, images_dir: Path, say: Callable[[str], None]) -> str:
    """The id of the registered nebula-tiny image, built and registered if need be."""
    manifest = await build_tiny(images_dir / TINY, say)
    data = manifest.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    page = await api.call("GET", "/v1/images?limit=500")
    for image in page["items"]:
        if image["name"] == TINY and image["sha256"] == digest:
            return str(image["id"])
        if image["name"] == TINY:
            await api.call("DELETE", f"/v1/images/{image['id']}")  # rebuilt: replace it
    created = await api.call(
        "POST",
        "/v1/images",
        {
            "name": TINY,
            "format": "direct-kernel",
            "source": str(manifest.resolve()),
            "sha256": digest,
            "size": len(data),
        },
    )
    say(f"registered image {TINY} ({json.loads(data).get('kernel_version', '?')})")
    return str(created["id"])


async def _live_node(api: ApiSession, deadline: float) -> bool:
    """True once some node heartbeats (the node agent starts alongside the demo)."""
    while time.monotonic() < deadline:
        nodes = await api.call("GET", "/v1/nodes?limit=500")
        if any(node["alive"] and not node["down"] for node in nodes["items"]):
            return True
        await asyncio.sleep(1)
    return False


async def demo(api: ApiSession, say: Callable[[str], None], *, simulated: bool, timeout: float = 300.0) -> int:
    """Wait for a live node, create a project and an instance, wait for it to phone home,
    print its console."""
    deadline = time.monotonic() + timeout
    if not await _live_node(api, deadline):
        say(f"demo: no node agent came up within {timeout:.0f} s (see logs/node.log)")
        return 1
    projects = await api.call("GET", "/v1/projects?limit=500")
    project = next((p for p in projects["items"] if p["name"] == "demo"), None)
    if project is None:
        project = await api.call("POST", "/v1/projects", {"name": "demo", "description": "made by nebula up --demo"})
    nonce = secrets.token_hex(8)
    instance = await api.call(
        "POST",
        "/v1/instances",
        {
            "project_id": project["id"],
            "name": f"demo-{nonce[:6]}",
            "vcpus": 1,
            "ram_mb": 256,
            "disk_gb": 1,
            "image": TINY,
            "user_data": f"#!/bin/sh\necho hello from nebula-tiny, nonce {nonce}\n",
        },
    )
    say(f"demo: instance {instance['name']} ({instance['id']}) created")
    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        instance = await api.call("GET", f"/v1/instances/{instance['id']}")
        if instance["state"] != seen:
            seen = instance["state"]
            say(f"demo: {seen}")
        if seen == "error":
            say(f"demo: failed: {instance['error']}")
            return 1
        if seen == "running" and (simulated or instance["booted_at"]):
            break
        await asyncio.sleep(1)
    else:
        say(f"demo: gave up after {timeout:.0f} s in state {seen}")
        return 1
    if simulated:
        say("demo: the node runs on libvirt's test driver, so the instance is simulated and has no console")
        return 0
    say(f"demo: phoned home at {instance['booted_at']}; its console:")
    console = await api.call("GET", f"/v1/instances/{instance['id']}/console")
    print(console["data"], flush=True)
    return 0 if nonce in console["data"] else 1
