"""The metadata service's phone-home answer when NATS takes the relayed boot and when it
cannot, with the JetStream publisher replaced by a stub (no servers; the integration
tests in test_meta relay through a real nats-server to a real orchestrator)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import msgspec
import nats.errors
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from nats.js import JetStreamContext

from nebula_core.contract import subjects
from nebula_core.contract.commands import RecordBoot
from nebula_meta.app import ACTOR, JS, LIMITER, MODEL, RateLimiter, plain_errors, routes
from nebula_meta.model import Instances, Record

INSTANCE = uuid.uuid4()
TOKEN = "s3cret"
#: POSTs a phone-home to a metadata service publishing with the given stub: (status, body, Retry-After).
Post = Callable[["StubPublisher"], Awaitable[tuple[int, str, str | None]]]


class StubPublisher:
    """Takes every publish (keeping subject, payload and headers), or fails with `error`."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.published: list[tuple[str, bytes, dict[str, str]]] = []

    async def publish(self, subject: str, payload: bytes, **options: Any) -> None:
        if self.error is not None:
            raise self.error
        self.published.append((subject, payload, options.get("headers") or {}))


@pytest.fixture
async def phone_home() -> AsyncIterator[Post]:
    clients: list[TestClient] = []

    async def post(publisher: StubPublisher) -> tuple[int, str, str | None]:
        app = web.Application(middlewares=[plain_errors])
        app[MODEL] = Instances()
        app[MODEL].by_id[INSTANCE] = Record(
            INSTANCE, hashlib.sha256(TOKEN.encode()).hexdigest(), "web-1", uuid.uuid4(), {}
        )
        app[LIMITER] = RateLimiter()
        app[JS] = cast(JetStreamContext, publisher)  # a stub that answers `publish` only
        app.add_routes(routes)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        response = await client.post(f"/nocloud/{INSTANCE}/{TOKEN}/phone-home", data=b"hostname=web-1")
        return response.status, await response.text(), response.headers.get("Retry-After")

    yield post
    for client in clients:
        await client.close()


async def test_a_phone_home_is_relayed_as_one_command_per_instance(phone_home: Post) -> None:
    publisher = StubPublisher()
    assert await phone_home(publisher) == (200, "ok\n", None)
    assert await phone_home(publisher) == (200, "ok\n", None)

    (subject, payload, headers), (_, _, again) = publisher.published
    command = msgspec.json.decode(payload, type=RecordBoot)
    assert subject == subjects.command_subject("booted")
    assert (command.instance_id, command.actor) == (INSTANCE, ACTOR)
    # The same message id both times: the command stream stores a repeated phone-home once.
    assert headers["Nats-Msg-Id"] == again["Nats-Msg-Id"] == str(command.command_id)


@pytest.mark.parametrize("error", [nats.errors.TimeoutError(), nats.errors.ConnectionClosedError(), TimeoutError()])
async def test_a_phone_home_nats_cannot_take_asks_the_guest_to_retry(phone_home: Post, error: Exception) -> None:
    assert await phone_home(StubPublisher(error)) == (503, "busy; retry", "1")
