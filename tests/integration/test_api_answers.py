"""One answer per resource: what a list says of an item is what the resource's own answer
says of it (GET by id, `/v1/users/me`, the POST that made a member), field for field —
project usage included. Real NATS, real Postgres, a running projector."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from nebula_core.contract import subjects
from nebula_core.contract.kv import Heartbeat
from nebula_core.contract.types import Overcommit, Resources
from nebula_core.domain import AGGREGATES, Instance, Node
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from tests.integration.conftest import Client, Cloud
from tests.integration.test_api import drive, instance_body
from tests.support import eventually

QUOTAS = {"instances": 5, "vcpus": 10, "ram_mb": 8192, "disk_gb": 50}


async def listed(client: Client, path: str) -> dict[str, dict[str, Any]]:
    """Every item of a list (all its pages), by id."""
    items: dict[str, dict[str, Any]] = {}
    url = path
    while True:
        status, page = await client.get(url)
        assert status == 200, page
        items.update({str(item["id"]): item for item in page["items"]})
        if page["next"] is None:
            return items
        url = f"{path}{'&' if '?' in path else '?'}cursor={page['next']}"


async def got(client: Client, path: str) -> dict[str, Any]:
    status, body = await client.get(path)
    assert status == 200, body
    return body


async def _usage_is(client: Client, project_id: str, instances: int) -> dict[str, Any] | None:
    body = await got(client, f"/v1/projects/{project_id}")
    return body if body["usage"]["instances"] == instances else None


async def test_a_listed_project_is_the_project_got_by_id_usage_included(cloud: Cloud) -> None:
    user_id, alice = await cloud.user("alice")
    busy = await cloud.project("busy", description="holds two", tags={"team": "infra"}, quotas=QUOTAS)
    idle = await cloud.project("idle")
    await cloud.member(busy, user_id, "member")
    await cloud.member(idle, user_id, "reader")
    await cloud.image()
    for name, vcpus in (("web-1", 1), ("web-2", 2)):
        status, body = await alice.post("/v1/instances", instance_body(busy, name=name, vcpus=vcpus))
        assert status == 202, body
    status, gone = await alice.post("/v1/instances", instance_body(busy, name="gone"))
    assert status == 202, gone
    await drive(cloud, gone["id"], "request_delete", "mark_deleted")  # a deleted instance holds nothing
    await eventually(lambda: _usage_is(alice, busy, 2))

    for client in (cloud.admin, alice):
        projects = await listed(client, "/v1/projects?limit=1")  # one per page: the cursor's rows too
        assert set(projects) == {busy, idle}
        for project_id in (busy, idle):
            assert projects[project_id] == await got(client, f"/v1/projects/{project_id}")
        tagged = await listed(client, "/v1/projects?tag=team=infra")
        assert tagged == {busy: projects[busy]}
    assert projects[busy]["usage"] == {"instances": 2, "vcpus": 3, "ram_mb": 512, "disk_gb": 2}
    assert projects[idle]["usage"] == {"instances": 0, "vcpus": 0, "ram_mb": 0, "disk_gb": 0}
    assert projects[busy]["quotas"] == QUOTAS and projects[busy]["tags"] == {"team": "infra"}


async def test_a_listed_instance_is_the_instance_got_by_id_in_every_state(cloud: Cloud) -> None:
    user_id, alice = await cloud.user("alice")
    project_id = await cloud.project()
    await cloud.member(project_id, user_id, "member")
    await cloud.image()
    ids = []
    for name in ("pending", "running", "failed", "deleted"):
        status, body = await alice.post("/v1/instances", instance_body(project_id, name=name, tags={"n": name}))
        assert status == 202, body
        ids.append(body["id"])
    _, running, failed, deleted = ids
    await drive(cloud, running, "schedule", "launch")
    await drive(cloud, failed, "schedule")
    store = EventStore(cloud.js, Codec(*AGGREGATES))  # record a failure as the orchestrator would
    instance = await store.load(Instance, uuid.UUID(failed))
    instance.fail("no room anywhere")
    await store.save(instance, actor="system:test")
    await drive(cloud, deleted, "request_delete", "mark_deleted")
    await eventually(lambda: _state_is(alice, deleted, "deleted"))
    await eventually(lambda: _state_is(alice, failed, "error"))

    for client in (cloud.admin, alice):
        live = await listed(client, "/v1/instances?limit=2")
        assert set(live) == set(ids) - {deleted}
        for instance_id in live:
            assert live[instance_id] == await got(client, f"/v1/instances/{instance_id}")
        gone = await listed(client, "/v1/instances?state=deleted")
        assert gone == {deleted: await got(client, f"/v1/instances/{deleted}")}
    assert live[running]["state"] == "running" and live[running]["node_id"] == "node-a"
    assert live[failed]["error"] == "no room anywhere" and live[failed]["tags"] == {"n": "failed"}


async def _state_is(client: Client, instance_id: str, state: str) -> bool:
    return (await got(client, f"/v1/instances/{instance_id}"))["state"] == state


async def test_a_listed_image_is_the_image_got_by_id(cloud: Cloud) -> None:
    image_ids = [await cloud.image(name) for name in ("tiny", "small", "big")]
    _, user = await cloud.user("bob")  # everyone may read images
    for client in (cloud.admin, user):
        images = await listed(client, "/v1/images?limit=2")
        assert set(images) == set(image_ids)
        for image_id in image_ids:
            assert images[image_id] == await got(client, f"/v1/images/{image_id}")


async def test_a_listed_user_is_the_user_who_asks_who_they_are(cloud: Cloud) -> None:
    status, root = await cloud.admin.post("/v1/users", {"name": "root", "is_admin": True})
    assert status == 201, root
    alice_id, alice = await cloud.user("alice")
    root_client = cloud.client(root["token"])
    users = await listed(root_client, "/v1/users?limit=1")
    assert set(users) == {root["id"], alice_id}
    for user_id, client in ((root["id"], root_client), (alice_id, alice)):
        assert users[user_id] == await got(root_client, f"/v1/users/{user_id}")
        # Who a token belongs to is that user's answer, less the token shown only once.
        assert {k: v for k, v in users[user_id].items() if k != "token"} == await got(client, "/v1/users/me")
    assert all(user["token"] is None for user in users.values())  # shown once, at creation, only
    assert {k: root[k] for k in ("id", "name", "is_admin", "created_at")} == {
        k: users[root["id"]][k] for k in ("id", "name", "is_admin", "created_at")
    }


async def test_a_listed_member_is_the_answer_that_made_them_a_member(cloud: Cloud) -> None:
    project_id = await cloud.project()
    alice_id, _ = await cloud.user("alice")
    bob_id, _ = await cloud.user("bob")
    made = {}
    for user_id, role in ((alice_id, "admin"), (bob_id, "reader"), (bob_id, "member")):
        status, body = await cloud.admin.post(f"/v1/projects/{project_id}/members", {"user_id": user_id, "role": role})
        assert status == 201, body
        made[user_id] = body
    status, page = await cloud.admin.get(f"/v1/projects/{project_id}/members")
    assert status == 200, page
    assert {item["user_id"]: item for item in page["items"]} == made
    assert made[bob_id]["role"] == "member"


async def test_a_node_is_the_same_in_every_list_that_holds_it(cloud: Cloud) -> None:
    store = EventStore(cloud.js, Codec(*AGGREGATES))
    capacity = Resources(vcpus=8, ram_mb=16384, disk_gb=200)
    alive = Node(name="n1", region="r1", capacity=capacity, overcommit=Overcommit(cpu=2.0), agent_version="1.0")
    silent = Node(name="n2", region="r2", capacity=capacity, overcommit=Overcommit(), agent_version="1.0")
    alive.claim(uuid.uuid4(), Resources(vcpus=2, ram_mb=1024, disk_gb=10))
    silent.mark_down("heartbeat lost")
    await store.save(alive)
    await store.save(silent)
    beat = Heartbeat(
        node_id="n1",
        name="n1",
        region="r1",
        capacity=capacity,
        overcommit=Overcommit(cpu=2.0),
        allocated=Resources(vcpus=2, ram_mb=1024, disk_gb=10),
        running=1,
        agent_version="1.0",
        at=datetime.now(UTC),
    )
    bucket = await cloud.js.key_value(subjects.NODES_BUCKET)
    await bucket.put("n1", msgspec.json.encode(beat))

    nodes = await eventually(lambda: _nodes(cloud.admin, "/v1/nodes", 2))
    assert nodes is not None
    for region, node_id in (("r1", "n1"), ("r2", "n2")):
        assert await _nodes(cloud.admin, f"/v1/nodes?region={region}", 1) == {node_id: nodes[node_id]}
    assert nodes["n1"]["alive"] and not nodes["n1"]["down"]
    assert nodes["n1"]["allocated"] == {"vcpus": 2, "ram_mb": 1024, "disk_gb": 10} and nodes["n1"]["instances"] == 1
    assert nodes["n1"]["last_heartbeat"] is not None
    assert not nodes["n2"]["alive"] and nodes["n2"]["down"] and nodes["n2"]["last_heartbeat"] is None


async def _nodes(client: Client, path: str, count: int) -> dict[str, dict[str, Any]] | None:
    status, page = await client.get(path)
    assert status == 200, page
    return {item["id"]: item for item in page["items"]} if len(page["items"]) == count else None
