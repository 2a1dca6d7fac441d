"""Instances and their lifecycle.

    pending ─schedule→ scheduled ─launch→ running ─request_stop→ stopping ─stopped→ stopped
    stopped ─request_start→ starting ─started→ running
    running ─request_reboot→ rebooting ─rebooted→ running
    any live state ─request_delete→ deleting ─deleted→ deleted
    any live state ─fail→ error;  placed states ─lose→ unknown ─reschedule→ pending

A transition that the state does not allow raises `IllegalTransition` (the API's 409).
Reports from the node that merely confirm the current state record nothing, so a
repeated report is harmless. The state each event leads to comes from `states.STATE_AFTER`,
the table the instances read model uses too.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar

from eventsourcing.domain import Aggregate, event

from nebula_core.contract import events as ev
from nebula_core.contract.errors import IllegalTransition
from nebula_core.contract.types import InstanceAddress, InstanceState, Resources
from nebula_core.domain.states import LIVE, PLACED, state_after


class Instance(Aggregate):
    KIND: ClassVar[str] = "instance"

    @staticmethod
    def create_id(**_: object) -> uuid.UUID:
        return uuid.uuid4()

    @event("Created")
    def __init__(
        self,
        project_id: uuid.UUID,
        owner_id: uuid.UUID,
        name: str,
        description: str,
        tags: dict[str, str],
        region: str,
        flavor: Resources,
        image_id: uuid.UUID,
        user_data_size: int,
        user_data_sha256: str,
        metadata_token_hash: str,
        public_keys: tuple[str, ...] = (),
    ) -> None:
        self.project_id = project_id
        self.owner_id = owner_id
        self.name = name
        self.description = description
        self.tags = dict(tags)
        self.region = region
        self.flavor = flavor
        self.image_id = image_id
        self.user_data_size = user_data_size
        self.user_data_sha256 = user_data_sha256
        self.metadata_token_hash = metadata_token_hash
        self.public_keys = tuple(public_keys)
        self.state: InstanceState = state_after(ev.InstanceCreated)
        self.node_id: str | None = None
        self.error = ""
        self.booted_at: datetime | None = None
        #: Its domain was last known off (stopped, as asked or on its own): an evacuation
        #: rebuilds it off too, rather than booting what its owner had shut down.
        self.powered_off = False
        self.addresses: tuple[InstanceAddress, ...] = ()

    def _already(self, event_type: type[ev.Event]) -> bool:
        """Whether the instance is already in the state `event_type` leads to: a repeated
        outcome, which records nothing."""
        return self.state == state_after(event_type)

    def _require(self, action: str, *allowed: str) -> None:
        if self.state not in allowed:
            raise IllegalTransition(f"cannot {action} instance {self.id} while it is {self.state}")

    # --- user requests -----------------------------------------------------------------

    def update(
        self, *, name: str | None = None, description: str | None = None, tags: dict[str, str] | None = None
    ) -> None:
        self._require("update", *LIVE)
        new = (
            self.name if name is None else name,
            self.description if description is None else description,
            self.tags if tags is None else dict(tags),
        )
        if new != (self.name, self.description, self.tags):
            self._updated(*new)

    @event("Updated")
    def _updated(self, name: str, description: str, tags: dict[str, str]) -> None:
        self.name, self.description, self.tags = name, description, dict(tags)

    def request_stop(self) -> None:
        self._require("stop", "running")
        self._stop_requested()

    @event("StopRequested")
    def _stop_requested(self) -> None:
        self.state = state_after(ev.InstanceStopRequested)

    def request_start(self) -> None:
        self._require("start", "stopped")
        self._start_requested()

    @event("StartRequested")
    def _start_requested(self) -> None:
        self.state = state_after(ev.InstanceStartRequested)

    def request_reboot(self) -> None:
        self._require("reboot", "running")
        self._reboot_requested()

    @event("RebootRequested")
    def _reboot_requested(self) -> None:
        self.state = state_after(ev.InstanceRebootRequested)

    def request_delete(self) -> None:
        self._require("delete", *LIVE)
        self._delete_requested()

    @event("DeleteRequested")
    def _delete_requested(self) -> None:
        self.state = state_after(ev.InstanceDeleteRequested)

    # --- outcomes, recorded by the orchestrator -----------------------------------------

    def schedule(self, node_id: str) -> None:
        if self.node_id == node_id and self.state in PLACED:
            return  # a redelivered placement of an instance already placed there
        self._require("schedule", "pending")
        self._scheduled(node_id)

    @event("Scheduled")
    def _scheduled(self, node_id: str) -> None:
        self.state, self.node_id, self.error = state_after(ev.InstanceScheduled), node_id, ""

    def launch(self) -> None:
        if self._already(ev.InstanceLaunched):
            return
        self._require("launch", "scheduled")
        self._launched()

    @event("Launched")
    def _launched(self) -> None:
        self.state, self.powered_off = state_after(ev.InstanceLaunched), False

    def mark_stopped(self, reason: str = "") -> None:
        """The domain is off: as asked, or the guest shut itself down, or found so after an outage."""
        if self._already(ev.InstanceStopped):
            return
        # From `scheduled`: an instance that was off, rebuilt off on another node.
        self._require("mark stopped", "stopping", "running", "rebooting", "starting", "unknown", "scheduled")
        self._stopped(reason)

    @event("Stopped")
    def _stopped(self, reason: str = "") -> None:
        self.state, self.powered_off = state_after(ev.InstanceStopped), True

    def mark_started(self) -> None:
        """The domain runs again: after a start, or found running after an outage."""
        if self._already(ev.InstanceStarted):
            return
        self._require("mark started", "starting", "stopped", "unknown")
        self._started()

    @event("Started")
    def _started(self) -> None:
        self.state, self.powered_off = state_after(ev.InstanceStarted), False

    def mark_rebooted(self) -> None:
        if self._already(ev.InstanceRebooted):
            return
        self._require("mark rebooted", "rebooting")
        self._rebooted()

    @event("Rebooted")
    def _rebooted(self) -> None:
        self.state = state_after(ev.InstanceRebooted)

    def mark_deleted(self) -> None:
        if self._already(ev.InstanceDeleted):
            return
        self._require("mark deleted", "deleting")
        self._deleted()

    @event("Deleted")
    def _deleted(self) -> None:
        self.state = state_after(ev.InstanceDeleted)

    def fail(self, reason: str) -> None:
        if self._already(ev.InstanceFailed) and self.error == reason:
            return
        self._require("fail", *LIVE)
        self._failed(reason)

    @event("Failed")
    def _failed(self, reason: str) -> None:
        self.state, self.error = state_after(ev.InstanceFailed), reason

    def lose(self, reason: str) -> None:
        """Its node went silent: what the domain is doing is unknown."""
        if self._already(ev.InstanceLost):
            return
        self._require("lose", *PLACED)
        self._lost(reason)

    @event("Lost")
    def _lost(self, reason: str) -> None:
        self.state, self.error = state_after(ev.InstanceLost), reason

    def reschedule(self, reason: str) -> None:
        """Evacuation: leave the dead node and go back to placement."""
        self._require("reschedule", "unknown", "error")
        if self.node_id is None:
            raise IllegalTransition(f"instance {self.id} has no node to leave")
        self._rescheduled(self.node_id, reason)

    @event("Rescheduled")
    def _rescheduled(self, from_node_id: str, reason: str) -> None:
        self.state, self.node_id, self.error = state_after(ev.InstanceRescheduled), None, ""
        self.addresses = ()  # they were the dead node's

    def boot(self, booted_at: datetime) -> None:
        """The guest phoned home; recorded once per instance."""
        if self.booted_at is not None:
            return
        self._require("record the boot of", "running", "rebooting", "starting", "scheduled")
        self._booted(booted_at)

    @event("Booted")
    def _booted(self, booted_at: datetime) -> None:
        self.booted_at = booted_at

    def readdress(self, addresses: tuple[InstanceAddress, ...]) -> None:
        """Its node sees these addresses now; recorded when they differ from the last."""
        if tuple(addresses) == self.addresses:
            return
        self._require("change the addresses of", *PLACED)
        self._addresses_changed(tuple(addresses))

    @event("AddressesChanged")
    def _addresses_changed(self, addresses: tuple[InstanceAddress, ...]) -> None:
        self.addresses = tuple(addresses)
