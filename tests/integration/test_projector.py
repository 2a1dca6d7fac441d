"""The projector against real NATS and real Postgres: exactly once, in order, rebuildable."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import pytest
from nats.js import JetStreamContext

from nebula_core.contract.events import ProjectMemberSet
from nebula_core.contract.events import decode_known as decode
from nebula_core.contract.types import InstanceAddress, Overcommit, Quotas, Resources
from nebula_core.domain import AGGREGATES, Image, Instance, Keypair, Node, Project, User
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from nebula_core.projections.checkpoint import checkpoint
from nebula_core.projections.handlers import HANDLERS, TABLES
from nebula_core.projections.projector import Projector, RawEvent, apply_batch, replay
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


#: The read-model table that holds each aggregate's row, and the column naming the aggregate.
ROW_OF = {
    Project: ("projects", "id"),
    User: ("users", "id"),
    Image: ("images", "id"),
    Node: ("nodes", "aggregate_id"),
    Instance: ("instances", "id"),
    Keypair: ("keypairs", "id"),
}
KEY_OF = dict(ROW_OF.values())


@dataclass
class Seeded:
    """What a seeding wrote: per aggregate its table, final version and the stream sequence of
    its last event (what the projected row's `version` and `last_seq` must say), and where
    each aggregate's first event landed."""

    rows: dict[str, dict[uuid.UUID, tuple[int, int]]] = field(default_factory=dict)
    first_seq: dict[uuid.UUID, int] = field(default_factory=dict)
    users: list[User] = field(default_factory=list)
    gone: dict[str, set[uuid.UUID]] = field(default_factory=dict)
    rowless_seqs: set[int] = field(default_factory=set)  # events that remove their row

    def merge(self, other: Seeded) -> Seeded:
        for table, rows in other.rows.items():
            self.rows.setdefault(table, {}).update(rows)
        for table, ids in other.gone.items():
            self.gone.setdefault(table, set()).update(ids)
        self.rowless_seqs.update(other.rowless_seqs)
        self.first_seq.update(other.first_seq)
        self.users.extend(other.users)
        return self


class Recorder:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.seeded = Seeded()

    async def save(self, *aggregates) -> None:  # type: ignore[no-untyped-def]
        for aggregate in aggregates:
            seqs = await self.store.save(aggregate)
            assert seqs, f"nothing to save for {aggregate!r}"
            table, _ = ROW_OF[type(aggregate)]
            self.seeded.first_seq.setdefault(aggregate.id, seqs[0])
            if isinstance(aggregate, User) and aggregate.deleted:  # its row goes
                self.seeded.rows.get(table, {}).pop(aggregate.id, None)
                self.seeded.gone.setdefault(table, set()).add(aggregate.id)
                self.seeded.rowless_seqs.add(seqs[-1])
                if aggregate in self.seeded.users:
                    self.seeded.users.remove(aggregate)
                continue
            self.seeded.rows.setdefault(table, {})[aggregate.id] = (aggregate.version, seqs[-1])
            if isinstance(aggregate, User) and aggregate not in self.seeded.users:
                self.seeded.users.append(aggregate)


async def seed_everything(store: EventStore, copies: int = 1, *, tag: str = "") -> Seeded:
    """Real aggregates through the real event store, touching every read-model table with
    every event type: users (one token rotated, one disabled and enabled again, one deleted),
    images (one deleted), projects with members added, re-roled and removed (one project
    deleted), nodes re-registered, marked down and up, with claims made, resized and
    released, instances through every transition of their lifecycle, and keypairs (one
    deleted). 73 events per copy."""
    rec = Recorder(store)
    flavor = Resources(vcpus=1, ram_mb=512, disk_gb=2)
    big = Resources(vcpus=2, ram_mb=1024, disk_gb=4)
    capacity = Resources(vcpus=8, ram_mb=16384, disk_gb=200)
    for c in range(copies):
        s = f"{tag}{c}"
        admin = User(name=f"admin-{s}", token_hash=uuid.uuid4().hex, is_admin=True)
        alice = User(name=f"alice-{s}", token_hash=uuid.uuid4().hex)
        bob = User(name=f"bob-{s}", token_hash=uuid.uuid4().hex)
        carol = User(name=f"carol-{s}", token_hash=uuid.uuid4().hex)
        await rec.save(admin, alice, bob, carol)
        alice.rotate_token(uuid.uuid4().hex)
        await rec.save(alice)
        carol.disable()
        await rec.save(carol)
        carol.enable()
        await rec.save(carol)
        dave = User(name=f"dave-{s}", token_hash=uuid.uuid4().hex)
        await rec.save(dave)
        dave.delete()
        await rec.save(dave)

        tiny = Image(
            name=f"tiny-{s}",
            format="direct-kernel",
            source="/srv/images/tiny/manifest.json",
            sha256="a" * 64,
            size=1234,
        )
        disk = Image(
            name=f"disk-{s}",
            format="qcow2",
            source="https://images.example/disk.qcow2",
            sha256="b" * 64,
            size=1 << 30,
            min_disk_gb=2,
        )
        old = Image(name=f"old-{s}", format="qcow2", source="/srv/images/old.qcow2", sha256="c" * 64, size=99)
        await rec.save(tiny, disk, old)
        old.delete()
        await rec.save(old)

        project = Project(name=f"p-{s}", description="", tags={"copy": s}, quotas=Quotas())
        project.set_member(alice.id, "admin")
        project.set_member(bob.id, "member")
        project.set_member(carol.id, "reader")
        project.set_member(bob.id, "admin")
        project.remove_member(carol.id)
        project.update(description="updated", quotas=Quotas(instances=20))
        gone = Project(name=f"gone-{s}", description="to be deleted", tags={}, quotas=Quotas())
        gone.set_member(bob.id, "member")
        await rec.save(project, gone)
        gone.delete()
        await rec.save(gone)

        n1 = Node(
            name=f"n1-{s}",
            region="r1",
            capacity=capacity,
            overcommit=Overcommit(cpu=2.0, ram=1.5, disk=1.0),
            agent_version="0.1.0",
        )
        n2 = Node(name=f"n2-{s}", region="r2", capacity=capacity, overcommit=Overcommit(), agent_version="0.1.0")
        await rec.save(n1, n2)
        n1.reregister(
            region="r1", capacity=capacity, overcommit=Overcommit(cpu=2.0, ram=1.5, disk=1.0), agent_version="0.2.0"
        )
        await rec.save(n1)

        def instance(
            name: str, project: Project = project, alice: User = alice, s: str = s, tiny: Image = tiny
        ) -> Instance:
            return Instance(
                project_id=project.id,
                owner_id=alice.id,
                name=name,
                description=f"{name} of {s}",
                tags={"role": name},
                region="r1",
                flavor=flavor,
                image_id=tiny.id,
                user_data_size=10,
                user_data_sha256="d" * 64,
                metadata_token_hash=uuid.uuid4().hex,
            )

        web, db, evac, doomed, fresh, idle = (instance(n) for n in ("web", "db", "evac", "doomed", "fresh", "idle"))
        await rec.save(web, db, evac, doomed, fresh, idle)

        n1.claim(web.id, flavor)
        n1.claim(db.id, flavor)
        n1.claim(doomed.id, flavor)
        n1.claim(idle.id, flavor)
        n2.claim(evac.id, flavor)
        await rec.save(n1, n2)
        for vm, node in ((web, n1), (db, n1), (doomed, n1), (idle, n1), (evac, n2)):
            vm.schedule(node.name)
            vm.launch()
        web.readdress((InstanceAddress(network="nebula", mac="52:54:00:00:00:01", ipv4="10.213.0.10"),))
        web.boot(datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC))
        web.request_reboot()
        web.mark_rebooted()
        web.update(name=f"web-{s}", tags={"role": "web", "tier": "front"})
        db.request_stop()
        db.mark_stopped("asked")
        db.request_start()
        db.mark_started()
        idle.request_stop()
        idle.mark_stopped("asked")
        doomed.request_delete()
        doomed.mark_deleted()
        await rec.save(web, db, idle, doomed, evac)

        n1.claim(db.id, big)  # a resize: released and claimed again
        n1.release(doomed.id)
        n2.mark_down("heartbeat lost")
        await rec.save(n1, n2)
        evac.lose("node n2 went silent")
        evac.reschedule("evacuation")
        evac.fail("no room anywhere")
        await rec.save(evac)
        n2.release(evac.id)
        n2.mark_up()
        n2.mark_down("heartbeat lost again")
        await rec.save(n2)

        key = f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVd0jO8BfbIgAAh5f4wbyqvHUvZoCZ8mGXrpIsNfXcm alice-{s}"
        laptop = Keypair(owner=f"user:{alice.id}", name="laptop", public_key=key, fingerprint="SHA256:x")
        spare = Keypair(owner=f"user:{alice.id}", name="spare", public_key=key, fingerprint="SHA256:x")
        await rec.save(laptop, spare)
        spare.delete()
        await rec.save(spare)
    return rec.seeded


