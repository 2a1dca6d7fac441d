"""What libvirt says about a domain, in Nebula's words: its state (`virDomainState` →
the contract's `DomainState`) and its lifecycle events (event and detail → a reason a
person reads in the instance's history). Pure tables; no connection is needed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import libvirt

from nebula_core.contract.node import DomainState

_STATES: dict[int, DomainState] = {
    libvirt.VIR_DOMAIN_NOSTATE: "other",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",  # shutting down, still running
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}


def domain_state(code: int) -> DomainState:
    """The contract's name for a `virDomainState`."""
    return _STATES.get(code, "other")


E = libvirt
#: What a lifecycle event says happened, by (event, detail); then by event alone.
_EVENT_REASONS: dict[tuple[int, int | None], str] = {
    (E.VIR_DOMAIN_EVENT_DEFINED, None): "the domain was defined",
    (E.VIR_DOMAIN_EVENT_UNDEFINED, None): "the domain was undefined",
    (E.VIR_DOMAIN_EVENT_STARTED, None): "the domain was started",
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_RESTORED): "the domain was restored",
    (E.VIR_DOMAIN_EVENT_SUSPENDED, None): "the domain was paused",
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR): "paused on a disk I/O error",
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG): "paused by its watchdog",
    (E.VIR_DOMAIN_EVENT_RESUMED, None): "the domain was resumed",
    (E.VIR_DOMAIN_EVENT_STOPPED, None): "the domain stopped",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN): "the guest shut down",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED): "the domain was destroyed",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_CRASHED): "the guest crashed",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_MIGRATED): "the domain migrated away",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SAVED): "the domain was saved to disk",
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_FAILED): "the hypervisor failed",
    (E.VIR_DOMAIN_EVENT_SHUTDOWN, None): "the guest is shutting down",
    (E.VIR_DOMAIN_EVENT_PMSUSPENDED, None): "the guest suspended itself",
    (E.VIR_DOMAIN_EVENT_CRASHED, None): "the guest crashed",
    (E.VIR_DOMAIN_EVENT_CRASHED, E.VIR_DOMAIN_EVENT_CRASHED_PANICKED): "the guest kernel panicked",
}


@dataclass(frozen=True)
class DomainEvent:
    """A lifecycle event of a Nebula domain: which instance, and what happened to it."""

    instance_id: uuid.UUID
    reason: str


def describe_event(name: str, event: int, detail: int) -> DomainEvent | None:
    """The event of domain `name` as Nebula sees it; None for a domain not named by a UUID."""
    instance_id = instance_of(name)
    if instance_id is None:
        return None
    reason = _EVENT_REASONS.get((event, detail)) or _EVENT_REASONS.get((event, None))
    return DomainEvent(instance_id, reason or f"libvirt lifecycle event {event}/{detail}")


def instance_of(domain_name: str) -> uuid.UUID | None:
    """The instance a domain belongs to: Nebula names domains by the canonical instance UUID."""
    try:
        instance_id = uuid.UUID(domain_name)
    except ValueError:
        return None
    return instance_id if str(instance_id) == domain_name else None
