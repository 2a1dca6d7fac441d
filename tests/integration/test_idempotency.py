"""`Idempotency-Key` records against a real API, NATS and Postgres: kept 24 hours, then a
key is new again and its record is purged; and a create whose first attempt appended its
event but answered a 5xx answers the resource as created when it is repeated - never a 409.

How the first attempt fails, honestly: the test holds an exclusive lock on the projection
checkpoint, so the API, right after appending the create's event, blocks reading the
checkpoint (read-your-writes); the test then terminates that Postgres backend, as a
Postgres restart or a network cut would. The request fails with a 5xx after its event
landed, exactly the case a client's retry must survive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from nebula_core.api import idempotency
from nebula_core.api.app import make_app
from nebula_core.contract import subjects
from tests.integration.conftest import Client, Cloud
from tests.support import eventually

AGED = "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1"


async def test_a_key_is_replayed_for_24_hours_then_is_new_again(cloud: Cloud) -> None:
    user_id, alice = await cloud.user("alice")
    key = {"Idempotency-Key": "rotate-1"}

    first = await _post(alice, f"/v1/users/{user_id}/token", key)
    alice = cloud.client(first.body["token"])
    again = await _post(alice, f"/v1/users/{user_id}/token", key)
    assert first.status == again.status == 200
    assert again.body == first.body and again.headers.get("Idempotent-Replayed") == "true"

    await cloud.pool.execute(AGED, "rotate-1")
    later = await _post(alice, f"/v1/users/{user_id}/token", key)
    assert later.status == 200 and "Idempotent-Replayed" not in later.headers
    assert later.body["token"] != first.body["token"]  # handled anew: another rotation
    assert await cloud.pool.fetchval("SELECT count(*) FROM idempotency_keys") == 1


async def test_expired_records_are_purged_in_bounded_batches(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    await _records(cloud.pool, fresh=3, expired=7)
    monkeypatch.setattr(idempotency, "PURGE_BATCH", 2)
    monkeypatch.setattr(idempotency, "PURGE_BATCHES_MAX", 3)

    assert await idempotency.purge_expired(cloud.pool) == 6  # three batches of two, the rest next time
    assert await idempotency.purge_expired(cloud.pool) == 1
    assert await idempotency.purge_expired(cloud.pool) == 0
    assert await cloud.pool.fetchval("SELECT count(*) FROM idempotency_keys") == 3


async def test_a_starting_api_purges_expired_records(cloud: Cloud) -> None:
    await _records(cloud.pool, fresh=2, expired=2)
    server = TestServer(make_app(cloud.settings), host="127.0.0.1")
    await server.start_server()
    try:
        await eventually(lambda: _count_is(cloud.pool, 2))
    finally:
        await server.close()
    assert not await cloud.pool.fetchval("SELECT bool_or(created_at < now() - interval '1 day') FROM idempotency_keys")


@pytest.mark.parametrize(
    ("path", "body", "kind"), [("/v1/projects", {"name": "alpha"}, "project"), ("/v1/users", {"name": "bob"}, "user")]
)
async def test_a_create_whose_first_answer_was_a_5xx_answers_the_resource_as_created(
    cloud: Cloud, path: str, body: dict[str, Any], kind: str
) -> None:
    key = {"Idempotency-Key": f"{kind}-1"}
    async with _checkpoint_locked(cloud.pool) as conn:
        first = asyncio.create_task(cloud.admin.post(path, body, headers=key))
        api_backend = await eventually(lambda: _waiting_for_the_checkpoint(conn))
        await conn.fetchval("SELECT pg_terminate_backend($1)", api_backend)
        status, failed = await first
    assert status >= 500, failed
    assert await _events_of(cloud, kind) == 1  # the first attempt's event landed

    status, created = await cloud.admin.post(path, body, headers=key)
    assert status == 201, created
    assert created["name"] == body["name"]
    status, again = await cloud.admin.post(path, body, headers=key)
    assert (status, again) == (201, created)
    status, page = await cloud.admin.get(path)
    assert [item["id"] for item in page["items"]] == [created["id"]]  # one, and the one answered
    assert await _events_of(cloud, kind) == 1
    if kind == "user":
        # Its token was in the answer that failed: the user's admin rotates it.
        assert created["token"] is None
        status, rotated = await cloud.admin.post(f"/v1/users/{created['id']}/token")
        status, me = await cloud.client(rotated["token"]).get("/v1/users/me")
        assert status == 200 and me["id"] == created["id"]

    status, other = await cloud.admin.post(path, {"name": "other"}, headers=key)
    assert status == 422 and other["fields"] == ["header:Idempotency-Key"]


async def test_a_refused_request_frees_its_key_for_a_corrected_one(cloud: Cloud) -> None:
    key = {"Idempotency-Key": "fix-me"}
    status, _ = await cloud.admin.post("/v1/projects", {"name": "bad name!"}, headers=key)
    assert status == 422
    status, created = await cloud.admin.post("/v1/projects", {"name": "good"}, headers=key)
    assert status == 201 and created["name"] == "good"


# --- helpers -----------------------------------------------------------------------------


async def _records(pool: asyncpg.Pool, *, fresh: int, expired: int) -> None:
    for i in range(fresh + expired):
        await pool.execute(
            """INSERT INTO idempotency_keys (principal, key, method, path, request_hash, status, response, created_at)
               VALUES ('admin', $1, 'POST', '/v1/projects', 'h', 201, '\\x7b7d',
                       now() - CASE WHEN $2 THEN interval '25 hours' ELSE interval '1 hour' END)""",
            f"k{i}",
            i >= fresh,
        )


async def _count_is(pool: asyncpg.Pool, count: int) -> bool:
    return bool(await pool.fetchval("SELECT count(*) = $1 FROM idempotency_keys", count))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


async def _post(client: Client, path: str, headers: dict[str, str]) -> Answer:
    """A POST with no body, its answer's headers included."""
    async with client.session.post(
        client.base + path, headers={"Authorization": f"Bearer {client.token}", **headers}
    ) as response:
        return Answer(response.status, dict(response.headers), await response.json())


@contextlib.asynccontextmanager
async def _checkpoint_locked(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A transaction holding `projection_checkpoints` exclusively: whoever reads it waits."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE projection_checkpoints IN ACCESS EXCLUSIVE MODE")
        yield conn


async def _waiting_for_the_checkpoint(conn: asyncpg.Connection) -> int | None:
    """The backend of the API blocked reading the checkpoint (the projector waits too, on
    its own statements: not that one). Within a transaction the activity view is a snapshot
    taken at its first read: cleared, each probe sees the present."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return await conn.fetchval(
        """SELECT pid FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'
             AND query = 'SELECT last_seq FROM projection_checkpoints WHERE projection = $1'"""
    )


async def _events_of(cloud: Cloud, kind: str) -> int:
    info = await cloud.js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.aggregate_events(kind))
    return sum((info.state.subjects or {}).values())
