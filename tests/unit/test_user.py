"""The User aggregate on its own: each command, the events it records (by their wire
names) and the state after. A deleted user refuses every command; otherwise who may
create or change one is the API's business."""

from __future__ import annotations

from typing import Any

import pytest

from nebula_core.contract.errors import IllegalTransition
from nebula_core.contract.events import event_type
from nebula_core.domain import AGGREGATES, User
from nebula_core.domain.codec import Codec

CODEC = Codec(*AGGREGATES)


def wire_of(user: User) -> list[Any]:
    """The events recorded since the last call, as they would go on the stream."""
    return [CODEC.to_wire(e) for e in user.collect_events()]


def test_a_new_user_records_created_with_the_hash_of_its_token() -> None:
    user = User(name="alice", token_hash="1" * 64)

    [created] = wire_of(user)

    assert event_type(created) == "user.created"
    assert (created.name, created.token_hash, created.is_admin) == ("alice", "1" * 64, False)
    assert (user.name, user.token_hash, user.is_admin) == ("alice", "1" * 64, False)


def test_a_user_may_be_created_a_cloud_administrator() -> None:
    assert User(name="root", token_hash="1" * 64, is_admin=True).is_admin


def test_rotating_the_token_records_the_new_hash_only() -> None:
    user = User(name="alice", token_hash="1" * 64)
    user.collect_events()

    user.rotate_token("2" * 64)

    [rotated] = wire_of(user)
    assert event_type(rotated) == "user.token_rotated"
    assert rotated.token_hash == "2" * 64
    assert user.token_hash == "2" * 64


def fresh_user() -> User:
    user = User(name="alice", token_hash="1" * 64)
    user.collect_events()
    return user


def test_a_new_user_is_enabled() -> None:
    user = User(name="alice", token_hash="1" * 64)
    assert (user.disabled, user.deleted) == (False, False)


def test_disabling_records_disabled_and_enabling_records_enabled() -> None:
    user = fresh_user()

    user.disable()
    [disabled] = wire_of(user)
    assert event_type(disabled) == "user.disabled"
    assert user.disabled

    user.enable()
    [enabled] = wire_of(user)
    assert event_type(enabled) == "user.enabled"
    assert not user.disabled


def test_disabling_a_disabled_user_or_enabling_an_enabled_one_records_nothing() -> None:
    user = fresh_user()
    user.enable()
    assert wire_of(user) == []

    user.disable()
    wire_of(user)
    user.disable()
    assert wire_of(user) == []
    assert user.disabled


def test_a_disabled_users_token_may_be_rotated_and_stays_suspended() -> None:
    user = fresh_user()
    user.disable()
    user.rotate_token("2" * 64)

    assert [event_type(e) for e in wire_of(user)] == ["user.disabled", "user.token_rotated"]
    assert (user.token_hash, user.disabled) == ("2" * 64, True)


def test_deleting_records_deleted() -> None:
    user = fresh_user()

    user.delete()

    [deleted] = wire_of(user)
    assert event_type(deleted) == "user.deleted"
    assert user.deleted


@pytest.mark.parametrize(
    "command",
    [
        lambda u: u.delete(),
        lambda u: u.disable(),
        lambda u: u.enable(),
        lambda u: u.rotate_token("2" * 64),
    ],
    ids=["delete", "disable", "enable", "rotate_token"],
)
def test_a_deleted_user_refuses_every_command(command: Any) -> None:
    user = fresh_user()
    user.delete()
    wire_of(user)

    with pytest.raises(IllegalTransition):
        command(user)

    assert wire_of(user) == []
    assert user.token_hash == "1" * 64


def test_a_history_of_every_user_event_rebuilds_the_same_user() -> None:
    user = User(name="alice", token_hash="1" * 64, is_admin=True)
    user.disable()
    user.rotate_token("2" * 64)
    user.enable()
    user.delete()

    rebuilt = CODEC.replay([CODEC.to_wire(e) for e in user.collect_events()])

    assert rebuilt == user
    assert (rebuilt.token_hash, rebuilt.disabled, rebuilt.deleted) == ("2" * 64, False, True)
