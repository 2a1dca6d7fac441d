"""Every event Nebula appends to the `NEBULA_EVENTS` stream.

Each event is a tagged msgspec struct; the tag (`type`, e.g. `instance.created`) names
the aggregate and what happened. The envelope fields (`id`, `version`, `at`, `actor`)
are common to all: `id` is the aggregate id, `version` its position in the aggregate's
history (1 for the first event), `at` when it happened, `actor` who caused it
(a user id, or `system:<role>`). The JetStream subject is `nebula.evt.<aggregate>.<id>`.

Secrets never enter this immutable log: tokens appear only as sha256 hashes, and
user-data only by size and digest.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Union

import msgspec

from nebula_core.contract.types import (
    Description,
    ImageFormat,
    InstanceAddress,
    Overcommit,
    Quotas,
    Resources,
    Role,
    Tags,
)


def _tag(cls: type[msgspec.Struct]) -> str:
    return str(cls.__struct_config__.tag)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """The envelope every event shares."""

    id: uuid.UUID
    version: int
    at: datetime
    actor: str = ""


# --- project -------------------------------------------------------------------------


class ProjectCreated(Event, frozen=True, tag="project.created"):
    name: str
    description: str
    tags: dict[str, str]
    quotas: Quotas


class ProjectUpdated(Event, frozen=True, tag="project.updated"):
    name: str
    description: str
    tags: dict[str, str]
    quotas: Quotas


class ProjectMemberSet(Event, frozen=True, tag="project.member_set"):
    user_id: uuid.UUID
    role: Role


class ProjectMemberRemoved(Event, frozen=True, tag="project.member_removed"):
    user_id: uuid.UUID


class ProjectDeleted(Event, frozen=True, tag="project.deleted"):
    pass


# --- user ----------------------------------------------------------------------------


class UserCreated(Event, frozen=True, tag="user.created"):
    name: str
    token_hash: str
    is_admin: bool = False


class UserTokenRotated(Event, frozen=True, tag="user.token_rotated"):
    """The user's token is replaced; the one before it stops working."""

    token_hash: str


class UserDisabled(Event, frozen=True, tag="user.disabled"):
    """The user's token stops working until the user is enabled again."""


class UserEnabled(Event, frozen=True, tag="user.enabled"):
    pass


class UserDeleted(Event, frozen=True, tag="user.deleted"):
    """The user is gone, with their token and their memberships."""


# --- image ---------------------------------------------------------------------------


class ImageRegistered(Event, frozen=True, tag="image.registered"):
    name: str
    format: ImageFormat
    source: str
    sha256: str
    size: int
    min_disk_gb: int = 0
    default_user: str = ""


class ImageDeleted(Event, frozen=True, tag="image.deleted"):
    pass


# --- keypair -------------------------------------------------------------------------


class KeypairCreated(Event, frozen=True, tag="keypair.created"):
    """An OpenSSH public key a user (`owner`: `user:<id>`, or the bootstrap `admin`) may
    give their instances by `name`."""

    owner: str
    name: str
    public_key: str
    fingerprint: str


class KeypairDeleted(Event, frozen=True, tag="keypair.deleted"):
    """Instances created with it keep the key they were given."""


# --- node ----------------------------------------------------------------------------


class NodeRegistered(Event, frozen=True, tag="node.registered"):
    name: str
    region: str
    capacity: Resources
    overcommit: Overcommit
    agent_version: str


class NodeReregistered(Event, frozen=True, tag="node.reregistered"):
    """An agent restarted with a different region, capacity, ratios or version."""

    region: str
    capacity: Resources
    overcommit: Overcommit
    agent_version: str


class NodeResourcesClaimed(Event, frozen=True, tag="node.resources_claimed"):
    """A placement decision: `amount` of the node is promised to `instance_id`."""

    instance_id: uuid.UUID
    amount: Resources


