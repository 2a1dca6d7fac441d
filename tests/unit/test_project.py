"""The Project aggregate on its own: each command, the events it records (by their wire
names), the state after, and what it refuses."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from eventsourcing.domain import Aggregate

from nebula_core.contract.errors import IllegalTransition, NotFound
from nebula_core.contract.events import ProjectCreated, event_type
from nebula_core.contract.types import Quotas
from nebula_core.domain import AGGREGATES, Project
from nebula_core.domain.codec import Codec

CODEC = Codec(*AGGREGATES)


def recorded(aggregate: Aggregate) -> list[str]:
    """The wire types of the events recorded since the last call."""
    return [event_type(CODEC.to_wire(e)) for e in aggregate.collect_events()]


def new_project() -> Project:
    project = Project(name="web", description="the shop", tags={"team": "a"}, quotas=Quotas(instances=3))
    project.collect_events()
    return project


def deleted_project() -> Project:
    project = new_project()
    project.delete()
    project.collect_events()
    return project


def test_a_new_project_records_created_with_what_it_was_given() -> None:
    project = Project(name="web", description="the shop", tags={"team": "a"}, quotas=Quotas(instances=3))

    [created] = project.collect_events()
    wire = CODEC.to_wire(created, actor="user:x")

    assert isinstance(wire, ProjectCreated)
    assert (wire.name, wire.description, wire.tags) == ("web", "the shop", {"team": "a"})
    assert wire.quotas == Quotas(instances=3)
    assert (project.members, project.deleted, project.version) == ({}, False, 1)


def test_update_changes_what_was_given_and_keeps_the_rest() -> None:
    project = new_project()

    project.update(description="the new shop", quotas=Quotas(instances=5))

    assert recorded(project) == ["project.updated"]
    assert (project.name, project.description, project.tags) == ("web", "the new shop", {"team": "a"})
    assert project.quotas == Quotas(instances=5)


def test_an_update_that_changes_nothing_records_nothing() -> None:
    project = new_project()

    project.update(name="web", tags={"team": "a"})
    project.update()

    assert recorded(project) == []


def test_set_member_adds_a_member_and_changes_its_role() -> None:
    project, alice = new_project(), uuid.uuid4()

    project.set_member(alice, "reader")
    project.set_member(alice, "admin")

    assert recorded(project) == ["project.member_set", "project.member_set"]
    assert project.members == {alice: "admin"}


def test_setting_the_role_a_member_already_has_records_nothing() -> None:
    project, alice = new_project(), uuid.uuid4()
    project.set_member(alice, "member")
    project.collect_events()

    project.set_member(alice, "member")

    assert recorded(project) == []


def test_remove_member_takes_the_member_out() -> None:
    project, alice, bob = new_project(), uuid.uuid4(), uuid.uuid4()
    project.set_member(alice, "member")
    project.set_member(bob, "reader")
    project.collect_events()

    project.remove_member(alice)

    assert recorded(project) == ["project.member_removed"]
    assert project.members == {bob: "reader"}


def test_removing_someone_who_is_not_a_member_is_not_found() -> None:
    project = new_project()

    with pytest.raises(NotFound, match="not a member"):
        project.remove_member(uuid.uuid4())
    assert recorded(project) == []


def test_delete_marks_the_project_deleted() -> None:
    project = new_project()

    project.delete()

    assert recorded(project) == ["project.deleted"]
    assert project.deleted


@pytest.mark.parametrize(
    "command",
    [
        lambda p: p.update(name="other"),
        lambda p: p.set_member(uuid.uuid4(), "member"),
        lambda p: p.remove_member(uuid.uuid4()),
        lambda p: p.delete(),
    ],
    ids=["update", "set_member", "remove_member", "delete"],
)
def test_a_deleted_project_refuses_every_command(command: Callable[[Project], None]) -> None:
    project = deleted_project()

    with pytest.raises(IllegalTransition, match="deleted"):
        command(project)
    assert recorded(project) == []
