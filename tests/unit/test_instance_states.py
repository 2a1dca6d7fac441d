"""The instance state table (`domain.states`): every instance event has its row, and the
aggregate and the instances read model both follow it, event by event."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, get_args

import pytest

from nebula_core.contract import events as ev
from nebula_core.contract.commands import command_verb
from nebula_core.contract.types import InstanceAddress, InstanceState, Resources
from nebula_core.domain import AGGREGATES, Instance
from nebula_core.domain.codec import WIRE_ENVELOPE, Codec
from nebula_core.domain.states import LIVE, PLACED, REDRIVE, STATE_AFTER, TRANSITIONAL, state_after
from nebula_core.projections import instances as projection

CODEC = Codec(*AGGREGATES)
AT = datetime(2026, 1, 1, tzinfo=UTC)
INSTANCE_EVENTS = [t for tag, t in ev.EVENT_TYPES.items() if ev.aggregate_of(t) == "instance"]
#: A value for each field an instance event carries.
SAMPLES: dict[str, Any] = {
    "project_id": uuid.uuid4(),
    "owner_id": uuid.uuid4(),
    "name": "web-1",
    "description": "",
    "tags": {},
    "region": "eu",
    "flavor": Resources(vcpus=1, ram_mb=256, disk_gb=1),
    "image_id": uuid.uuid4(),
    "user_data_size": 0,
    "user_data_sha256": "0" * 64,
    "metadata_token_hash": "1" * 64,
    "public_keys": (),
    "node_id": "node-a",
    "reason": "because",
    "from_node_id": "node-a",
    "booted_at": AT,
    "addresses": (InstanceAddress(network="nebula", mac="52:54:00:00:00:01", ipv4="10.213.0.10"),),
}


def wire(event_cls: type[ev.Event], instance_id: uuid.UUID, version: int) -> ev.Event:
    fields = {f: SAMPLES[f] for f in event_cls.__struct_fields__ if f not in WIRE_ENVELOPE}
    return event_cls(id=instance_id, version=version, at=AT, **fields)


def history_ending_with(event_cls: type[ev.Event]) -> list[ev.Event]:
    """A created instance, then `event_cls`: what the event does on its own."""
    instance_id = uuid.uuid4()
    created = wire(ev.InstanceCreated, instance_id, 1)
    return [created] if event_cls is ev.InstanceCreated else [created, wire(event_cls, instance_id, 2)]


class RecordingConnection:
    """Stands in for asyncpg: keeps the column values each statement would write."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def execute(self, sql: str, *args: Any) -> None:
        insert = re.search(r"INSERT INTO \w+ \(([^)]*)\)\s*VALUES \(([^)]*)\)", sql)
        if insert:
            pairs = list(zip(insert[1].split(","), insert[2].split(","), strict=True))
        else:
            pairs = [(m[1], m[2]) for m in re.finditer(r"(\w+) = (\$\d+)", sql.split("WHERE")[0])]
        self.rows.append({c.strip(): args[int(p.strip()[1:]) - 1] for c, p in pairs if p.strip().startswith("$")})


async def projected_state(history: list[ev.Event]) -> str:
    conn = RecordingConnection()
    for seq, event in enumerate(history, start=1):
        await projection.HANDLERS[type(event)](conn, event, seq)
    states = [row["state"] for row in conn.rows if "state" in row]
    return states[-1]


def test_every_instance_event_has_a_row_in_the_table() -> None:
    assert set(STATE_AFTER) == set(INSTANCE_EVENTS)


def test_every_state_is_reached_by_some_event() -> None:
    assert {s for s in STATE_AFTER.values() if s is not None} == set(get_args(InstanceState))


def test_only_updates_phone_homes_and_addresses_leave_the_state_as_it_was() -> None:
    assert {t for t, s in STATE_AFTER.items() if s is None} == {
        ev.InstanceUpdated,
        ev.InstanceBooted,
        ev.InstanceAddressesChanged,
    }
    with pytest.raises(ValueError, match=r"instance\.booted"):
        state_after(ev.InstanceBooted)


def test_the_read_model_handles_every_instance_event() -> None:
    assert set(INSTANCE_EVENTS) <= set(projection.HANDLERS)


@pytest.mark.parametrize("event_cls", INSTANCE_EVENTS, ids=ev.event_type)
async def test_the_aggregate_and_the_read_model_reach_the_state_the_table_says(event_cls: type[ev.Event]) -> None:
    history = history_ending_with(event_cls)
    expected = STATE_AFTER[event_cls] or "pending"  # no state of its own: still as created

    instance = CODEC.replay(history)

    assert isinstance(instance, Instance)
    assert instance.state == expected
    assert await projected_state(history) == expected


def test_each_transitional_state_is_driven_on_by_its_command() -> None:
    assert {state: command_verb(command) for state, command in REDRIVE.items()} == {
        "pending": "place",
        "scheduled": "place",
        "stopping": "stop",
        "starting": "start",
        "rebooting": "reboot",
        "deleting": "delete",
    }
    assert set(REDRIVE) == TRANSITIONAL


def test_placed_and_transitional_states_are_live_or_being_deleted() -> None:
    assert PLACED <= LIVE
    assert LIVE | {"deleting"} >= TRANSITIONAL
    assert "deleted" not in LIVE | TRANSITIONAL
