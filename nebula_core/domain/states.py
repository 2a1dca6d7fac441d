"""Instance states: which state each instance event leads to, and the sets of states the
rest of Nebula reasons about.

`STATE_AFTER` is the one table of transitions' results: the `Instance` aggregate sets its
state from it when it records an event, and the instances read model sets its `state`
column from it when it projects one, so the two agree by construction. Which transitions
are *allowed* is the aggregate's business (`domain/instance.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from nebula_core.contract import commands
from nebula_core.contract import events as ev
from nebula_core.contract.types import InstanceState

#: The state an instance is in after each of its events; None: the event leaves it as it was.
STATE_AFTER: Mapping[type[ev.Event], InstanceState | None] = MappingProxyType(
    {
        ev.InstanceCreated: "pending",
        ev.InstanceUpdated: None,
        ev.InstanceScheduled: "scheduled",
        ev.InstanceLaunched: "running",
        ev.InstanceStopRequested: "stopping",
        ev.InstanceStopped: "stopped",
        ev.InstanceStartRequested: "starting",
        ev.InstanceStarted: "running",
        ev.InstanceRebootRequested: "rebooting",
        ev.InstanceRebooted: "running",
        ev.InstanceDeleteRequested: "deleting",
        ev.InstanceDeleted: "deleted",
        ev.InstanceFailed: "error",
        ev.InstanceLost: "unknown",
        ev.InstanceRescheduled: "pending",
        ev.InstanceBooted: None,
        ev.InstanceAddressesChanged: None,
    }
)

#: States from which an instance can still be used or changed (every state but the deletion's).
LIVE = frozenset(
    {"pending", "scheduled", "running", "stopping", "stopped", "starting", "rebooting", "error", "unknown"}
)
#: States in which the instance has (or may have) a domain on a node.
PLACED = frozenset({"scheduled", "running", "stopping", "stopped", "starting", "rebooting"})

#: States in which work is under way, each with the command that drives an instance on out
#: of it; the reconciler re-drives an instance stuck in one with that command.
REDRIVE: Mapping[InstanceState, type[commands.Command]] = MappingProxyType(
    {
        "pending": commands.PlaceInstance,
        "scheduled": commands.PlaceInstance,
        "stopping": commands.StopInstance,
        "starting": commands.StartInstance,
        "rebooting": commands.RebootInstance,
        "deleting": commands.DeleteInstance,
    }
)
TRANSITIONAL = frozenset(REDRIVE)


def state_after(event_type: type[ev.Event]) -> InstanceState:
    """The state an instance is in after an event of `event_type`, one that sets it."""
    state = STATE_AFTER[event_type]
    if state is None:
        raise ValueError(f"{ev.event_type(event_type)} leaves an instance's state as it was")
    return state
