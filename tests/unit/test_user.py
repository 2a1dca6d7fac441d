"""The User aggregate on its own: each command, the events it records (by their wire
names) and the state after. A user refuses nothing: who may create or change one is the
API's business."""

from __future__ import annotations

from typing import Any

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
