"""The mapping between eventsourcing's domain events and the wire events of the contract.

The contract (`nebula_core.contract.events`) is the source of truth for what travels;
the aggregates' `@event("Name")` methods are the source of truth for how state changes.
The two meet by one naming rule: aggregate `KIND` plus the event's name in snake case
is the wire tag (`Project` + `MemberSet` → `project.member_set`). Field names are the
same on both sides; `tests/unit/test_codec.py` checks every pair, so neither can drift.
"""

from __future__ import annotations

import re
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from nebula_core.contract.events import EVENT_TYPES, Event, event_type

#: Envelope fields on each side, which the codec maps by itself.
WIRE_ENVELOPE = frozenset({"id", "version", "at", "actor"})
DOMAIN_ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


class Codec:
    """Translates events of the registered aggregate classes, in both directions."""

    def __init__(self, *aggregates: type[Aggregate]) -> None:
        self._by_kind: dict[str, type[Aggregate]] = {}
        for cls in aggregates:
            kind = getattr(cls, "KIND", None)
            if not kind:
                raise TypeError(f"{cls.__name__} needs a KIND class attribute")
            self._by_kind[kind] = cls

    def kind_of(self, cls: type[Aggregate]) -> str:
        return str(cls.KIND)  # type: ignore[attr-defined]

    def wire_type(self, domain_event: Any) -> type[Event]:
        outer, name = type(domain_event).__qualname__.rsplit(".", 1)
        kind = next(k for k, c in self._by_kind.items() if c.__qualname__ == outer)
        return EVENT_TYPES[f"{kind}.{_snake(name)}"]

    def to_wire(self, domain_event: Any, *, actor: str = "") -> Event:
        """A domain event collected from an aggregate → the struct that goes on the stream."""
        fields = {k: v for k, v in vars(domain_event).items() if k not in DOMAIN_ENVELOPE}
        return self.wire_type(domain_event)(
            id=domain_event.originator_id,
            version=domain_event.originator_version,
            at=domain_event.timestamp,
            actor=actor,
            **fields,
        )

    def to_domain(self, wire: Event) -> Any:
        """A stored event → the domain event whose `mutate` rebuilds aggregate state."""
        kind, name = event_type(wire).split(".", 1)
        aggregate = self._by_kind[kind]
        fields = {f: getattr(wire, f) for f in wire.__struct_fields__ if f not in WIRE_ENVELOPE}
        envelope: dict[str, Any] = {
            "originator_id": wire.id,
            "originator_version": wire.version,
            "timestamp": wire.at,
        }
        if wire.version == 1:
            envelope["originator_topic"] = get_topic(aggregate)
        return getattr(aggregate, _camel(name))(**envelope, **fields)

    def replay(self, events: list[Event]) -> Aggregate | None:
        """Fold wire events (one aggregate's, in order) into the aggregate they describe."""
        aggregate: Aggregate | None = None
        for wire in events:
            aggregate = self.to_domain(wire).mutate(aggregate)
        return aggregate
