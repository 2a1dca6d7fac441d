"""`EventStore.change`, the one load-apply-append loop, over an in-memory stream: what it
appends, when it decides again, and when it gives up (loudly). The JetStream side of the
store (sequences, deduplication, the server's conflict check) is tested in
`tests/integration/test_eventstore.py`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

import pytest

from nebula_core.contract.errors import ConcurrencyConflict, IllegalTransition, NotFound
from nebula_core.contract.events import Event
from nebula_core.contract.types import Quotas
from nebula_core.domain import AGGREGATES, Project
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import A, EventStore, StoredEvent

CODEC = Codec(*AGGREGATES)


class MemoryStore(EventStore):
    """The event store with its stream in a list; `rivals` appends land just before ours."""

    def __init__(self) -> None:
        super().__init__(js=None, codec=CODEC)  # type: ignore[arg-type]
        self.stream: list[Event] = []
        self.loads = 0
        self.rivals = 0

    async def load(self, cls: type[A], aggregate_id: uuid.UUID, *, at: datetime | None = None) -> A:
        self.loads += 1
        return await super().load(cls, aggregate_id, at=at)

    async def history(self, kind: str, aggregate_id: uuid.UUID | str) -> list[StoredEvent]:
        return [StoredEvent(seq, e) for seq, e in enumerate(self.stream, start=1) if str(e.id) == str(aggregate_id)]

    async def _last(self, kind: str, aggregate_id: uuid.UUID | str) -> StoredEvent | None:
        history = await self.history(kind, aggregate_id)
        return history[-1] if history else None

    async def append(self, events: list[Event]) -> list[int]:
        if self.rivals:
            self.rivals -= 1
            await self._rival_appends(events[0].id)
        last = await self._last("project", events[0].id)
        if (last.event.version if last else 0) != events[0].version - 1:
            raise ConcurrencyConflict(f"project {events[0].id} changed since version {events[0].version - 1}")
        self.stream.extend(events)
        return list(range(len(self.stream) - len(events) + 1, len(self.stream) + 1))

    async def _rival_appends(self, project_id: uuid.UUID) -> None:
        rival = await EventStore.load(self, Project, project_id)
        rival.set_member(uuid.uuid4(), "reader")
        self.stream.extend(CODEC.to_wire(e, actor="rival") for e in rival.collect_events())


async def stored_project(store: MemoryStore) -> Project:
    project = Project(name="web", description="", tags={}, quotas=Quotas())
    await store.save(project, actor="user:a")
    return project


def describe(text: str) -> Callable[[Project], None]:
    return lambda p: p.update(description=text)


async def test_a_change_is_applied_to_the_stored_aggregate_and_appended() -> None:
    store = MemoryStore()
    project = await stored_project(store)

    changed = await store.change(Project, project.id, describe("the shop"), actor="user:b")

    assert (changed.aggregate.description, changed.aggregate.version) == ("the shop", 2)
    assert changed.sequences == [2] and changed.last_seq == 2
    assert (await store.load(Project, project.id)).description == "the shop"
    assert store.stream[-1].actor == "user:b"


async def test_a_change_that_records_nothing_appends_nothing() -> None:
    store = MemoryStore()
    project = await stored_project(store)

    changed = await store.change(Project, project.id, describe(""), actor="user:b")

    assert (changed.sequences, changed.last_seq) == ([], None)
    assert len(store.stream) == 1


async def test_after_a_concurrent_append_the_change_is_decided_again_on_the_fresh_state() -> None:
    store = MemoryStore()
    project = await stored_project(store)
    store.rivals = 2
    seen_versions: list[int] = []

    def update(p: Project) -> None:
        seen_versions.append(p.version)
        p.update(description="mine")

    changed = await store.change(Project, project.id, update, actor="user:b")

    assert seen_versions == [1, 2, 3]  # each try saw what the rival had appended
    assert len(changed.aggregate.members) == 2 and changed.aggregate.description == "mine"
    assert [e.actor for e in store.stream] == ["user:a", "rival", "rival", "user:b"]


async def test_a_change_that_keeps_conflicting_raises_once_its_tries_are_spent() -> None:
    store = MemoryStore()
    project = await stored_project(store)
    store.rivals = 3

    with pytest.raises(ConcurrencyConflict, match="kept changing under 3 tries"):
        await store.change(Project, project.id, describe("mine"), actor="user:b", tries=3)
    assert "mine" not in [getattr(e, "description", None) for e in store.stream]


async def test_with_an_expected_version_a_stale_copy_is_refused_naming_both_versions() -> None:
    store = MemoryStore()
    project = await stored_project(store)
    await store.change(Project, project.id, describe("newer"), actor="user:b")

    with pytest.raises(ConcurrencyConflict, match="is at version 2, not 1"):
        await store.change(Project, project.id, describe("mine"), actor="user:c", expected_version=1)
    assert len(store.stream) == 2


async def test_with_an_expected_version_a_concurrent_append_is_not_retried() -> None:
    store = MemoryStore()
    project = await stored_project(store)
    store.rivals = 1

    with pytest.raises(ConcurrencyConflict, match="is at version 2, not 1"):
        await store.change(Project, project.id, describe("mine"), actor="user:c", expected_version=1)
    assert store.loads == 1


async def test_with_the_current_version_expected_the_change_is_made() -> None:
    store = MemoryStore()
    project = await stored_project(store)

    changed = await store.change(Project, project.id, describe("mine"), actor="user:c", expected_version=1)

    assert changed.aggregate.version == 2


async def test_a_refused_command_is_not_retried() -> None:
    store = MemoryStore()
    project = await stored_project(store)
    await store.change(Project, project.id, Project.delete, actor="user:b")
    store.loads = 0

    with pytest.raises(IllegalTransition):
        await store.change(Project, project.id, describe("mine"), actor="user:b")
    assert store.loads == 1


async def test_a_change_of_an_aggregate_that_never_existed_is_not_found() -> None:
    with pytest.raises(NotFound):
        await MemoryStore().change(Project, uuid.uuid4(), describe("mine"), actor="user:b")


async def test_a_copy_already_loaded_is_tried_first_and_a_fresh_one_after_a_conflict() -> None:
    store = MemoryStore()
    project = await stored_project(store)
    cached, stale = await store.load(Project, project.id), await store.load(Project, project.id)
    store.loads = 0

    await store.change(Project, project.id, describe("one"), actor="user:b", loaded=cached)
    assert store.loads == 0

    changed = await store.change(Project, project.id, describe("two"), actor="user:b", loaded=stale)
    assert store.loads == 1  # `stale` was at version 1 while the stream was at 2
    assert (changed.aggregate.version, changed.aggregate.description) == (3, "two")
