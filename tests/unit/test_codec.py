"""The domain events and the wire contract describe the same facts with the same fields."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from eventsourcing.domain import AggregateCreated, _created_event_classes

from nebula_core.contract.events import EVENT_TYPES, decode_event, encode_event
from nebula_core.contract.types import Quotas
from nebula_core.domain import AGGREGATES
from nebula_core.domain.codec import DOMAIN_ENVELOPE, WIRE_ENVELOPE, Codec
from nebula_core.domain.project import Project

CODEC = Codec(*AGGREGATES)


def _domain_event_classes() -> list[type]:
    """The event classes each aggregate really records (eventsourcing also defines a
    default `Created` on every aggregate, unused where `__init__` names its own)."""
    found = []
    for aggregate in AGGREGATES:
        created = _created_event_classes[aggregate]
        for value in vars(aggregate).values():
            if not (isinstance(value, type) and issubclass(value, aggregate.Event)) or value is aggregate.Event:
                continue
            if issubclass(value, AggregateCreated) and value not in created:
                continue
            found.append(value)
    return found


@pytest.mark.parametrize("domain_cls", _domain_event_classes(), ids=lambda c: c.__qualname__)
def test_every_domain_event_has_a_wire_twin_with_the_same_fields(domain_cls: type) -> None:
    wire_cls = CODEC.wire_type(domain_cls.__new__(domain_cls))
    domain_fields = {f.name for f in dataclasses.fields(domain_cls)} - DOMAIN_ENVELOPE
    assert domain_fields == set(wire_cls.__struct_fields__) - WIRE_ENVELOPE


def test_every_wire_event_of_a_modelled_aggregate_has_a_domain_twin() -> None:
    kinds = {a.KIND for a in AGGREGATES}
    modelled = {wire_cls for tag, wire_cls in EVENT_TYPES.items() if tag.split(".")[0] in kinds}
    twins = {CODEC.wire_type(domain_cls.__new__(domain_cls)) for domain_cls in _domain_event_classes()}
    assert twins == modelled


def test_a_history_survives_the_wire_and_rebuilds_the_same_aggregate() -> None:
    project = Project(name="p", description="d", tags={"a": "b"}, quotas=Quotas(instances=3))
    member = uuid.uuid4()
    project.set_member(member, "reader")
    project.remove_member(member)
    project.delete()

    wire = [decode_event(encode_event(CODEC.to_wire(e, actor="user:x"))) for e in project.collect_events()]
    rebuilt = CODEC.replay(wire)

    assert rebuilt == project
    assert [w.version for w in wire] == [1, 2, 3, 4]
    assert {w.actor for w in wire} == {"user:x"}
