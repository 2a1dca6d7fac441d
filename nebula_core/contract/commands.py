"""Commands on the `NEBULA_COMMANDS` work-queue stream, consumed by the orchestrators.

A command asks for work; the events it leads to record what happened. `command_id`
becomes the `Nats-Msg-Id`, so publishing the same command twice stores it once, and
every handler is idempotent on top of that.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, Union

import msgspec

from nebula_core.contract.types import InstanceAddress


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    command_id: uuid.UUID
    instance_id: uuid.UUID
    requested_at: datetime
    actor: str = ""


class PlaceInstance(Command, frozen=True, tag="place"):
    """Find a node for a pending instance, claim its resources and create the domain."""


class StartInstance(Command, frozen=True, tag="start"):
    pass


class StopInstance(Command, frozen=True, tag="stop"):
    #: Seconds to wait for the guest to shut down before the domain is destroyed.
    grace_seconds: int = 30


class RebootInstance(Command, frozen=True, tag="reboot"):
    pass


class DeleteInstance(Command, frozen=True, tag="delete"):
    pass


class EvacuateInstance(Command, frozen=True, tag="evacuate"):
    """Rebuild an instance of a dead node elsewhere (issued once per node outage)."""

    from_node_id: str


class ReportDomain(Command, frozen=True, tag="report"):
    """A node agent tells the control plane what libvirt says of a domain: a guest that
    shut itself down, crashed or was destroyed out of band, or the state found when the
    agent reconciles after a restart. The orchestrator records it as instance events."""

    node_id: str
    state: Literal["running", "paused", "shutoff", "crashed", "missing", "other"]
    reason: str = ""
    #: The guest's leased addresses as the node sees them now; None: not part of this report.
    addresses: tuple[InstanceAddress, ...] | None = None


class RecordBoot(Command, frozen=True, tag="booted"):
    """The metadata service relays a guest's phone-home: the orchestrator records the boot
    once (`instance.booted`), if the instance can boot now. The metadata service may send
    this command and no other; its `command_id` is derived from the instance, so a guest
    repeating its phone-home is stored once."""

    booted_at: datetime


COMMAND_TYPES: dict[str, type[Command]] = {str(t.__struct_config__.tag): t for t in Command.__subclasses__()}
AnyCommand = Union[tuple(COMMAND_TYPES.values())]  # type: ignore[valid-type]  # noqa: UP007 — built at run time


def command_verb(command: Command | type[Command]) -> str:
    """The verb (`place`, `stop`, …): the last token of the command's subject."""
    cls = command if isinstance(command, type) else type(command)
    return str(cls.__struct_config__.tag)