async def assert_rows_match(pool: asyncpg.Pool, seeded: Seeded, *, exact: bool = False) -> None:
    """Every seeded aggregate's row carries its last event's version and sequence: none lost,
    none applied out of order. `exact`: and no row belongs to anything else."""
    for table, expected in seeded.rows.items():
        key = KEY_OF[table]
        query = f"SELECT {key}, version, last_seq FROM {table}"
        rows = {r[key]: (r["version"], r["last_seq"]) for r in await pool.fetch(query)}
        assert {k: rows.get(k) for k in expected} == expected, table
        assert not seeded.gone.get(table, set()) & rows.keys(), table
        if exact:
            assert rows.keys() == expected.keys(), table


async def assert_every_table_has_rows(pool: asyncpg.Pool) -> dict[str, int]:
    counts = {table: await pool.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}
    assert all(counts.values()), f"empty read models: {[t for t, n in counts.items() if not n]}"
    return counts


async def event_types(js: JetStreamContext) -> set[type]:
    """The types of the events in the stream, read from sequence 1."""
    seen: set[type] = set()
    sub = await js.subscribe("nebula.evt.>", ordered_consumer=True, stream="NEBULA_EVENTS")
    try:
        for _ in range(await last_seq(js)):
            seen.add(type(decode((await sub.next_msg(timeout=5)).data)))
    finally:
        await sub.unsubscribe()
    return seen


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


