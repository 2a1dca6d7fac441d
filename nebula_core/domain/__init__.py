"""The domain: eventsourcing aggregates. Pure — nothing here does I/O."""

from nebula_core.domain.image import Image
from nebula_core.domain.instance import Instance
from nebula_core.domain.node import Node
from nebula_core.domain.project import Project
from nebula_core.domain.user import User

#: Every aggregate class whose events the event store reads and writes.
AGGREGATES = (Project, User, Image, Node, Instance)