class NodeResourcesReleased(Event, frozen=True, tag="node.resources_released"):
    instance_id: uuid.UUID


class NodeMarkedDown(Event, frozen=True, tag="node.marked_down"):
    reason: str


class NodeMarkedUp(Event, frozen=True, tag="node.marked_up"):
    pass


# --- instance ------------------------------------------------------------------------


class InstanceCreated(Event, frozen=True, tag="instance.created"):
    project_id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    description: Description
    tags: Tags
    region: str
    flavor: Resources
    image_id: uuid.UUID
    user_data_size: int
    user_data_sha256: str
    metadata_token_hash: str
    #: The OpenSSH public keys of the keypairs it was created with (meta-data `public-keys`).
    public_keys: tuple[str, ...] = ()


class InstanceUpdated(Event, frozen=True, tag="instance.updated"):
    name: str
    description: str
    tags: dict[str, str]


class InstanceScheduled(Event, frozen=True, tag="instance.scheduled"):
    node_id: str


class InstanceLaunched(Event, frozen=True, tag="instance.launched"):
    """The node started the domain for the first time: the instance is running."""


class InstanceStopRequested(Event, frozen=True, tag="instance.stop_requested"):
    pass


class InstanceStopped(Event, frozen=True, tag="instance.stopped"):
    reason: str = ""


class InstanceStartRequested(Event, frozen=True, tag="instance.start_requested"):
    pass


class InstanceStarted(Event, frozen=True, tag="instance.started"):
    pass


class InstanceRebootRequested(Event, frozen=True, tag="instance.reboot_requested"):
    pass


class InstanceRebooted(Event, frozen=True, tag="instance.rebooted"):
    pass


class InstanceDeleteRequested(Event, frozen=True, tag="instance.delete_requested"):
    pass


class InstanceDeleted(Event, frozen=True, tag="instance.deleted"):
    pass


class InstanceFailed(Event, frozen=True, tag="instance.failed"):
    reason: str


class InstanceLost(Event, frozen=True, tag="instance.lost"):
    """Its node went silent: the instance's real state is unknown."""

    reason: str


class InstanceRescheduled(Event, frozen=True, tag="instance.rescheduled"):
    """Evacuation: the instance leaves a dead node and goes back to placement."""

    from_node_id: str
    reason: str


class InstanceBooted(Event, frozen=True, tag="instance.booted"):
    """The guest phoned home to the metadata service."""

    booted_at: datetime


class InstanceAddressesChanged(Event, frozen=True, tag="instance.addresses_changed"):
    """The instance's addresses, as its node sees its guest's leases, are now these (all
    of them; empty: it has none)."""

    addresses: tuple[InstanceAddress, ...]


def _all_event_types() -> tuple[type[Event], ...]:
    return tuple(sorted(Event.__subclasses__(), key=lambda t: _tag(t)))


EVENT_TYPES: dict[str, type[Event]] = {_tag(t): t for t in _all_event_types()}
AnyEvent = Union[tuple(EVENT_TYPES.values())]  # type: ignore[valid-type]  # noqa: UP007 — built at run time

_decoder = msgspec.json.Decoder(AnyEvent)
_encoder = msgspec.json.Encoder()


def event_type(event: Event | type[Event]) -> str:
    """The tag (`instance.created`, …) an event travels under."""
    return _tag(event if isinstance(event, type) else type(event))


def aggregate_of(event: Event | type[Event]) -> str:
    """The kind of aggregate (`project`, `instance`, …) an event belongs to."""
    return event_type(event).split(".", 1)[0]


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    return _decoder.decode(data)  # type: ignore[no-any-return,unused-ignore]


class _Tag(msgspec.Struct):
    type: str


def decode_known(data: bytes) -> Event | None:
    """The event, or None for a type this version does not know (written by a newer one)."""
    if msgspec.json.decode(data, type=_Tag).type not in EVENT_TYPES:
        return None
    return decode_event(data)
