"""The projector against real NATS and real Postgres: exactly once, in order, rebuildable."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from nebula_core.contract.events import ProjectMemberSet
from nebula_core.contract.types import Quotas, Resources
from nebula_core.domain import AGGREGATES, Instance, Project, User
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from nebula_core.projector import Projector, apply_batch, checkpoint, decode, replay
from nebula_core.projections import TABLES
from tests.support import eventually

CODEC = Codec(*AGGREGATES)


async def seed(store: EventStore, projects: int = 5, members_each: int = 3) -> list[Project]:
    made = []
    for i in range(projects):
        project = Project(name=f"p{i}", description="", tags={"i": str(i)}, quotas=Quotas())
        for _ in range(members_each):
            user = User(name=f"u{uuid.uuid4().hex[:6]}", token_hash=uuid.uuid4().hex)
            await store.save(user)
            project.set_member(user.id, "member")
        await store.save(project)
        made.append(project)
    return made


async def last_seq(js: JetStreamContext) -> int:
    return (await js.stream_info("NEBULA_EVENTS")).state.last_seq


async def dump(pool: asyncpg.Pool) -> dict[str, list[tuple]]:
    out = {}
    for table in TABLES:
        rows = await pool.fetch(f"SELECT * FROM {table}")
        out[table] = sorted(tuple(str(v) for v in r.values()) for r in rows)
    return out


async def run_projectors(js: JetStreamContext, pool: asyncpg.Pool, replicas: int = 1, batch_size: int = 256):
    stop = asyncio.Event()
    tasks = [asyncio.create_task(Projector(js, pool, batch_size=batch_size).run(stop)) for _ in range(replicas)]
    return stop, tasks


async def test_the_read_models_follow_the_stream(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    store = EventStore(js, CODEC)
    projects = await seed(store)
    stop, tasks = await run_projectors(js, pool)
    try:
        target = await last_seq(js)
        await eventually(lambda: _reached(pool, target))
        projects[0].update(name="renamed")
        await store.save(projects[0])
        await eventually(lambda: _reached(pool, target + 1))
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    rows = {r["name"]: r for r in await pool.fetch("SELECT * FROM projects")}
    assert set(rows) == {"renamed", "p1", "p2", "p3", "p4"}
    assert rows["renamed"]["version"] == 5
    assert await pool.fetchval("SELECT count(*) FROM memberships") == 15


async def test_two_replicas_apply_every_event_exactly_once(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    store = EventStore(js, CODEC)
    stop, tasks = await run_projectors(js, pool, replicas=2, batch_size=7)
    try:
        projects = await seed(store, projects=20, members_each=4)
        target = await last_seq(js)
        await eventually(lambda: _reached(pool, target), timeout=30)
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)

    assert not [r for r in results if isinstance(r, BaseException)]  # a double insert would have raised
    assert await pool.fetchval("SELECT count(*) FROM projects") == 20
    assert await pool.fetchval("SELECT count(*) FROM users") == 80
    assert await pool.fetchval("SELECT count(*) FROM memberships") == 80
    versions = {r["id"]: r["version"] for r in await pool.fetch("SELECT id, version FROM projects")}
    assert versions == {p.id: p.version for p in projects}


async def test_a_crash_mid_batch_applies_nothing_and_the_retry_applies_once(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    store = EventStore(js, CODEC)
    await seed(store, projects=2, members_each=1)
    history = []
    sub = await js.subscribe("nebula.evt.>", ordered_consumer=True, stream="NEBULA_EVENTS")
    for _ in range(await last_seq(js)):
        message = await sub.next_msg(timeout=5)
        history.append((message.metadata.sequence.stream, decode(message.data)))
    await sub.unsubscribe()
    # An event the database refuses (a role outside the CHECK constraint) stands in for a
    # crash in the middle of the batch: everything before it must roll back with it.
    at = next(i for i, (_, e) in enumerate(history) if isinstance(e, ProjectMemberSet))
    poisoned = list(history)
    poisoned[at] = (history[at][0], msgspec.structs.replace(history[at][1], role="owner"))

    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await apply_batch(conn, poisoned)
        assert await checkpoint(pool) == 0
        assert await pool.fetchval("SELECT count(*) FROM users") == 0

        first = await apply_batch(conn, history)
        again = await apply_batch(conn, history)  # redelivery after a crash between commit and ack

    assert first.applied == len(history) and again.applied == 0
    assert again.done == frozenset(seq for seq, _ in history)
    assert await pool.fetchval("SELECT count(*) FROM users") == 2


async def test_a_batch_that_does_not_continue_the_checkpoint_waits(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    store = EventStore(js, CODEC)
    await seed(store, projects=1, members_each=2)
    sub = await js.subscribe("nebula.evt.>", ordered_consumer=True, stream="NEBULA_EVENTS")
    history = []
    for _ in range(await last_seq(js)):
        message = await sub.next_msg(timeout=5)
        history.append((message.metadata.sequence.stream, decode(message.data)))
    await sub.unsubscribe()

    async with pool.acquire() as conn:
        later = await apply_batch(conn, history[1:])

    assert later.applied == 0 and later.done == frozenset()
    assert await checkpoint(pool) == 0


async def test_replay_rebuilds_identical_tables(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    store = EventStore(js, CODEC)
    projects = await seed(store, projects=6, members_each=2)
    instance = Instance(
        project_id=projects[0].id, owner_id=uuid.uuid4(), name="vm", description="", tags={"a": "b"}, region="r",
        flavor=Resources(vcpus=1, ram_mb=128, disk_gb=1), image_id=uuid.uuid4(), user_data_size=0,
        user_data_sha256="0" * 64, metadata_token_hash="1" * 64,
    )
    instance.schedule("n1")
    instance.launch()
    await store.save(instance)
    projects[1].delete()
    await store.save(projects[1])
    stop, tasks = await run_projectors(js, pool)
    try:
        target = await last_seq(js)
        await eventually(lambda: _reached(pool, target))
        live = await dump(pool)
        await pool.execute("UPDATE projects SET name = 'vandalised'")  # replay must repair this too
        reached = await replay(js, pool)
        rebuilt = await dump(pool)
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    assert reached == target
    assert rebuilt == live
    assert await checkpoint(pool) == target


async def test_a_projector_on_an_emptied_database_rebuilds_by_itself(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    store = EventStore(js, CODEC)
    await seed(store, projects=3, members_each=1)
    target = await last_seq(js)
    stop, tasks = await run_projectors(js, pool)
    await eventually(lambda: _reached(pool, target))
    stop.set()
    await asyncio.gather(*tasks)
    await pool.execute(f"TRUNCATE {', '.join(TABLES)}, projection_checkpoints")

    stop, tasks = await run_projectors(js, pool)
    try:
        await eventually(lambda: _reached(pool, target))
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert await pool.fetchval("SELECT count(*) FROM projects") == 3


async def _reached(pool: asyncpg.Pool, seq: int) -> bool:
    return await checkpoint(pool) >= seq
