"""The JetStream event store against a real nats-server."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import msgspec
import nats
import pytest
from nats.js import JetStreamContext

from nebula_core.allinone.embedded import NatsServer
from nebula_core.contract import topology
from nebula_core.contract.errors import ConcurrencyConflict, NotFound
from nebula_core.contract.types import Quotas
from nebula_core.domain.codec import Codec
from nebula_core.domain.project import Project
from nebula_core.eventstore import EventStore

CODEC = Codec(Project)


def new_project(name: str = "alpha") -> Project:
    return Project(name=name, description="", tags={"team": "infra"}, quotas=Quotas())


async def test_a_saved_aggregate_loads_back_equal(js: JetStreamContext) -> None:
    store = EventStore(js, CODEC)
    project = new_project()
    project.set_member(uuid.uuid4(), "admin")
    sequences = await store.save(project, actor="user:1")

    loaded = await store.load(Project, project.id)

    assert loaded == project
    assert loaded.version == 2
    assert len(sequences) == 2 and sequences[0] < sequences[1]
    history = await store.history("project", project.id)
    assert [h.event.actor for h in history] == ["user:1", "user:1"]


async def test_two_concurrent_writers_exactly_one_wins(js: JetStreamContext, nats_server: NatsServer) -> None:
    await EventStore(js, CODEC).save(new_project())
    project_id = await _any_project_id(js)
    # Two independent writers: separate connections, separate stores, same starting version.
    other = await nats.connect(nats_server.url)
    try:
        writers = [EventStore(js, CODEC), EventStore(other.jetstream(), CODEC)]
        copies = [await w.load(Project, project_id) for w in writers]
        copies[0].update(name="by-writer-0")
        copies[1].update(name="by-writer-1")

        results = await asyncio.gather(
            *(w.save(c) for w, c in zip(writers, copies, strict=True)), return_exceptions=True
        )
    finally:
        await other.close()

    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 1 and isinstance(losers[0], ConcurrencyConflict)
    final = await EventStore(js, CODEC).load(Project, project_id)
    assert final.version == 2
    assert final.name in {"by-writer-0", "by-writer-1"}


async def test_many_racing_writers_never_lose_an_update(js: JetStreamContext) -> None:
    """Ten writers each add a member, retrying on conflict: all ten memberships survive."""
    project = new_project()
    await EventStore(js, CODEC).save(project)
    members = [uuid.uuid4() for _ in range(10)]

    async def add(user_id: uuid.UUID) -> int:
        store = EventStore(js, CODEC)
        conflicts = 0
        while True:
            copy = await store.load(Project, project.id)
            copy.set_member(user_id, "member")
            try:
                await store.save(copy)
                return conflicts
            except ConcurrencyConflict:
                conflicts += 1

    conflicts = await asyncio.gather(*(add(m) for m in members))

    final = await EventStore(js, CODEC).load(Project, project.id)
    assert set(final.members) == set(members)
    assert final.version == 11
    assert sum(conflicts) > 0  # they really did race


async def test_creating_the_same_aggregate_twice_is_a_conflict(js: JetStreamContext) -> None:
    store = EventStore(js, CODEC)
    first = new_project("first")
    await store.save(first)
    impostor = new_project("impostor")
    wire = [CODEC.to_wire(e) for e in impostor.collect_events()]
    hijack = [msgspec.structs.replace(w, id=first.id) for w in wire]

    with pytest.raises(ConcurrencyConflict):
        await EventStore(js, CODEC).append(hijack)

    assert (await store.load(Project, first.id)).name == "first"


async def test_a_retried_append_stores_one_event(js: JetStreamContext) -> None:
    project = new_project()
    wire = [CODEC.to_wire(e) for e in project.collect_events()]
    store = EventStore(js, CODEC)

    first = await store.append(wire)
    again = await EventStore(js, CODEC).append(wire)  # a retry after a lost ack, by a fresh process

    assert again == first
    history = await store.history("project", project.id)
    assert len(history) == 1
    info = await js.stream_info("NEBULA_EVENTS")
    assert info.state.messages == 1


async def test_the_stream_drops_a_repeated_message_id(js: JetStreamContext) -> None:
    """The duplicate window itself, without the sequence check in front of it."""
    headers = {"Nats-Msg-Id": "some-id:1"}
    first = await js.publish("nebula.evt.project.x", b"{}", headers=headers)
    second = await js.publish("nebula.evt.project.x", b"{}", headers=headers)
    assert second.duplicate and second.seq == first.seq
    assert (await js.stream_info("NEBULA_EVENTS")).state.messages == 1


async def test_events_survive_a_nats_server_crash(js: JetStreamContext, nats_server: NatsServer) -> None:
    store = EventStore(js, CODEC)
    project = new_project()
    for i in range(5):
        project.set_member(uuid.uuid4(), "reader" if i % 2 else "member")
    await store.save(project)

    nats_server.kill()
    nats_server.start()  # same store directory, same port

    client = await nats.connect(nats_server.url)
    try:
        reloaded = await EventStore(client.jetstream(), CODEC).load(Project, project.id)
    finally:
        await client.close()
    assert reloaded == project
    assert reloaded.version == 6


async def test_an_aggregate_with_many_events_loads_in_order(js: JetStreamContext) -> None:
    store = EventStore(js, CODEC)
    project = new_project()
    await store.save(project)
    # Interleave another aggregate's events so the subject filter really matters.
    noise = new_project("noise")
    await store.save(noise)
    for i in range(1, 600):
        project.update(description=f"rev {i}")
        await store.save(project)
        if i % 50 == 0:
            noise.update(description=f"noise {i}")
            await store.save(noise)

    loaded = await EventStore(js, CODEC).load(Project, project.id)

    assert loaded.version == 600
    assert loaded.description == "rev 599"
    history = await store.history("project", project.id)
    assert [h.event.version for h in history] == list(range(1, 601))
    assert all(a.seq < b.seq for a, b in itertools.pairwise(history))


async def test_load_as_of_a_past_time(js: JetStreamContext) -> None:
    store = EventStore(js, CODEC)
    project = new_project()
    await store.save(project)
    history = await store.history("project", project.id)
    created_at = history[0].event.at
    project.update(name="renamed")
    await store.save(project)

    then = await store.load(Project, project.id, at=created_at)
    now = await store.load(Project, project.id)

    assert then.name == "alpha" and now.name == "renamed"


async def test_an_unknown_aggregate_is_not_found(js: JetStreamContext) -> None:
    store = EventStore(js, CODEC)
    with pytest.raises(NotFound):
        await store.load(Project, uuid.uuid4())
    assert await store.history("project", uuid.uuid4()) == []


async def test_the_event_log_refuses_purge_and_delete(js: JetStreamContext) -> None:
    store = EventStore(js, CODEC)
    sequences = await store.save(new_project())
    with pytest.raises(nats.js.errors.APIError):
        await js.purge_stream("NEBULA_EVENTS")
    with pytest.raises(nats.js.errors.APIError):
        await js.delete_msg("NEBULA_EVENTS", sequences[0])
    assert (await js.stream_info("NEBULA_EVENTS")).state.messages == 1


async def _any_project_id(js: JetStreamContext) -> uuid.UUID:
    raw = await js.get_last_msg("NEBULA_EVENTS", "nebula.evt.project.*")
    return uuid.UUID(raw.subject.rsplit(".", 1)[1])


def test_topology_declares_what_the_design_says() -> None:
    declared = topology.declare(replicas=3)
    events, commands = declared.streams
    assert events.deny_delete and events.deny_purge
    assert events.subjects == ["nebula.evt.>"] and commands.subjects == ["nebula.cmd.>"]
    assert commands.retention.value == "workqueue"
    assert all(s.num_replicas == 3 for s in declared.streams)
