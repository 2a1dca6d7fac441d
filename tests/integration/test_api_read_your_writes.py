"""Read-your-writes with the projector stopped: the API against real NATS and Postgres,
but nothing moves the events into the read models until a test starts the projector.

A client that got 201 for what it created must be able to read it back at once, and a
new user's token must work at once; once the projector runs, the answers come from the
read models and are the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from nats.js import JetStreamContext

from nebula_core import config
from nebula_core.allinone.embedded import NatsServer
from nebula_core.api.app import make_app
from nebula_core.api.auth import hash_token, new_token
from nebula_core.domain import AGGREGATES, User
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from nebula_core.projections.projector import Projector
from tests.integration.conftest import ADMIN_TOKEN, Cloud
from tests.support import eventually

PROJECT = {
    "name": "alpha",
    "description": "the first",
    "tags": {"team": "infra"},
    "quotas": {"instances": 3, "vcpus": 6, "ram_mb": 4096, "disk_gb": 40},
}
IMAGE = {
    "name": "tiny",
    "format": "qcow2",
    "source": "https://images.example/tiny.qcow2",
    "sha256": "b" * 64,
    "size": 4321,
    "min_disk_gb": 2,
}


@dataclass
class Lagging:
    """The API with a projector that runs only between `start_projector` and `stop_projector`."""

    cloud: Cloud
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start_projector(self) -> None:
        assert self._task is None
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(Projector(self.cloud.js, self.cloud.pool).run(self._stop))

    async def stop_projector(self) -> None:
        assert self._task is not None
        self._stop.set()
        await self._task
        self._task = None

    async def projected_rows(self, table: str) -> int:
        return int(await self.cloud.pool.fetchval(f"SELECT count(*) FROM {table}"))


@pytest.fixture
async def lagging(
    nats_server: NatsServer, js: JetStreamContext, pool: asyncpg.Pool, pg_dsn: str
) -> AsyncIterator[Lagging]:
    """The `cloud` fixture's API, real NATS and Postgres, and no projector running."""
    settings = config.load({}, nats_url=nats_server.url_for("api"), pg_dsn=pg_dsn, admin_token=ADMIN_TOKEN)
    server = TestServer(make_app(settings), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        state = Lagging(Cloud(str(server.make_url("")).rstrip("/"), session, js, pool, settings, nats_server))
        yield state
        await server.close()
    if state._task is not None:
        await state.stop_projector()


async def _same(client, path: str, expected: dict) -> dict | None:  # type: ignore[no-untyped-def,type-arg]
    status, body = await client.get(path)
    return body if status == 200 and body == expected else None


async def test_a_new_project_reads_back_before_it_is_projected(lagging: Lagging) -> None:
    cloud = lagging.cloud
    status, created = await cloud.admin.post("/v1/projects", PROJECT)
    assert status == 201, created  # was a 404 for the project just created
    assert await lagging.projected_rows("projects") == 0  # nothing came from the read models
    assert {k: created[k] for k in PROJECT} == PROJECT
    assert created["usage"] == {"instances": 0, "vcpus": 0, "ram_mb": 0, "disk_gb": 0}
    assert created["version"] == 1 and created["created_at"] == created["updated_at"]

    status, seen = await cloud.admin.get(f"/v1/projects/{created['id']}")
    assert status == 200 and seen == created

    # Authorization holds on the events too: a user who is no member, and an id nobody
    # created, are 404s.
    _, outsider = await cloud.user("mallory")
    status, _ = await outsider.get(f"/v1/projects/{created['id']}")
    assert status == 404
    status, _ = await cloud.admin.get(f"/v1/projects/{uuid.uuid4()}")
    assert status == 404

    lagging.start_projector()
    await eventually(lambda: lagging.projected_rows("projects"))
    assert await _same(cloud.admin, f"/v1/projects/{created['id']}", created)  # now from the read model
    status, page = await cloud.admin.get("/v1/projects")
    assert status == 200 and page["items"] == [created]
    status, _ = await outsider.get(f"/v1/projects/{created['id']}")
    assert status == 404


async def test_a_new_image_is_answered_and_reads_back_before_it_is_projected(lagging: Lagging) -> None:
    cloud = lagging.cloud
    status, created = await cloud.admin.post("/v1/images", IMAGE)
    assert status == 201, created  # was a 500: the answer formatted a row that was not there
    assert await lagging.projected_rows("images") == 0
    assert {k: created[k] for k in IMAGE} == IMAGE and uuid.UUID(created["id"])

    _, user = await cloud.user("bob")  # everyone may read images; only admins see their source
    for client, shown in ((cloud.admin, created), (user, {**created, "source": None})):
        status, seen = await client.get(f"/v1/images/{created['id']}")
        assert status == 200 and seen == shown
    status, _ = await cloud.admin.get(f"/v1/images/{uuid.uuid4()}")
    assert status == 404

    lagging.start_projector()
    await eventually(lambda: lagging.projected_rows("images"))
    assert await _same(cloud.admin, f"/v1/images/{created['id']}", created)
    status, page = await cloud.admin.get("/v1/images")
    assert status == 200 and page["items"] == [created]


async def test_a_new_users_token_works_before_the_user_is_projected(lagging: Lagging) -> None:
    cloud = lagging.cloud
    lagging.start_projector()
    project_id = await cloud.project("alpha")
    await lagging.stop_projector()

    status, created = await cloud.admin.post("/v1/users", {"name": "alice"})
    assert status == 201, created
    assert await lagging.projected_rows("users") == 0
    alice = cloud.client(created["token"])

    status, me = await alice.get("/v1/users/me")  # was a 401 until the users table caught up
    assert status == 200, me
    assert {k: me[k] for k in ("id", "name", "is_admin", "created_at")} == {
        k: created[k] for k in ("id", "name", "is_admin", "created_at")
    }
    status, page = await alice.get("/v1/projects")  # authenticated; no membership projected: nothing
    assert status == 200 and page["items"] == []
    status, body = await cloud.client(new_token()).get("/v1/users/me")
    assert status == 401, body

    # The admin can make the new user a member at once (it was a 422 "no user").
    status, member = await cloud.admin.post(
        f"/v1/projects/{project_id}/members", {"user_id": created["id"], "role": "member"}
    )
    assert status == 201, member

    # A token rotated in the events (not projected either) replaces the first one.
    store = EventStore(cloud.js, Codec(*AGGREGATES))
    user = await store.load(User, uuid.UUID(created["id"]))
    rotated = new_token()
    user.rotate_token(hash_token(rotated))
    await store.save(user, actor="system:test")
    status, _ = await alice.get("/v1/users/me")
    assert status == 401
    alice = cloud.client(rotated)
    status, again = await alice.get("/v1/users/me")
    assert status == 200 and again == me

    lagging.start_projector()
    await eventually(lambda: lagging.projected_rows("users"))
    assert await cloud.pool.fetchval("SELECT token_hash FROM users") == hash_token(rotated)
    assert await _same(alice, "/v1/users/me", me)  # now from the read model
    status, users = await cloud.admin.get("/v1/users")
    assert status == 200 and [u["id"] for u in users["items"]] == [created["id"]]
    projects = await eventually(lambda: _projects_of(alice))
    assert [p["id"] for p in projects] == [project_id]
    status, _ = await cloud.client(created["token"]).get("/v1/users/me")
    assert status == 401


async def _projects_of(client) -> list | None:  # type: ignore[no-untyped-def,type-arg]
    status, page = await client.get("/v1/projects")
    return page["items"] if status == 200 and page["items"] else None
