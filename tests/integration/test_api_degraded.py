"""A dependency that is away is a 503 with `Retry-After`, answered within seconds - never a
hang, never a 500 - and the API comes good by itself when it is back: Postgres stopped
under a running API, the API started while Postgres is down, NATS stopped.

These tests run their own Postgres (pgserver) so that they can stop it."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import pytest
from aiohttp.test_utils import TestServer
from nats.js import JetStreamContext

from nebula_core import config
from nebula_core.allinone.embedded import NatsServer, Postgres
from nebula_core.api.app import REQUEST_STATEMENT_TIMEOUT_S, make_app
from nebula_core.contract import subjects
from nebula_core.projections import database, migrate
from nebula_core.projections.projector import Projector
from tests.integration.conftest import ADMIN_TOKEN, Cloud
from tests.integration.test_api import instance_body
from tests.support import eventually

#: How long any answer may take while a dependency is away.
BOUND_S = 10.0
#: ... or hung: the API's statement timeout, then the pool's wait to give the connection back.
HUNG_BOUND_S = REQUEST_STATEMENT_TIMEOUT_S + database.ACQUIRE_TIMEOUT_S + 5.0


@dataclass
class Answer:
    status: int
    headers: Any
    body: Any
    seconds: float


class Stack:
    """NATS, a Postgres of its own that it can stop and start, a projector that is restarted
    when it dies (as `nebula up` restarts it), and the API when asked for."""

    def __init__(self, data_dir: Path, nats_server: NatsServer, js: JetStreamContext) -> None:
        self.data_dir = data_dir
        self.nats = nats_server
        self.js = js
        self.postgres = Postgres(data_dir).start()
        self.dsn = self.postgres.dsn

    def stop_postgres(self) -> None:
        self.postgres.stop()

    def start_postgres(self) -> None:
        self.postgres = Postgres(self.data_dir).start()

    @contextmanager
    def postgres_hung(self) -> Iterator[None]:
        """Every Postgres process stopped (SIGSTOP): connections open, nothing answers."""
        postmaster = psutil.Process(int((self.data_dir / "postmaster.pid").read_text().split()[0]))
        processes = [postmaster, *postmaster.children(recursive=True)]
        for process in processes:
            process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            for process in processes:
                process.send_signal(signal.SIGCONT)

    async def projector(self, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await Projector(self.js, pool).run(stop)
            except Exception:  # Postgres away: the role dies and is started again
                await asyncio.sleep(0.2)

    @asynccontextmanager
    async def api(self) -> AsyncIterator[Cloud]:
        settings = config.load({}, nats_url=self.nats.url_for("api"), pg_dsn=self.dsn, admin_token=ADMIN_TOKEN)
        pool = await database.create_pool(self.dsn, min_size=0, max_size=4)
        stop = asyncio.Event()
        projector = asyncio.create_task(self.projector(pool, stop))
        server = TestServer(make_app(settings), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                yield Cloud(str(server.make_url("")).rstrip("/"), session, self.js, pool, settings, self.nats)
        finally:
            await server.close()
            stop.set()
            await projector
            await pool.close()


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer, js: JetStreamContext) -> AsyncIterator[Stack]:
    made = Stack(tmp_path / "pg", nats_server, js)
    conn = await database.connect(made.dsn)
    try:
        await migrate.apply(conn)
    finally:
        await conn.close()
    yield made
    made.postgres.stop()


async def ask(cloud: Cloud, method: str, path: str, token: str = ADMIN_TOKEN, **kw: Any) -> Answer:
    started = time.monotonic()
    async with cloud.session.request(
        method, cloud.base + path, headers={"Authorization": f"Bearer {token}", **kw.pop("headers", {})}, **kw
    ) as response:
        body = await response.json(content_type=None) if response.status != 204 else None
        return Answer(response.status, response.headers, body, time.monotonic() - started)


def unavailable(answer: Answer, what: str, bound: float = BOUND_S) -> bool:
    """A 503 naming `what`, with a Retry-After, in time."""
    assert answer.seconds < bound, answer
    assert answer.status == 503, answer
    assert answer.body["code"] == "unavailable" and what in answer.body["message"], answer.body
    assert int(answer.headers["Retry-After"]) >= 1, answer.headers
    return True


def said(health: Answer) -> dict[str, str]:
    """What /healthz says of the process and its dependencies (whatever else it says)."""
    return {key: health.body[key] for key in ("status", "nats", "postgres")}


async def stream_head(js: JetStreamContext) -> int:
    return int((await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq)


async def test_postgres_away_is_a_503_and_the_api_comes_good_when_it_is_back(stack: Stack) -> None:
    async with stack.api() as cloud:
        project_id = await cloud.project()
        await cloud.image()
        user_id, member = await cloud.user("tenant")
        await cloud.member(project_id, user_id, "member")

        stack.stop_postgres()
        head = await stream_head(cloud.js)

        assert unavailable(await ask(cloud, "GET", "/v1/projects"), "Postgres")
        # A user's token is looked up in Postgres: every request of theirs is a 503 too.
        assert unavailable(await ask(cloud, "GET", "/v1/instances", member.token), "Postgres")
        # Creating an instance needs Postgres (membership, image, quotas): refused, nothing appended.
        create = await ask(cloud, "POST", "/v1/instances", member.token, json=instance_body(project_id))
        assert unavailable(create, "Postgres")
        # A create that needs only NATS, with an Idempotency-Key, is refused before it appends.
        keyed = await ask(cloud, "POST", "/v1/projects", json={"name": "beta"}, headers={"Idempotency-Key": "beta-1"})
        assert unavailable(keyed, "Postgres")
        assert await stream_head(cloud.js) == head
        health = await ask(cloud, "GET", "/healthz")
        assert health.status == 503 and health.seconds < BOUND_S
        assert said(health) == {"status": "degraded", "nats": "ok", "postgres": "unreachable"}

        stack.start_postgres()

        async def serving() -> bool:
            return (await ask(cloud, "GET", "/v1/projects")).status == 200

        await eventually(serving, timeout=BOUND_S)
        assert (await ask(cloud, "GET", "/healthz")).status == 200
        status, created = await member.post("/v1/instances", instance_body(project_id))
        assert status == 202, created


async def test_the_api_starts_while_postgres_is_down_and_serves_once_it_is_up(stack: Stack) -> None:
    stack.stop_postgres()
    async with stack.api() as cloud:
        health = await ask(cloud, "GET", "/healthz")
        assert health.status == 503 and health.body["postgres"] == "unreachable", health
        assert unavailable(await ask(cloud, "GET", "/v1/projects"), "Postgres")

        stack.start_postgres()

        async def healthy() -> bool:
            return (await ask(cloud, "GET", "/healthz")).status == 200

        await eventually(healthy, timeout=BOUND_S)
        assert await cloud.project("after") and (await ask(cloud, "GET", "/v1/projects")).status == 200


async def test_a_hung_postgres_is_a_503_in_bounded_time_and_the_api_comes_good_after(stack: Stack) -> None:
    async with stack.api() as cloud:
        await cloud.project()
        with stack.postgres_hung():
            answers = await asyncio.gather(*(ask(cloud, "GET", "/v1/projects") for _ in range(3)))
            assert all(unavailable(answer, "Postgres", HUNG_BOUND_S) for answer in answers)

        async def serving() -> bool:
            return (await ask(cloud, "GET", "/v1/projects")).status == 200

        await eventually(serving, timeout=BOUND_S)


async def test_nats_away_is_a_503_not_a_hang_and_the_api_comes_good_when_it_is_back(stack: Stack) -> None:
    async with stack.api() as cloud:
        project_id = await cloud.project()
        await cloud.image()
        user_id, member = await cloud.user("tenant")
        await cloud.member(project_id, user_id, "member")
        status, instance = await member.post("/v1/instances", instance_body(project_id))
        assert status == 202, instance

        stack.nats.stop()

        # Appending an event, reading a history, storing user-data, opening the event stream.
        assert unavailable(await ask(cloud, "POST", "/v1/projects", json={"name": "beta"}), "NATS")
        assert unavailable(await ask(cloud, "GET", f"/v1/instances/{instance['id']}/events", member.token), "NATS")
        create = await ask(cloud, "POST", "/v1/instances", member.token, json=instance_body(project_id))
        assert unavailable(create, "NATS")
        assert unavailable(await ask(cloud, "GET", "/v1/events", member.token), "NATS")
        # What Postgres alone answers is still answered.
        listed = await ask(cloud, "GET", "/v1/projects", member.token)
        assert listed.status == 200 and [p["id"] for p in listed.body["items"]] == [project_id]
        health = await ask(cloud, "GET", "/healthz")
        assert health.status == 503, health
        assert said(health) == {"status": "degraded", "nats": "unreachable", "postgres": "ok"}

        stack.nats.start()

        async def creating() -> bool:
            return (await ask(cloud, "POST", "/v1/projects", json={"name": "gamma"})).status == 201

        await eventually(creating, timeout=3 * BOUND_S, interval=0.5)
        status, created = await member.post("/v1/instances", instance_body(project_id))
        assert status == 202, created
