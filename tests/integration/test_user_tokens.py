"""Users and their tokens against a real API, NATS and Postgres: cloud admins list, disable,
enable and delete users; a user or an admin rotates a token; a token rotated away, or whose
user is disabled or deleted, is refused at once - by every API process, before the
projector has caught up - and a deleted user's memberships go."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer

from nebula_core.api.app import make_app
from nebula_core.contract import http as shapes
from nebula_core.domain import AGGREGATES, User
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from tests.integration.conftest import Client, Cloud
from tests.integration.test_api_read_your_writes import Lagging, lagging  # noqa: F401 — a fixture
from tests.support import eventually


async def works(client: Client) -> bool:
    status, _ = await client.get("/v1/users/me")
    return status == 200


async def refused(client: Client) -> str | None:
    """The message of the 401 the token gets, None if it is accepted."""
    status, body = await client.get("/v1/users/me")
    return body["message"] if status == 401 else None


async def test_cloud_admins_list_disable_enable_and_delete_users(cloud: Cloud) -> None:
    project_id = await cloud.project("web")
    alice_id, alice = await cloud.user("alice")
    bob_id, bob = await cloud.user("bob")
    await cloud.member(project_id, alice_id, "member")

    status, page = await cloud.admin.get("/v1/users")
    assert status == 200
    assert [(u["name"], u["disabled"], u["token"]) for u in page["items"]] == [
        ("alice", False, None),
        ("bob", False, None),
    ]
    for forbidden in (
        await alice.get("/v1/users"),
        await alice.call("PATCH", f"/v1/users/{bob_id}", json={"disabled": True}),
        await alice.call("DELETE", f"/v1/users/{bob_id}"),
    ):
        assert forbidden[0] == 403, forbidden

    status, disabled = await cloud.admin.call("PATCH", f"/v1/users/{alice_id}", json={"disabled": True})
    assert status == 200 and disabled["disabled"] is True and disabled["token"] is None
    assert await refused(alice) == "this token's user is disabled"
    status, again = await cloud.admin.call("PATCH", f"/v1/users/{alice_id}", json={"disabled": True})
    assert (status, again) == (200, disabled)  # a repeat changes nothing
    status, listed = await cloud.admin.get(f"/v1/users/{alice_id}")
    assert (status, listed) == (200, disabled)
    assert await works(bob)

    status, enabled = await cloud.admin.call("PATCH", f"/v1/users/{alice_id}", json={"disabled": False})
    assert status == 200 and enabled["disabled"] is False
    assert await works(alice)
    status, projects = await alice.get("/v1/projects")
    assert [p["id"] for p in projects["items"]] == [project_id]  # a disabled user's memberships stay

    status, _ = await cloud.admin.call("DELETE", f"/v1/users/{alice_id}")
    assert status == 204
    assert await refused(alice) == "invalid token"
    status, members = await cloud.admin.get(f"/v1/projects/{project_id}/members")
    assert members["items"] == []  # a deleted user's memberships go
    for gone in (
        await cloud.admin.get(f"/v1/users/{alice_id}"),
        await cloud.admin.call("DELETE", f"/v1/users/{alice_id}"),
        await cloud.admin.call("PATCH", f"/v1/users/{alice_id}", json={"disabled": False}),
        await cloud.admin.post(f"/v1/users/{alice_id}/token"),
    ):
        assert gone[0] == 404, gone
    status, page = await cloud.admin.get("/v1/users")
    assert [u["id"] for u in page["items"]] == [bob_id]
    new_alice, _ = await cloud.user("alice")  # the name is free again; the user is a new one
    assert new_alice != alice_id


async def test_a_patch_names_what_it_cannot_take(cloud: Cloud) -> None:
    alice_id, _ = await cloud.user("alice")
    status, body = await cloud.admin.call("PATCH", f"/v1/users/{alice_id}", json={"disabled": "yes"})
    assert status == 422 and body["fields"] == ["$.disabled"]
    status, body = await cloud.admin.call("PATCH", f"/v1/users/{alice_id}", json={"name": "eve"})
    assert status == 422 and body["fields"] == ["$.name"]
    status, body = await cloud.admin.call("PATCH", f"/v1/users/{uuid.uuid4()}", json={"disabled": True})
    assert status == 404


async def test_a_user_rotates_their_own_token_and_an_admin_anyones(cloud: Cloud) -> None:
    alice_id, alice = await cloud.user("alice")
    bob_id, bob = await cloud.user("bob")

    status, rotated = await alice.post(f"/v1/users/{alice_id}/token")
    assert status == 200, rotated
    assert rotated["id"] == alice_id and rotated["token"].startswith("nbl_") and rotated["token"] != alice.token
    assert await refused(alice) == "invalid token"  # the old token, at once
    alice = cloud.client(rotated["token"])
    assert await works(alice)
    status, seen = await alice.get(f"/v1/users/{alice_id}")
    assert status == 200 and seen["token"] is None  # shown once

    # Another user does not exist as far as alice can tell.
    assert (await alice.post(f"/v1/users/{bob_id}/token"))[0] == 404
    assert (await alice.get(f"/v1/users/{bob_id}"))[0] == 404
    assert await works(bob)

    status, by_admin = await cloud.admin.post(f"/v1/users/{bob_id}/token")
    assert status == 200
    assert await refused(bob) == "invalid token"
    assert await works(cloud.client(by_admin["token"]))


async def test_the_bootstrap_admin_is_who_the_documented_schema_says(cloud: Cloud) -> None:
    status, me = await cloud.admin.get("/v1/users/me")
    assert status == 200
    assert me == {"id": None, "name": "admin", "is_admin": True, "disabled": False, "created_at": None}
    assert msgspec.convert(me, shapes.Me) == shapes.Me(
        id=None, name="admin", is_admin=True, disabled=False, created_at=None
    )

    status, document = await cloud.admin.get("/v1/openapi.json")
    answer = document["paths"]["/v1/users/me"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    schema = document["components"]["schemas"][answer["$ref"].rsplit("/", 1)[1]]
    assert set(schema["required"]) == set(me)
    for nullable in ("id", "created_at"):
        assert {"type": "null"} in schema["properties"][nullable]["anyOf"]


@pytest.fixture
async def second_api(lagging: Lagging) -> AsyncIterator[Client]:
    """Another API process on the same NATS and Postgres, as behind a load balancer."""
    server = TestServer(make_app(lagging.cloud.settings), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Client(session, str(server.make_url("")).rstrip("/"), "")
    await server.close()


async def test_every_api_process_refuses_a_revoked_token_before_the_projector_catches_up(
    lagging: Lagging,
    second_api: Client,
) -> None:
    cloud = lagging.cloud
    lagging.start_projector()
    project_id = await cloud.project("web")
    users = {name: await cloud.user(name) for name in ("alice", "bob", "carol")}
    await cloud.member(project_id, users["bob"][0], "member")
    await lagging.stop_projector()
    on_a = {name: client for name, (_, client) in users.items()}
    on_b = {name: Client(second_api.session, second_api.base, client.token) for name, client in on_a.items()}
    for client in (*on_a.values(), *on_b.values()):
        assert await works(client)

    # Changed through API A, none of it projected.
    alice_id, bob_id, carol_id = (users[name][0] for name in ("alice", "bob", "carol"))
    assert (await cloud.admin.call("PATCH", f"/v1/users/{alice_id}", json={"disabled": True}))[0] == 200
    assert (await cloud.admin.call("DELETE", f"/v1/users/{bob_id}"))[0] == 204
    status, rotated = await on_a["carol"].post(f"/v1/users/{carol_id}/token")
    assert status == 200
    assert await cloud.pool.fetchval("SELECT count(*) FROM users WHERE NOT disabled") == 3

    for api in (on_a, on_b):
        assert await refused(api["alice"]) == "this token's user is disabled"
        assert await refused(api["bob"]) == "invalid token"
        assert await refused(api["carol"]) == "invalid token"
    assert await works(Client(second_api.session, second_api.base, rotated["token"]))

    lagging.start_projector()
    await eventually(lambda: _projected_users(cloud, 2))
    assert await cloud.pool.fetchval("SELECT disabled FROM users WHERE id = $1", uuid.UUID(alice_id))
    assert await cloud.pool.fetchval("SELECT count(*) FROM memberships") == 0
    for api in (on_a, on_b):
        assert await refused(api["alice"]) and await refused(api["bob"]) and await refused(api["carol"])
    assert await works(Client(second_api.session, second_api.base, rotated["token"]))


async def test_a_user_changed_in_the_events_alone_is_judged_by_them(lagging: Lagging) -> None:
    """The events decide even when the change came from elsewhere (another writer of the
    stream): disabled there, the token is refused; enabled again, it works."""
    cloud = lagging.cloud
    lagging.start_projector()
    alice_id, alice = await cloud.user("alice")
    await lagging.stop_projector()
    store = EventStore(cloud.js, Codec(*AGGREGATES))

    await store.change(User, uuid.UUID(alice_id), lambda u: u.disable(), actor="system:test")
    assert await refused(alice) == "this token's user is disabled"
    await store.change(User, uuid.UUID(alice_id), lambda u: u.enable(), actor="system:test")
    assert await works(alice)


async def _projected_users(cloud: Cloud, count: int) -> bool:
    return bool(await cloud.pool.fetchval("SELECT count(*) = $1 FROM users", count))
