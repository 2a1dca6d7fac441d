"""Benchmark: from the API's accept to QEMU started and to phone-home, booting nebula-tiny.

    .venv/bin/python -m nebula_core.devtools.bench.boot [--runs 3] [--state-dir .state]

As root. Runs the whole stack in this process, as `nebula up` would in separate ones: an
embedded nats-server and Postgres, the API, projector, metadata service, orchestrator and
one node agent on qemu:///system (libvirtd brought up by ops/host/libvirt-up.sh, the
image built by ops/guest/build-tiny.sh and registered through the API). Then, one after
another, it creates an instance through the HTTP API, waits for its phone-home and deletes
it; it prints each run's times and their medians.

Times come from what the control plane recorded - the instance's `created_at` (the API
accepted it), its `instance.launched` event (the node had started QEMU) and `booted_at`
(the guest phoned home) - plus the wall clock from the 202 to the API showing `booted_at`.
The node agent treats every UUID-named domain on the host as its own: run this where no
other Nebula node agent or test keeps domains.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from nebula_core import config
from nebula_core.allinone import provision
from nebula_core.allinone.embedded import NatsServer, Postgres, free_port
from nebula_core.allinone.init import initialize
from nebula_core.allinone.opsfiles import ops_path
from nebula_core.allinone.runtime import connections, setup_logging
from nebula_core.api.app import serve as serve_api
from nebula_core.cli.client import Api, ApiError, Target, Unreachable
from nebula_core.contract import http as shapes
from nebula_core.orchestrator.service import run as run_orchestrator
from nebula_core.projections.projector import Projector
from nebula_meta.app import serve as serve_meta
from nebula_node.agent import run as run_node

BOOT_TIMEOUT_S = 120.0
COLUMNS = ("accept → QEMU started", "accept → phone-home", "202 → booted_at seen")


async def _projector(settings: config.Settings, stop: asyncio.Event) -> None:
    async with connections(settings, "projector") as (nc, pool):
        assert pool is not None
        await Projector(nc.jetstream(), pool).run(stop)


@contextlib.asynccontextmanager
async def stack(state: Path) -> AsyncIterator[Api]:
    """Every role in this process on fresh servers; the API with the admin token."""
    with tempfile.TemporaryDirectory(prefix="nebula-bench-") as tmp:
        nats = NatsServer(Path(tmp) / "nats").start()
        postgres = Postgres(Path(tmp) / "pg").start()
        api_port, meta_port = free_port(), free_port()
        settings = config.load(
            {},
            nats_url=nats.url,
            pg_dsn=postgres.dsn,
            admin_token=secrets.token_urlsafe(24),
            api_listen=f"127.0.0.1:{api_port}",
            meta_listen=f"127.0.0.1:{meta_port}",
            meta_url=f"http://10.0.2.2:{meta_port}",
            state_dir=str(state),
            libvirt_uri="qemu:///system",
            node_id="bench-node",
        )
        stop = asyncio.Event()
        roles: list[Callable[[config.Settings, asyncio.Event], Coroutine[Any, Any, None]]] = [
            serve_api,
            serve_meta,
            _projector,
            run_orchestrator,
            run_node,
        ]
        tasks: list[asyncio.Task[None]] = []
        try:
            await initialize(settings)
            tasks = [asyncio.create_task(role(settings, stop)) for role in roles]
            async with Api(Target(f"http://{settings.api_listen}", settings.admin_token, "bench")) as api:
                await _until_answers(api, tasks)
                yield api
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            postgres.stop()
            nats.stop()


async def _until_answers(api: Api, tasks: list[asyncio.Task[None]]) -> None:
    """Wait for the API and for the node to have registered; a role that died is raised."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for task in tasks:
            if task.done():
                task.result()
        with contextlib.suppress(ApiError, Unreachable):
            if await api.all("/v1/nodes", shapes.Node):
                return
        await asyncio.sleep(0.2)
    raise RuntimeError("the API or the node agent did not come up within 60 s")


async def one_boot(api: Api, project_id: uuid.UUID) -> tuple[float, float, float]:
    """Create, wait for phone-home, delete: the run's three times in seconds."""
    nonce = secrets.token_hex(6)
    wanted = shapes.InstanceCreate(
        project_id=project_id,
        name=f"bench-{nonce}",
        vcpus=1,
        ram_mb=256,
        disk_gb=1,
        image=provision.TINY,
        user_data=f"#!/bin/sh\necho nonce-{nonce}\n",
    )
    created = await api.post("/v1/instances", wanted, shapes.Instance)
    accepted, path = time.monotonic(), f"/v1/instances/{created.id}"
    try:
        while not (now := await api.get(path, shapes.Instance)).booted_at:
            if now.state == "error":
                raise RuntimeError(f"instance {created.id} failed: {now.error}")
            if time.monotonic() - accepted > BOOT_TIMEOUT_S:
                raise RuntimeError(f"instance {created.id} did not phone home within {BOOT_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.1)
        seen = time.monotonic() - accepted
        events = await api.all(path + "/events", shapes.EventRecord)
        launched = next(e.at for e in events if e.type == "instance.launched")
    finally:
        await api.delete(path)
        while (await api.get(path, shapes.Instance)).state != "deleted":
            await asyncio.sleep(0.2)
    assert now.booted_at is not None
    start = created.created_at
    return (launched - start).total_seconds(), (now.booted_at - start).total_seconds(), seen


async def bench(runs: int, state: Path) -> None:
    async with stack(state) as api:
        await provision.ensure_tiny_image(api, state / "images", print)
        project = await api.post(
            "/v1/projects", shapes.ProjectCreate(name=f"bench-{secrets.token_hex(3)}"), shapes.Project
        )
        results = []
        for i in range(1, runs + 1):
            results.append(await one_boot(api, project.id))
            print(f"run {i}/{runs}: " + ", ".join(f"{c} {v:.2f} s" for c, v in zip(COLUMNS, results[-1], strict=True)))
    print(f"medians over {runs} runs (nebula-tiny, 1 vCPU, 256 MiB, QEMU TCG):")
    for c, values in zip(COLUMNS, zip(*results, strict=True), strict=True):
        print(f"  {c:<24} {statistics.median(values):6.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".state"),
        help="the node's images/ and instances/; nebula-tiny is built into images/nebula-tiny",
    )
    args = ap.parse_args()
    state = args.state_dir.resolve()
    setup_logging("bench", logging.WARNING)
    up = ops_path("host", "libvirt-up.sh")
    subprocess.run(["sh", str(up), str(state)], check=True)
    asyncio.run(bench(args.runs, state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
