"""The metadata service's phone-home answer for each thing recording the boot may meet,
with the event store replaced by a stub (no servers)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nebula_core.contract.errors import ConcurrencyConflict, IllegalTransition, NebulaError, NotFound
from nebula_core.eventstore import Changed, EventStore
from nebula_meta.app import LIMITER, MODEL, STORE, RateLimiter, plain_errors, routes
from nebula_meta.model import Instances, Record

INSTANCE = uuid.uuid4()
TOKEN = "s3cret"
#: POSTs a phone-home to a metadata service using the given store: (status, body, Retry-After).
Post = Callable[["StubStore"], Awaitable[tuple[int, str, str | None]]]


class StubStore:
    """Answers every change with `outcome`: an error to raise, or the sequences appended."""

    def __init__(self, outcome: NebulaError | list[int]) -> None:
        self.outcome = outcome
        self.changes = 0

    async def change(self, cls: type, aggregate_id: uuid.UUID, apply: Callable[..., None], **_: Any) -> Changed[Any]:
        self.changes += 1
        if isinstance(self.outcome, NebulaError):
            raise self.outcome
        return Changed(None, self.outcome)


@pytest.fixture
async def phone_home() -> AsyncIterator[Post]:
    clients: list[TestClient] = []

    async def post(store: StubStore) -> tuple[int, str, str | None]:
        app = web.Application(middlewares=[plain_errors])
        app[MODEL] = Instances()
        app[MODEL].by_id[INSTANCE] = Record(
            INSTANCE, hashlib.sha256(TOKEN.encode()).hexdigest(), "web-1", uuid.uuid4(), {}
        )
        app[LIMITER] = RateLimiter()
        app[STORE] = cast(EventStore, store)  # a stub that answers `change` only
        app.add_routes(routes)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        response = await client.post(f"/nocloud/{INSTANCE}/{TOKEN}/phone-home", data=b"hostname=web-1")
        return response.status, await response.text(), response.headers.get("Retry-After")

    yield post
    for client in clients:
        await client.close()


async def test_a_phone_home_is_recorded_and_answered_ok(phone_home: Post) -> None:
    store = StubStore([42])
    assert await phone_home(store) == (200, "ok\n", None)
    assert store.changes == 1


async def test_a_repeated_phone_home_is_answered_ok(phone_home: Post) -> None:
    assert (await phone_home(StubStore([])))[0] == 200


async def test_a_phone_home_the_instance_kept_changing_under_asks_the_guest_to_retry(phone_home: Post) -> None:
    status, _, retry_after = await phone_home(StubStore(ConcurrencyConflict("kept changing under 10 tries")))
    assert (status, retry_after) == (503, "1")


async def test_a_phone_home_from_an_instance_that_cannot_boot_now_is_answered_ok(phone_home: Post) -> None:
    assert (await phone_home(StubStore(IllegalTransition("it is deleting"))))[0] == 200


async def test_a_phone_home_from_an_instance_the_store_does_not_know_is_the_same_404(phone_home: Post) -> None:
    assert await phone_home(StubStore(NotFound("no such instance"))) == (404, "404: Not Found", None)
