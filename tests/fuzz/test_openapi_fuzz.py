"""Schemathesis against a live control plane (real NATS, Postgres, the API, a projector and a
node agent on libvirt's test driver), as a cloud admin and as a member of a project: no answer is a 5xx, and every answer is one
the OpenAPI document gives for that operation (status, headers, body schema); valid input is
accepted and invalid input refused, but for what the document lists as checked beyond its
schemas (see hooks.py).

The run is bounded and reproducible: 20 examples per operation (schemathesis.toml),
generated deterministically, with Hypothesis' deadline off (schemathesis sets none).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from nebula_core.contract.node import CreateRequest, ImageSpec
from nebula_core.domain import AGGREGATES, Instance
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from nebula_core.messaging import NodeClient
from nebula_node.agent import NodeAgent
from tests.fuzz.conftest import NODE
from tests.integration.conftest import ADMIN_TOKEN, Cloud

pytestmark = pytest.mark.fuzz

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
#: The whole run of one caller may take this long at most (it takes a minute or less).
RUN_TIMEOUT_S = 300
#: A user may make 50 requests a second (NEBULA_API_RATE): the fuzzer stays under that.
MEMBER_RATE = "40/s"


async def _running(cloud: Cloud, nc: NATS, instance_id: str) -> None:
    """Boot the instance on the node's test driver and record what the orchestrator would."""
    store = EventStore(cloud.js, Codec(*AGGREGATES))
    instance = await store.load(Instance, uuid.UUID(instance_id))
    image = ImageSpec(
        id=instance.image_id,
        name="tiny",
        format="direct-kernel",
        source=f"{cloud.settings.image_sources.roots[0]}/tiny/manifest.json",
        sha256="a" * 64,
    )
    create = CreateRequest(
        instance_id=instance.id,
        project_id=instance.project_id,
        name=instance.name,
        vcpus=1,
        ram_mb=256,
        disk_gb=1,
        image=image,
        metadata_token="token",
    )
    await NodeClient(nc, timeout=10).call(NODE, "create", create)
    instance.schedule(NODE)
    instance.launch()
    await store.save(instance, actor="system:test")


async def _instance(cloud: Cloud, project_id: str, name: str) -> str:
    status, body = await cloud.admin.post(
        "/v1/instances",
        {"project_id": project_id, "name": name, "vcpus": 1, "ram_mb": 256, "disk_gb": 1, "image": "tiny"},
    )
    assert status == 202, body
    return str(body["id"])


def _dictionaries(where: Path, values: dict[str, list[str]]) -> None:
    """One libFuzzer-style dictionary per parameter (schemathesis.toml names them)."""
    for name, entries in values.items():
        (where / f"{name}.dict").write_text("".join(f'"{entry}"\n' for entry in entries))


@pytest.mark.parametrize("caller", ["admin", "member"])
async def test_every_answer_is_one_the_openapi_document_gives(
    cloud: Cloud, node: NodeAgent, nc: NATS, caller: str, tmp_path: Path
) -> None:
    member_id, member = await cloud.user("member")
    other_id, _ = await cloud.user("other")
    mine = await cloud.project("alpha")
    theirs = await cloud.project("beta")
    await cloud.member(mine, member_id, "member")
    image_id = await cloud.image("tiny")
    pending = await _instance(cloud, mine, "web-1")
    running = await _instance(cloud, mine, "web-2")
    await _running(cloud, nc, running)
    elsewhere = await _instance(cloud, theirs, "db-1")

    config = tmp_path / "schemathesis.toml"
    shutil.copy(HERE / "schemathesis.toml", config)
    _dictionaries(
        tmp_path,
        {
            "project_id": [mine, theirs],
            "instance_id": [pending, running, elsewhere],
            "image_id": [image_id],
            "image": ["tiny", image_id],
            # Not the member's own id: rotating its own token would end its run with 401s.
            "user_id": [other_id] if caller == "member" else [member_id, other_id],
        },
    )
    args = [f"{cloud.base}/v1/openapi.json", "--no-color", "--report", "junit", "--report-dir", str(tmp_path)]
    if caller == "member":
        args += ["--rate-limit", MEMBER_RATE]
    token = ADMIN_TOKEN if caller == "admin" else member.token
    fuzzer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        *args,
        cwd=ROOT,
        env={**os.environ, "NEBULA_FUZZ_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(fuzzer.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        fuzzer.kill()
        await fuzzer.wait()
        raise
    report = output.decode(errors="replace")
    print(report)  # shown with -s, or -rP
    assert fuzzer.returncode == 0, report
