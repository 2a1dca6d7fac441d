"""The domain: eventsourcing aggregates. Pure — nothing here does I/O."""

from nebula_core.domain.image import Image
from nebula_core.domain.instance import Instance
from nebula_core.domain.node import Node
from nebula_core.domain.project import Project
from nebula_core.domain.user import User

#: Every aggregate class whose events the event store reads and writes.
AGGREGATES = (Project, User, Image, Node, Instance)

_CREATED = {
    Project: Project.Created,
    User: User.Created,
    Image: Image.Registered,
    Node: Node.Registered,
    Instance: Instance.Created,
}


def create_with_id(cls, aggregate_id, **kwargs):  # type: ignore[no-untyped-def]
    """A new aggregate with a chosen id — e.g. one derived from an Idempotency-Key, so a
    repeated request cannot create a second aggregate (its first event would conflict)."""
    return cls._create(_CREATED[cls], id=aggregate_id, **kwargs)
