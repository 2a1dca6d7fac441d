"""The domain: eventsourcing aggregates. Pure — nothing here does I/O."""

from nebula_core.domain.project import Project

#: Every aggregate class whose events the event store reads and writes.
AGGREGATES = (Project,)