async def raw_history(js: JetStreamContext) -> list[tuple[int, RawEvent]]:
    """Every event in the stream as the projector receives it, from sequence 1."""
    history = []
    sub = await js.subscribe("nebula.evt.>", ordered_consumer=True, stream="NEBULA_EVENTS")
    for _ in range(await last_seq(js)):
        message = await sub.next_msg(timeout=5)
        history.append((message.metadata.sequence.stream, RawEvent(message.subject, message.data)))
    await sub.unsubscribe()
    return history


async def test_a_crash_mid_batch_applies_nothing_and_the_retry_applies_once(
    js: JetStreamContext, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EventStore(js, CODEC)
    await seed(store, projects=2, members_each=1)
    history = await raw_history(js)

    # The connection breaking while a member is set (what its handler raises then) stands
    # in for a crash in the middle of the batch: everything before it must roll back with
    # it, and nothing is parked, for the event is not at fault.
    async def broken(conn: asyncpg.Connection, event: ProjectMemberSet, seq: int) -> None:
        raise ConnectionResetError("connection to Postgres lost")

    async with pool.acquire() as conn:
        with monkeypatch.context() as crashing, pytest.raises(ConnectionResetError):
            crashing.setitem(HANDLERS, ProjectMemberSet, broken)
            await apply_batch(conn, history)
        assert await checkpoint(pool) == 0
        assert await pool.fetchval("SELECT count(*) FROM users") == 0
        assert await pool.fetchval("SELECT count(*) FROM parked_events") == 0

        first = await apply_batch(conn, history)
        again = await apply_batch(conn, history)  # redelivery after a crash between commit and ack

    assert first.applied == len(history) and again.applied == 0
    assert again.done == frozenset(seq for seq, _ in history)
    assert await pool.fetchval("SELECT count(*) FROM users") == 2


async def test_a_batch_that_does_not_continue_the_checkpoint_waits(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    store = EventStore(js, CODEC)
    await seed(store, projects=1, members_each=2)
    history = await raw_history(js)

    async with pool.acquire() as conn:
        later = await apply_batch(conn, history[1:])

    assert later.applied == 0 and later.done == frozenset()
    assert await checkpoint(pool) == 0

    # Given a way to read the stream, it closes the gap first, in the same transaction.
    asked: list[list[int]] = []

    async def fill(seqs: list[int]) -> dict[int, RawEvent]:
        asked.append(seqs)
        return {seq: raw for seq, raw in history if seq in seqs}

    async with pool.acquire() as conn:
        filled = await apply_batch(conn, history[3:], fill)
        again = await apply_batch(conn, history[:3], fill)  # the gap's own messages, delivered late

    assert asked == [[1, 2, 3]]
    assert filled.applied == len(history) and filled.checkpoint == history[-1][0]
    assert again.applied == 0 and again.done == {1, 2, 3}
    assert await checkpoint(pool) == history[-1][0]


async def test_replay_rebuilds_identical_tables(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    store = EventStore(js, CODEC)
    projects = await seed(store, projects=6, members_each=2)
    instance = Instance(
        project_id=projects[0].id,
        owner_id=uuid.uuid4(),
        name="vm",
        description="",
        tags={"a": "b"},
        region="r",
        flavor=Resources(vcpus=1, ram_mb=128, disk_gb=1),
        image_id=uuid.uuid4(),
        user_data_size=0,
        user_data_sha256="0" * 64,
        metadata_token_hash="1" * 64,
    )
    instance.schedule("n1")
    instance.launch()
    await store.save(instance)
    projects[1].delete()
    await store.save(projects[1])
    seeded = await seed_everything(store, copies=2)
    assert set(HANDLERS) <= await event_types(js)  # every handler has events to replay
    stop, tasks = await run_projectors(js, pool)
    try:
        target = await last_seq(js)
        await eventually(lambda: _reached(pool, target))
        live = await dump(pool)
        counts = await assert_every_table_has_rows(pool)
        await assert_rows_match(pool, seeded)
        await pool.execute("UPDATE projects SET name = 'vandalised'")  # replay must repair this too
        await pool.execute("DELETE FROM node_claims")
        await pool.execute("UPDATE nodes SET alloc_vcpus = 0, down = NOT down")
        reached = await replay(js, pool)
        rebuilt = await dump(pool)
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    assert set(live) == set(TABLES)
    assert {table: len(rows) for table, rows in live.items()} == counts
    assert reached == target
    for table in TABLES:
        assert rebuilt[table] == live[table], table
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
