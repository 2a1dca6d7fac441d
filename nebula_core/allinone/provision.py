"""What `nebula up` does through the API once the cloud answers: build and register the
nebula-tiny image if it is missing, and (`--demo`) boot one instance and show its console.

Both go through the public HTTP API with the admin token, exactly as an operator would:
with the CLI's client (`nebula_core.cli.client.Api`) and the API's own shapes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from nebula_core.allinone.opsfiles import ops_path
from nebula_core.cli.client import Api
from nebula_core.contract import http as shapes

TINY = "nebula-tiny"
BUILDER = ops_path("guest", "build-tiny.sh")


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


async def ensure_tiny_image(api: Api, images_dir: Path, say: Callable[[str], None]) -> str:
    """The id of the registered nebula-tiny image, built and registered if need be."""
    manifest = await build_tiny(images_dir / TINY, say)
    data = manifest.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    for image in await api.all("/v1/images", shapes.Image):
        if image.name == TINY and image.sha256 == digest:
            return str(image.id)
        if image.name == TINY:
            await api.delete(f"/v1/images/{image.id}")  # rebuilt: replace it
    wanted = shapes.ImageCreate(
        name=TINY, format="direct-kernel", source=str(manifest.resolve()), sha256=digest, size=len(data)
    )
    created = await api.post("/v1/images", wanted, shapes.Image)
    say(f"registered image {TINY} ({json.loads(data).get('kernel_version', '?')})")
    return str(created.id)


async def _live_node(api: Api, deadline: float) -> bool:
    """True once some node heartbeats (the node agent starts alongside the demo)."""
    while time.monotonic() < deadline:
        if any(node.alive and not node.down for node in await api.all("/v1/nodes", shapes.Node)):
            return True
        await asyncio.sleep(1)
    return False


async def demo(api: Api, say: Callable[[str], None], *, simulated: bool, timeout: float = 300.0) -> int:
    """Wait for a live node, create a project and an instance, wait for it to phone home,
    print its console."""
    deadline = time.monotonic() + timeout
    if not await _live_node(api, deadline):
        say(f"demo: no node agent came up within {timeout:.0f} s (see logs/node.log)")
        return 1
    projects = await api.all("/v1/projects", shapes.Project)
    project = next((p for p in projects if p.name == "demo"), None)
    if project is None:
        made = shapes.ProjectCreate(name="demo", description="made by nebula up --demo")
        project = await api.post("/v1/projects", made, shapes.Project)
    nonce = secrets.token_hex(8)
    wanted = shapes.InstanceCreate(
        project_id=project.id,
        name=f"demo-{nonce[:6]}",
        vcpus=1,
        ram_mb=256,
        disk_gb=1,
        image=TINY,
        user_data=f"#!/bin/sh\necho hello from nebula-tiny, nonce {nonce}\n",
    )
    instance = await api.post("/v1/instances", wanted, shapes.Instance)
    say(f"demo: instance {instance.name} ({instance.id}) created")
    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        instance = await api.get(f"/v1/instances/{instance.id}", shapes.Instance)
        if instance.state != seen:
            seen = instance.state
            say(f"demo: {seen}")
        if seen == "error":
            say(f"demo: failed: {instance.error}")
            return 1
        if seen == "running" and (simulated or instance.booted_at):
            break
        await asyncio.sleep(1)
    else:
        say(f"demo: gave up after {timeout:.0f} s in state {seen}")
        return 1
    if simulated:
        say("demo: the node runs on libvirt's test driver, so the instance is simulated and has no console")
        return 0
    say(f"demo: phoned home at {instance.booted_at}; its console:")
    console = await api.get(f"/v1/instances/{instance.id}/console", shapes.Console)
    print(console.data, flush=True)
    return 0 if nonce in console.data else 1
