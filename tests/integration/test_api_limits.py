"""Per-token limits on the real API: a token over its request rate gets 429 with
Retry-After (and nothing it asked is done) until its bucket refills; a token holding its
quota of event streams gets 429 for one more until it closes one. Other tokens are not
affected, and the bootstrap admin is not limited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from nats.js import JetStreamContext

from nebula_core import config
from nebula_core.allinone.embedded import NatsServer
from nebula_core.api.app import make_app
from nebula_core.projections.projector import Projector
from tests.integration.conftest import ADMIN_TOKEN, Client, Cloud
from tests.support import eventually

RATE, BURST, STREAMS = 2.0, 5, 2


@pytest.fixture
async def cloud(nats_server: NatsServer, js: JetStreamContext, pool: asyncpg.Pool, pg_dsn: str) -> AsyncIterator[Cloud]:
    """The conftest's cloud, with small limits."""
    settings = config.load(
        {},
        nats_url=nats_server.url_for("api"),
        pg_dsn=pg_dsn,
        admin_token=ADMIN_TOKEN,
        api_rate=RATE,
        api_burst=BURST,
        api_event_streams=STREAMS,
    )
    stop = asyncio.Event()
    projector = asyncio.create_task(Projector(js, pool).run(stop))
    server = TestServer(make_app(settings), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Cloud(str(server.make_url("")).rstrip("/"), session, js, pool, settings, nats_server)
    await server.close()
    stop.set()
    await projector


async def test_a_token_over_its_rate_gets_429_with_retry_after_until_its_bucket_refills(cloud: Cloud) -> None:
    project_id = await cloud.project()
    alice_id, alice = await cloud.user("alice")
    bob_id, bob = await cloud.user("bob")
    await cloud.member(project_id, alice_id, "admin")

    for _ in range(BURST):
        assert (await alice.get("/v1/projects"))[0] == 200
    async with cloud.session.post(
        f"{cloud.base}/v1/projects/{project_id}/members",
        json={"user_id": bob_id, "role": "reader"},
        headers={"Authorization": f"Bearer {alice.token}"},
    ) as refused:
        assert refused.status == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await refused.json())["code"] == "rate_limited"
    # Nothing of the refused request was done: Bob is not a member.
    assert [m["user_id"] for m in (await cloud.admin.get(f"/v1/projects/{project_id}/members"))[1]["items"]] == [
        alice_id
    ]
    # Another token has its own bucket; the bootstrap admin has none.
    assert (await bob.get("/v1/projects"))[0] == 200
    admin_answers = await asyncio.gather(*(cloud.admin.get("/v1/projects") for _ in range(5 * BURST)))
    assert {status for status, _ in admin_answers} == {200}

    async def served_again() -> bool:
        return (await alice.get("/v1/projects"))[0] == 200

    await eventually(served_again, timeout=5.0, interval=0.25)


async def _open_stream(client: Client) -> aiohttp.ClientResponse:
    return await client.session.get(
        f"{client.base}/v1/events", headers={"Authorization": f"Bearer {client.token}"}, timeout=aiohttp.ClientTimeout()
    )


async def test_a_token_holding_its_event_streams_gets_429_for_one_more_until_it_closes_one(cloud: Cloud) -> None:
    _, alice = await cloud.user("alice")
    _, bob = await cloud.user("bob")
    held = [await _open_stream(alice) for _ in range(STREAMS)]
    try:
        assert [r.status for r in held] == [200] * STREAMS
        one_more = await _open_stream(alice)
        assert one_more.status == 429 and int(one_more.headers["Retry-After"]) >= 1
        assert (await one_more.json())["code"] == "rate_limited"
        one_more.close()
        # Bob's streams are his own; the bootstrap admin's are not counted.
        bobs = await _open_stream(bob)
        admins = [await _open_stream(cloud.admin) for _ in range(STREAMS + 1)]
        assert bobs.status == 200 and [r.status for r in admins] == [200] * (STREAMS + 1)
        for response in (bobs, *admins):
            response.close()

        held.pop().close()

        async def reopened() -> bool:
            response = await _open_stream(alice)
            if response.status == 200:
                held.append(response)
                return True
            response.close()
            return False

        await eventually(reopened, timeout=10.0, interval=0.5)
    finally:
        for response in held:
            response.close()
