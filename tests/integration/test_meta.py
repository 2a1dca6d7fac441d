"""The metadata service: NoCloud for booting VMs, its own read model, and its secrecy."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest
import yaml
from aiohttp.test_utils import TestServer

from nebula_core.contract import subjects
from nebula_core.contract.kv import InstanceSeed
from nebula_core.contract.node import guest_mac
from nebula_core.orchestrator.service import Orchestrator
from nebula_meta.app import make_app
from tests.integration.conftest import Cloud
from tests.integration.test_api import drive, instance_body
from tests.support import eventually

USER_DATA = "#!/bin/sh\necho 'nonce-42' \"quoted\" é\n"


@pytest.fixture
async def meta(cloud: Cloud) -> AsyncIterator[str]:
    server = TestServer(make_app(cloud.settings_for("meta"), rate=50, burst=20), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def new_instance(cloud: Cloud, **extra: object) -> tuple[str, str]:
    project_id = await cloud.project(f"p{uuid.uuid4().hex[:6]}")
    if not (await cloud.pool.fetchval("SELECT count(*) FROM images")):
        await cloud.image()
    status, body = await cloud.admin.post("/v1/instances", instance_body(project_id, user_data=USER_DATA, **extra))
    assert status == 202, body
    kv = await cloud.js.key_value("nebula_userdata")
    seed = msgspec.json.decode((await kv.get(body["id"])).value, type=InstanceSeed)
    return body["id"], seed.metadata_token


async def fetch(session: aiohttp.ClientSession, url: str, method: str = "GET", data: bytes | None = None):  # type: ignore[no-untyped-def]
    async with session.request(method, url, data=data) as response:
        return response.status, await response.read()


async def served(session: aiohttp.ClientSession, url: str) -> bool:
    return (await fetch(session, url))[0] == 200


async def test_a_vm_gets_its_nocloud_data(cloud: Cloud, meta: str) -> None:
    instance_id, token = await new_instance(cloud, name="web-7", tags={"tier": "web"})
    seed = f"{meta}/nocloud/{instance_id}/{token}/"
    await eventually(lambda: served(cloud.session, seed + "meta-data"))

    _, meta_data = await fetch(cloud.session, seed + "meta-data")
    status, user_data = await fetch(cloud.session, seed + "user-data")
    vendor = await fetch(cloud.session, seed + "vendor-data")
    _, network = await fetch(cloud.session, seed + "network-config")

    document = yaml.safe_load(meta_data)
    assert document["instance-id"] == instance_id and document["local-hostname"] == "web-7"
    assert document["tags"] == {"tier": "web"}
    assert status == 200 and user_data == USER_DATA.encode()  # exactly the bytes given
    # Vendor-data: any stock cloud-init phones home to this instance's own URL when done.
    assert vendor[0] == 200 and vendor[1].startswith(b"#cloud-config\n")
    assert yaml.safe_load(vendor[1]) == {
        "phone_home": {"url": seed + "phone-home", "post": ["instance_id"], "tries": 10}
    }
    # Network-config: DHCP on the NIC with the MAC the node gives this instance.
    nic = {"match": {"macaddress": guest_mac(uuid.UUID(instance_id))}, "dhcp4": True}
    assert yaml.safe_load(network) == {"version": 2, "ethernets": {"nic0": nic}}


async def test_wrong_token_unknown_and_deleted_instances_look_alike(cloud: Cloud, meta: str) -> None:
    instance_id, token = await new_instance(cloud)
    gone_id, gone_token = await new_instance(cloud)
    await eventually(lambda: served(cloud.session, f"{meta}/nocloud/{gone_id}/{gone_token}/meta-data"))
    await drive(cloud, gone_id, "request_delete", "mark_deleted")
    await eventually(lambda: _not_served(cloud.session, f"{meta}/nocloud/{gone_id}/{gone_token}/meta-data"))

    answers = [
        await fetch(cloud.session, f"{meta}/nocloud/{instance_id}/{token[:-1]}x/meta-data"),
        await fetch(cloud.session, f"{meta}/nocloud/{uuid.uuid4()}/{token}/meta-data"),
        await fetch(cloud.session, f"{meta}/nocloud/{gone_id}/{gone_token}/user-data"),
        await fetch(cloud.session, f"{meta}/nocloud/not-a-uuid/{token}/meta-data"),
        await fetch(cloud.session, f"{meta}/v1/projects"),
        await fetch(cloud.session, f"{meta}/nocloud/{instance_id}/{token}/secrets"),
    ]
    assert len(set(answers)) == 1 and answers[0][0] == 404


async def _not_served(session: aiohttp.ClientSession, url: str) -> bool:
    return (await fetch(session, url))[0] == 404


@pytest.fixture
async def orchestrator(cloud: Cloud) -> AsyncIterator[Callable[[], Awaitable[Orchestrator]]]:
    """Starts an orchestrator, which records what the metadata service relays (started
    once the test has put its instance where it wants: it would place a pending one)."""
    started: list[Orchestrator] = []

    async def start() -> Orchestrator:
        orchestrator = Orchestrator(cloud.settings_for("orchestrator"), pool=cloud.pool)
        await orchestrator.start()
        started.append(orchestrator)
        return orchestrator

    yield start
    for orchestrator in started:
        await orchestrator.stop()


async def boot_commands(cloud: Cloud) -> int:
    info = await cloud.js.stream_info(subjects.COMMANDS_STREAM, subjects_filter=subjects.command_subject("booted"))
    return sum((info.state.subjects or {}).values())


async def all_boots_handled(cloud: Cloud) -> bool:
    return await boot_commands(cloud) == 0


async def test_a_phone_home_is_relayed_once_however_often_the_guest_repeats_it(cloud: Cloud, meta: str) -> None:
    instance_id, token = await new_instance(cloud)
    seed = f"{meta}/nocloud/{instance_id}/{token}/"
    await eventually(lambda: served(cloud.session, seed + "meta-data"))

    answers = [await fetch(cloud.session, seed + "phone-home", "POST", b"hostname=web-1") for _ in range(3)]

    assert [a[0] for a in answers] == [200, 200, 200]
    assert await boot_commands(cloud) == 1  # no orchestrator here: it waits on the work queue
    # The metadata service records nothing itself.
    history = (await cloud.admin.get(f"/v1/instances/{instance_id}/events"))[1]["items"]
    assert [e["type"] for e in history] == ["instance.created"]


async def test_phone_home_records_booted_at_once(
    cloud: Cloud, meta: str, orchestrator: Callable[[], Awaitable[Orchestrator]]
) -> None:
    instance_id, token = await new_instance(cloud)
    await drive(cloud, instance_id, "schedule", "launch")
    await orchestrator()
    seed = f"{meta}/nocloud/{instance_id}/{token}/"
    await eventually(lambda: served(cloud.session, seed + "meta-data"))

    first = await fetch(cloud.session, seed + "phone-home", "POST", b"instance_id=x&hostname=web-1")
    second = await fetch(cloud.session, seed + "phone-home", "POST", b"instance_id=x&hostname=web-1")

    assert first[0] == second[0] == 200
    booted = await eventually(lambda: _booted_at(cloud, instance_id))
    history = (await cloud.admin.get(f"/v1/instances/{instance_id}/events"))[1]["items"]
    assert [e["type"] for e in history].count("instance.booted") == 1
    assert history[-1]["actor"] == "system:meta" and booted
    await eventually(lambda: all_boots_handled(cloud))  # acked


async def test_a_phone_home_of_an_instance_that_cannot_boot_now_is_answered_and_not_recorded(
    cloud: Cloud, meta: str, orchestrator: Callable[[], Awaitable[Orchestrator]]
) -> None:
    instance_id, token = await new_instance(cloud)
    await drive(cloud, instance_id, "schedule", "launch", "request_stop", "mark_stopped")
    await orchestrator()
    seed = f"{meta}/nocloud/{instance_id}/{token}/"
    await eventually(lambda: served(cloud.session, seed + "meta-data"))

    assert (await fetch(cloud.session, seed + "phone-home", "POST", b""))[0] == 200

    await eventually(lambda: all_boots_handled(cloud))  # handled and acked
    history = (await cloud.admin.get(f"/v1/instances/{instance_id}/events"))[1]["items"]
    assert "instance.booted" not in [e["type"] for e in history]
    assert (await cloud.admin.get(f"/v1/instances/{instance_id}"))[1]["booted_at"] is None


async def _booted_at(cloud: Cloud, instance_id: str):  # type: ignore[no-untyped-def]
    return (await cloud.admin.get(f"/v1/instances/{instance_id}"))[1]["booted_at"]


async def test_requests_per_instance_are_rate_limited(cloud: Cloud, meta: str) -> None:
    instance_id, token = await new_instance(cloud)
    seed = f"{meta}/nocloud/{instance_id}/{token}/meta-data"
    await eventually(lambda: served(cloud.session, seed))
    statuses = [(await fetch(cloud.session, seed))[0] for _ in range(60)]
    assert 429 in statuses and statuses[0] == 200


async def test_a_restarted_service_answers_with_the_user_data_at_once(cloud: Cloud, meta: str) -> None:
    instance_id, token = await new_instance(cloud)
    await eventually(lambda: served(cloud.session, f"{meta}/nocloud/{instance_id}/{token}/user-data"))

    server = TestServer(make_app(cloud.settings_for("meta")), host="127.0.0.1")
    await server.start_server()  # returns once the history and the seeds have been read
    try:
        fresh = str(server.make_url("")).rstrip("/")
        health = await fetch(cloud.session, f"{fresh}/healthz")
        answer = await fetch(cloud.session, f"{fresh}/nocloud/{instance_id}/{token}/user-data")
    finally:
        await server.close()

    assert health[0] == 200
    assert answer == (200, USER_DATA.encode())


async def test_guessing_an_instances_token_never_uses_up_its_requests(cloud: Cloud, meta: str) -> None:
    instance_id, token = await new_instance(cloud)
    right = f"{meta}/nocloud/{instance_id}/{token}/meta-data"
    wrong = f"{meta}/nocloud/{instance_id}/{'x' * 43}/meta-data"
    await eventually(lambda: served(cloud.session, right))

    guesses = [(await fetch(cloud.session, wrong))[0] for _ in range(60)]
    after = [(await fetch(cloud.session, right))[0] for _ in range(5)]

    assert guesses[0] == 404 and 429 in guesses and set(guesses) == {404, 429}  # the guesser is slowed
    assert after == [200] * 5  # the instance itself is not


async def test_the_token_never_reaches_the_event_log_or_read_models(cloud: Cloud) -> None:
    _instance_id, token = await new_instance(cloud)
    sub = await cloud.js.subscribe("nebula.evt.>", ordered_consumer=True, stream="NEBULA_EVENTS")
    total = (await cloud.js.stream_info("NEBULA_EVENTS")).state.messages
    payloads = [(await sub.next_msg(timeout=5)).data for _ in range(total)]
    await sub.unsubscribe()
    rows = await cloud.pool.fetch("SELECT * FROM instances")
    assert all(token.encode() not in p for p in payloads)
    assert token not in str([dict(r) for r in rows])
    assert len(token) >= 43  # 256 random bits, url-safe base64


async def test_stock_cloud_init_finds_and_reads_its_seed(cloud: Cloud, meta: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Debian 12's own cloud-init, given the SMBIOS serial a node writes, gets its data."""
    instance_id, token = await new_instance(cloud, name="ci-guest")
    seed = f"{meta}/nocloud/{instance_id}/{token}/"
    await eventually(lambda: served(cloud.session, seed + "meta-data"))
    serial = f"ds=nocloud-net;s={seed}"
    probe = Path(__file__).with_name("cloudinit_probe.py")
    unpacked = Path(sys.prefix) / "cloud-init" / "usr" / "lib" / "python3" / "dist-packages"
    assert (unpacked / "cloudinit").is_dir(), "make test unpacks Debian's cloud-init here (ops/bootstrap.sh --test)"

    process = await asyncio.create_subprocess_exec(
        "/usr/bin/python3",
        str(probe),
        serial,
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(unpacked)},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 0, err.decode()
    got = json.loads(out)
    assert got["found"] is True
    assert got["instance_id"] == instance_id and got["hostname"] == "ci-guest"
    assert got["userdata_raw"] == USER_DATA
    # The vendor-data cloud-init will merge: phone home to this instance's own URL.
    assert yaml.safe_load(got["vendordata_raw"])["phone_home"]["url"] == seed + "phone-home"
    # cloud-init 22.4 reads network-config from local seeds only, not over HTTP: the guest
    # falls back to DHCP on its first NIC, which is what the served one says too.
    assert got["network_config"] is None
