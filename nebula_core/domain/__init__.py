"""The domain: eventsourcing aggregates. Pure — nothing here does I/O."""

import uuid
from typing import Any, TypeVar

from eventsourcing.domain import Aggregate

from nebula_core.domain.image import Image
from nebula_core.domain.instance import Instance
from nebula_core.domain.keypair import Keypair
from nebula_core.domain.node import Node
from nebula_core.domain.project import Project
from nebula_core.domain.user import User

#: Every aggregate class whose events the event store reads and writes.
AGGREGATES = (Project, User, Image, Node, Instance, Keypair)

#: The name of each aggregate's first event (a class eventsourcing makes from its `@event`).
_CREATED: dict[type[Aggregate], str] = {
    Project: "Created",
    User: "Created",
    Image: "Registered",
    Node: "Registered",
    Instance: "Created",
    Keypair: "Created",
}

A = TypeVar("A", bound=Aggregate)


def create_with_id(cls: type[A], aggregate_id: uuid.UUID, **kwargs: Any) -> A:
    """A new aggregate with a chosen id — e.g. one derived from an Idempotency-Key, so a
    repeated request cannot create a second aggregate (its first event would conflict)."""
    return cls._create(getattr(cls, _CREATED[cls]), id=aggregate_id, **kwargs)
