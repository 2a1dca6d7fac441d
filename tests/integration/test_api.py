"""The HTTP API against real NATS, real Postgres and a running projector."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import uuid
from datetime import datetime, timedelta

import msgspec
import pytest

from nebula_core.domain import AGGREGATES, Instance
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from tests.integration.conftest import Cloud
from tests.support import eventually


def instance_body(project_id: str, **extra: object) -> dict[str, object]:
    return {
        "project_id": project_id,
        "name": "web-1",
        "vcpus": 1,
        "ram_mb": 256,
        "disk_gb": 1,
        "image": "tiny",
        "user_data": "#!/bin/sh\necho hello\n",
        "tags": {"tier": "web"},
        "region": "eu",
        **extra,
    }


async def drive(cloud: Cloud, instance_id: str, *steps: str) -> None:
    """Record what the orchestrator would, straight on the event store (no orchestrator here)."""
    store = EventStore(cloud.js, Codec(*AGGREGATES))
    instance = await store.load(Instance, uuid.UUID(instance_id))
    for step in steps:
        if step == "schedule":
            instance.schedule("node-a")
        else:
            getattr(instance, step)()
    await store.save(instance, actor="system:test")


async def test_the_whole_lifecycle_through_http(cloud: Cloud) -> None:
    user_id, alice = await cloud.user("alice")
    project_id = await cloud.project("alpha", tags={"team": "infra"})
    await cloud.member(project_id, user_id, "member")
    image_id = await cloud.image()

    status, created = await alice.post("/v1/instances", instance_body(project_id))
    assert status == 202, created
    assert created["state"] == "pending" and created["image"] == image_id
    instance_id = created["id"]

    status, seen = await alice.get(f"/v1/instances/{instance_id}")  # read-your-writes: no 404
    assert status == 200 and seen["name"] == "web-1" and seen["tags"] == {"tier": "web"}

    await drive(cloud, instance_id, "schedule", "launch")
    running = await eventually(lambda: _state(alice, instance_id, "running"))
    assert running["node_id"] == "node-a"

    status, stopping = await alice.post(f"/v1/instances/{instance_id}/actions", {"action": "stop"})
    assert status == 202 and stopping["state"] == "stopping"
    await drive(cloud, instance_id, "mark_stopped")
    status, starting = await _act_when(alice, instance_id, "stopped", "start")
    assert starting["state"] == "starting"
    await drive(cloud, instance_id, "mark_started")
    status, rebooting = await _act_when(alice, instance_id, "running", "reboot")
    assert rebooting["state"] == "rebooting"
    await drive(cloud, instance_id, "mark_rebooted")
    await eventually(lambda: _state(alice, instance_id, "running"))

    status, deleting = await alice.call("DELETE", f"/v1/instances/{instance_id}")
    assert status == 202 and deleting["state"] == "deleting"

    status, page = await alice.get(f"/v1/instances?project_id={project_id}&state=deleting")
    assert [i["id"] for i in page["items"]] == [instance_id]
    status, history = await alice.get(f"/v1/instances/{instance_id}/events")
    assert [e["type"] for e in history["items"]] == [
        "instance.created",
        "instance.scheduled",
        "instance.launched",
        "instance.stop_requested",
        "instance.stopped",
        "instance.start_requested",
        "instance.started",
        "instance.reboot_requested",
        "instance.rebooted",
        "instance.delete_requested",
    ]
    assert history["items"][0]["actor"] == f"user:{user_id}"
    assert history["items"][1]["actor"] == "system:test"
    assert all(a["seq"] < b["seq"] for a, b in zip(history["items"], history["items"][1:], strict=False))
    assert "user_data" not in history["items"][0]["data"]  # secrets stay out of the log
    assert history["items"][0]["data"]["user_data_size"] == len("#!/bin/sh\necho hello\n")

    commands = await cloud.js.stream_info("NEBULA_COMMANDS")
    assert commands.state.messages == 5  # place, stop, start, reboot, delete — nobody consumed them here


async def _state(client, instance_id: str, state: str):  # type: ignore[no-untyped-def]
    status, body = await client.get(f"/v1/instances/{instance_id}")
    return body if status == 200 and body["state"] == state else None


async def _act_when(client, instance_id: str, state: str, action: str):  # type: ignore[no-untyped-def]
    await eventually(lambda: _state(client, instance_id, state))
    status, body = await client.post(f"/v1/instances/{instance_id}/actions", {"action": action})
    assert status == 202, body
    return status, body


async def test_an_instance_as_it_was_at_a_past_time(cloud: Cloud) -> None:
    project_id = await cloud.project()
    await cloud.image()
    status, created = await cloud.admin.post("/v1/instances", instance_body(project_id))
    await drive(cloud, created["id"], "schedule")
    history = (await cloud.admin.get(f"/v1/instances/{created['id']}/events"))[1]["items"]
    created_at = history[0]["at"]
    scheduled_at = datetime.fromisoformat(history[1]["at"].replace("Z", "+00:00"))

    _, then = await cloud.admin.get(f"/v1/instances/{created['id']}?at={created_at}")
    _, later = await cloud.admin.get(f"/v1/instances/{created['id']}?at={scheduled_at.isoformat()}")
    before = (datetime.fromisoformat(created_at.replace("Z", "+00:00")) - timedelta(seconds=1)).isoformat()
    status, _none = await cloud.admin.get(f"/v1/instances/{created['id']}?at={before}")
    bad_status, bad = await cloud.admin.get(f"/v1/instances/{created['id']}?at=yesterday")

    assert then["state"] == "pending" and later["state"] == "scheduled" and later["node_id"] == "node-a"
    assert status == 404
    assert bad_status == 422 and bad["fields"] == ["query:at"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"vcpus": "two"}, "$.vcpus"),
        ({"vcpus": -1}, "$.vcpus"),
        ({"vcpus": 100000}, "$.vcpus"),
        ({"ram_mb": 0}, "$.ram_mb"),
        ({"disk_gb": 10**9}, "$.disk_gb"),
        ({"name": ""}, "$.name"),
        ({"name": "has space"}, "$.name"),
        ({"name": None}, "$.name"),
        ({"tags": {"k": 5}}, "$.tags"),
        ({"tags": ["a"]}, "$.tags"),
        ({"description": "bell\x07"}, "$.description"),
        ({"user_data": "x" * (64 * 1024 + 1)}, "$.user_data"),
        ({"user_data": "é" * (40 * 1024)}, "$.user_data"),  # 80 KiB of UTF-8 in 40 Ki characters
        ({"user_data": "x" * (400 * 1024)}, "$.user_data"),
        ({"user_data": "\x01" * (1 << 20)}, "$.user_data"),  # a body over the API's 1 MiB
        ({"tags": {"": "x"}}, "$.tags"),
        ({"colour": "blue"}, "$.colour"),
        ({"project_id": "not-a-uuid"}, "$.project_id"),
        ({"image": "no-such-image"}, "$.image"),
    ],
    ids=lambda v: str(v)[:40],
)
async def test_malformed_instance_bodies_get_422_naming_the_field(cloud: Cloud, change: dict, field: str) -> None:
    project_id = await cloud.project()
    await cloud.image()
    body = {**instance_body(project_id), **change}

    status, answer = await cloud.admin.post("/v1/instances", body)

    assert status == 422, answer
    assert answer["code"] == "invalid" and field in answer["fields"], answer
    assert (await cloud.pool.fetchval("SELECT count(*) FROM instances")) == 0  # nothing half-written


async def test_user_data_of_64_kib_is_taken_whatever_its_bytes(cloud: Cloud) -> None:
    project_id = await cloud.project()
    await cloud.image()
    user_data = "\x01" * (64 * 1024)  # six bytes each once escaped as JSON

    status, created = await cloud.admin.post("/v1/instances", {**instance_body(project_id), "user_data": user_data})

    assert status == 202, created
    seed = await (await cloud.js.key_value("nebula_userdata")).get(created["id"])
    assert msgspec.json.decode(seed.value)["user_data"] == user_data


PROJECT = {"name": "p"}
IMAGE = {"name": "img", "format": "qcow2", "source": "https://images.example/base.qcow2", "sha256": "a" * 64}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/projects", {**PROJECT, "quotas": {"instancez": 5}}, "$.quotas.instancez"),
        ("POST", "/v1/projects", {**PROJECT, "quotas": {"vcpus": -1}}, "$.quotas.vcpus"),
        ("POST", "/v1/projects", {**PROJECT, "name": "a/b"}, "$.name"),
        ("POST", "/v1/projects", {**PROJECT, "tags": {"k" * 64: "v"}}, "$.tags"),
        ("POST", "/v1/projects", {**PROJECT, "owner": "me"}, "$.owner"),
        ("PATCH", "/v1/projects/{project}", {"quotas": {"ram_mb": "lots"}}, "$.quotas.ram_mb"),
        ("PATCH", "/v1/projects/{project}", {"description": 5}, "$.description"),
        ("POST", "/v1/projects/{project}/members", {"user_id": "nobody", "role": "member"}, "$.user_id"),
        ("POST", "/v1/projects/{project}/members", {"user_id": str(uuid.uuid4()), "role": "owner"}, "$.role"),
        ("POST", "/v1/users", {"name": ""}, "$.name"),
        ("POST", "/v1/users", {"name": "bob", "is_admin": "yes"}, "$.is_admin"),
        ("POST", "/v1/images", {**IMAGE, "format": "vmdk"}, "$.format"),
        ("POST", "/v1/images", {**IMAGE, "sha256": "xyz"}, "$.sha256"),
        ("POST", "/v1/images", {**IMAGE, "size": -1}, "$.size"),
        ("POST", "/v1/images", {**IMAGE, "source": "ftp://x/y"}, "$.source"),
        ("POST", "/v1/instances/{instance}/actions", {"action": 7}, "$.action"),
    ],
    ids=lambda v: str(v)[:40],
)
async def test_every_body_names_the_field_it_refuses(
    cloud: Cloud, method: str, path: str, body: dict, field: str
) -> None:
    project_id = await cloud.project("base")
    await cloud.image()
    _, instance = await cloud.admin.post("/v1/instances", instance_body(project_id))
    before = (
        await cloud.pool.fetchval("SELECT count(*) FROM projects")
        + await cloud.pool.fetchval("SELECT count(*) FROM users")
        + await cloud.pool.fetchval("SELECT count(*) FROM images")
    )
    target = path.format(project=project_id, instance=instance["id"])

    status, answer = await cloud.admin.call(method, target, json=body)

    assert status == 422, answer
    assert answer["code"] == "invalid" and answer["fields"] == [field], answer
    after = (
        await cloud.pool.fetchval("SELECT count(*) FROM projects")
        + await cloud.pool.fetchval("SELECT count(*) FROM users")
        + await cloud.pool.fetchval("SELECT count(*) FROM images")
    )
    assert after == before
    _, project = await cloud.admin.get(f"/v1/projects/{project_id}")
    assert project["version"] == 1  # a refused PATCH changed nothing


async def test_a_missing_field_and_broken_json_get_422(cloud: Cloud) -> None:
    project_id = await cloud.project()
    body = instance_body(project_id)
    del body["vcpus"]
    status, missing = await cloud.admin.post("/v1/instances", body)
    status2, broken = await cloud.admin.call(
        "POST", "/v1/instances", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    status3, _empty = await cloud.admin.call("POST", "/v1/projects")
    assert (status, missing["fields"]) == (422, ["$.vcpus"])
    assert status2 == 422 and broken["fields"] == ["$"]
    assert status3 == 422


async def test_a_member_of_a_gets_404_for_everything_in_b(cloud: Cloud) -> None:
    a_user, alice = await cloud.user("alice")
    project_a, project_b = await cloud.project("a"), await cloud.project("b")
    await cloud.member(project_a, a_user, "admin")
    await cloud.image()
    _, in_b = await cloud.admin.post("/v1/instances", instance_body(project_b))
    b = in_b["id"]

    attempts = [
        await alice.get(f"/v1/projects/{project_b}"),
        await alice.call("PATCH", f"/v1/projects/{project_b}", json={"description": "mine now"}),
        await alice.call("DELETE", f"/v1/projects/{project_b}"),
        await alice.get(f"/v1/projects/{project_b}/members"),
        await alice.post(f"/v1/projects/{project_b}/members", {"user_id": a_user, "role": "admin"}),
        await alice.get(f"/v1/instances/{b}"),
        await alice.get(f"/v1/instances/{b}/events"),
        await alice.get(f"/v1/instances/{b}/console"),
        await alice.post(f"/v1/instances/{b}/actions", {"action": "stop"}),
        await alice.call("DELETE", f"/v1/instances/{b}"),
        await alice.post("/v1/instances", instance_body(project_b)),
    ]
    assert [status for status, _ in attempts] == [404] * len(attempts), attempts
    _, projects = await alice.get("/v1/projects")
    _, instances = await alice.get("/v1/instances")
    assert [p["id"] for p in projects["items"]] == [project_a]
    assert instances["items"] == []
    status, _ = await alice.post("/v1/projects", {"name": "c"})  # users do not create projects
    assert status == 403


async def test_a_reader_sees_but_cannot_act(cloud: Cloud) -> None:
    user_id, reader = await cloud.user("rita")
    project_id = await cloud.project()
    await cloud.member(project_id, user_id, "reader")
    await cloud.image()
    _, created = await cloud.admin.post("/v1/instances", instance_body(project_id))

    assert (await reader.get(f"/v1/instances/{created['id']}"))[0] == 200
    assert (await reader.post("/v1/instances", instance_body(project_id)))[0] == 403
    assert (await reader.call("DELETE", f"/v1/instances/{created['id']}"))[0] == 403


async def test_quotas_refuse_what_the_project_cannot_hold(cloud: Cloud) -> None:
    project_id = await cloud.project("small", quotas={"instances": 2, "vcpus": 3, "ram_mb": 4096, "disk_gb": 10})
    await cloud.image()

    first = await cloud.admin.post("/v1/instances", instance_body(project_id, vcpus=2, name="a"))
    too_many_cpus = await cloud.admin.post("/v1/instances", instance_body(project_id, vcpus=2, name="b"))
    second = await cloud.admin.post("/v1/instances", instance_body(project_id, vcpus=1, name="c"))
    third = await cloud.admin.post("/v1/instances", instance_body(project_id, vcpus=1, name="d"))

    assert first[0] == 202 and second[0] == 202
    assert too_many_cpus[0] == 409 and too_many_cpus[1]["code"] == "quota_exceeded"
    assert "vcpus: 2 + 2 > 3" in too_many_cpus[1]["message"]
    assert third[0] == 409 and "instances: 2 of 2 used" in third[1]["message"]
    _, project = await cloud.admin.get(f"/v1/projects/{project_id}")
    assert project["usage"] == {"instances": 2, "vcpus": 3, "ram_mb": 512, "disk_gb": 2}


async def test_concurrent_creates_cannot_overrun_a_quota(cloud: Cloud) -> None:
    project_id = await cloud.project("race", quotas={"instances": 3, "vcpus": 100, "ram_mb": 100000, "disk_gb": 100})
    await cloud.image()
    results = await asyncio.gather(
        *(cloud.admin.post("/v1/instances", instance_body(project_id, name=f"vm{i}")) for i in range(8))
    )
    assert sorted(status for status, _ in results) == [202] * 3 + [409] * 5
    assert await cloud.pool.fetchval("SELECT count(*) FROM instances WHERE project_id = $1", uuid.UUID(project_id)) == 3


async def test_a_repeated_post_with_an_idempotency_key_gets_the_first_answer(cloud: Cloud) -> None:
    project_id = await cloud.project()
    await cloud.image()
    key = {"Idempotency-Key": "create-web-1"}

    first = await cloud.admin.post("/v1/instances", instance_body(project_id), headers=key)
    again = await cloud.admin.post("/v1/instances", instance_body(project_id), headers=key)
    twins = await asyncio.gather(
        *(
            cloud.admin.post("/v1/instances", instance_body(project_id, name="twin"), headers={"Idempotency-Key": "t"})
            for _ in range(4)
        )
    )
    reused = await cloud.admin.post("/v1/instances", instance_body(project_id, name="other"), headers=key)

    assert first[0] == again[0] == 202 and first[1] == again[1]
    assert {status for status, _ in twins} == {202} and len({body["id"] for _, body in twins}) == 1
    # The twins' seeds never replace one another: the node gets the token the event vouches for.
    seed = await (await cloud.js.key_value("nebula_userdata")).get(twins[0][1]["id"])
    token = msgspec.json.decode(seed.value)["metadata_token"]
    created = (await cloud.admin.get(f"/v1/instances/{twins[0][1]['id']}/events"))[1]["items"][0]
    assert created["type"] == "instance.created"
    assert created["data"]["metadata_token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert reused[0] == 422 and reused[1]["fields"] == ["header:Idempotency-Key"]
    assert await cloud.pool.fetchval("SELECT count(*) FROM instances") == 2
    commands = await cloud.js.stream_info("NEBULA_COMMANDS")
    assert commands.state.messages == 2  # one placement each


async def test_a_stale_if_match_is_a_409_and_changes_nothing(cloud: Cloud) -> None:
    project_id = await cloud.project()
    _status, seen = await cloud.admin.get(f"/v1/projects/{project_id}")
    etag = f'"{seen["version"]}"'

    first = await cloud.admin.call(
        "PATCH", f"/v1/projects/{project_id}", json={"description": "one"}, headers={"If-Match": etag}
    )
    second = await cloud.admin.call(
        "PATCH", f"/v1/projects/{project_id}", json={"description": "two"}, headers={"If-Match": etag}
    )

    assert first[0] == 200 and first[1]["description"] == "one"
    assert second[0] == 409 and second[1]["code"] == "concurrent_modification"
    assert (await cloud.admin.get(f"/v1/projects/{project_id}"))[1]["description"] == "one"


async def test_illegal_actions_are_409(cloud: Cloud) -> None:
    project_id = await cloud.project()
    await cloud.image()
    _, created = await cloud.admin.post("/v1/instances", instance_body(project_id))
    status, answer = await cloud.admin.post(f"/v1/instances/{created['id']}/actions", {"action": "reboot"})
    unknown = await cloud.admin.post(f"/v1/instances/{created['id']}/actions", {"action": "explode"})
    assert status == 409 and answer["code"] == "illegal_transition" and "pending" in answer["message"]
    assert unknown[0] == 422 and unknown[1]["fields"] == ["$.action"]


async def test_tokens_are_required_and_checked(cloud: Cloud) -> None:
    nobody = await cloud.session.get(cloud.base + "/v1/projects")
    wrong = await cloud.client("nbl_wrong").get("/v1/projects")
    health = await cloud.session.get(cloud.base + "/healthz")
    assert nobody.status == 401 and (await nobody.json())["code"] == "unauthorized"
    assert wrong[0] == 401
    assert health.status == 200 and (await health.json())["status"] == "ok"
    stored = await cloud.pool.fetch("SELECT token_hash FROM users")
    _, alice = await cloud.user("alice")
    assert all(len(r["token_hash"]) == 64 for r in await cloud.pool.fetch("SELECT token_hash FROM users"))
    assert not stored  # (no users before alice)
    assert alice.token not in str(await cloud.pool.fetch("SELECT * FROM users"))


async def test_lists_paginate_and_filter_by_tag_and_region(cloud: Cloud) -> None:
    project_id = await cloud.project(quotas={"instances": 50, "vcpus": 50, "ram_mb": 100000, "disk_gb": 100})
    await cloud.image()
    for i in range(7):
        await cloud.admin.post(
            "/v1/instances",
            instance_body(
                project_id, name=f"vm{i}", tags={"tier": "db" if i % 2 else "web"}, region="eu" if i < 5 else "us"
            ),
        )
    seen, cursor = [], None
    while True:
        _, page = await cloud.admin.get("/v1/instances?limit=3" + (f"&cursor={cursor}" if cursor else ""))
        seen += [i["name"] for i in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    _, dbs = await cloud.admin.get("/v1/instances?tag=tier=db")
    _, us = await cloud.admin.get("/v1/instances?region=us")
    bad = await cloud.admin.get("/v1/instances?limit=0")
    bogus = await cloud.admin.get("/v1/instances?state=bogus")
    assert bogus[0] == 422 and bogus[1]["fields"] == ["query:state"]
    assert seen == [f"vm{i}" for i in range(7)]
    assert sorted(i["name"] for i in dbs["items"]) == ["vm1", "vm3", "vm5"]
    assert sorted(i["name"] for i in us["items"]) == ["vm5", "vm6"]
    assert bad[0] == 422


@pytest.mark.parametrize("resume", ["Last-Event-ID", "since"])
async def test_the_event_stream_delivers_and_resumes_from_a_sequence(cloud: Cloud, resume: str) -> None:
    user_id, alice = await cloud.user("alice")
    mine, theirs = await cloud.project("mine"), await cloud.project("theirs")
    await cloud.member(mine, user_id, "member")
    await cloud.image()

    received: list[tuple[str, str]] = []

    async def listen(since: int) -> None:
        headers = {"Authorization": f"Bearer {alice.token}"}
        url = cloud.base + "/v1/events"
        if resume == "since":
            url += f"?since={since}"
        else:
            headers["Last-Event-ID"] = str(since)
        async with cloud.session.get(url, headers=headers) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            event_id = ""
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("event:"):
                    received.append((event_id, line[6:].strip()))
                if len(received) >= 3:
                    return

    _, a1 = await cloud.admin.post("/v1/instances", instance_body(mine, name="m1"))
    await cloud.admin.post("/v1/instances", instance_body(theirs, name="t1"))
    _, a2 = await cloud.admin.post("/v1/instances", instance_body(mine, name="m2"))
    history = (await cloud.admin.get(f"/v1/instances/{a1['id']}/events"))[1]["items"]
    listener = asyncio.create_task(listen(history[0]["seq"] - 1))
    await drive(cloud, a2["id"], "schedule")
    await asyncio.wait_for(listener, 10)

    types = [t for _, t in received]
    assert types == ["instance.created", "instance.created", "instance.scheduled"]  # m1, m2 — never t1
    assert int(received[0][0]) == history[0]["seq"]
    assert all(int(a) < int(b) for (a, _), (b, _) in itertools.pairwise(received))


async def test_metrics_and_openapi_are_served(cloud: Cloud) -> None:
    await cloud.project()
    metrics = await cloud.session.get(cloud.base + "/metrics")
    text = await metrics.text()
    spec = await cloud.session.get(cloud.base + "/v1/openapi.json")
    document = await spec.json()
    assert 'nebula_http_requests_total{method="POST",route="/v1/projects",status="201"} 1.0' in text
    assert "nebula_projection_lag_events" in text and "nebula_http_request_duration_seconds_bucket" in text
    assert document["openapi"].startswith("3.1")
    assert "/v1/instances/{instance_id}/actions" in document["paths"]
    create = document["paths"]["/v1/instances"]["post"]
    assert "422" in create["responses"] and "requestBody" in create
