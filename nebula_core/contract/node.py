"""Request/reply between the orchestrator and a node agent: the orchestrator asks a node on
`nebula.node.<node id>.<op>`; a node asks the orchestrators on `nebula.ctl.<node id>.<op>`
(its registration and its claims: a node keeps no aggregate and reads no event).

Every reply is a `NodeReply`: either a result or a typed error, never both. Every
operation is idempotent on the node (a repeated create of the same domain succeeds,
a delete of a missing one succeeds), so the orchestrator may retry after a timeout.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Literal

import msgspec

from nebula_core.contract.limits import CONSOLE_DEFAULT_BYTES
from nebula_core.contract.types import ImageFormat, Overcommit, Resources, total

#: Node aggregates are keyed by a UUID derived from the operator-chosen node id.
NODE_NAMESPACE = uuid.UUID("3c1f4d1e-9a7b-5c2d-8e6f-0a1b2c3d4e5f")


def node_uuid(node_id: str) -> uuid.UUID:
    """The id of node `node_id`'s aggregate (and so of its event subject)."""
    return uuid.uuid5(NODE_NAMESPACE, node_id)


def node_actor(node_id: str) -> str:
    """The actor of what node `node_id` said (its registration, its reports)."""
    return f"system:node:{node_id}"


DomainState = Literal["running", "paused", "shutoff", "crashed", "missing", "other"]


class ImageSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a node fetches into its cache, verified by sha256 before use.

    For `qcow2`, `source` is the disk image itself. For `direct-kernel`, `source` is a
    manifest.json (as written by ops/guest/build-tiny.sh) whose `kernel` and `initrd`
    name files beside it, each with its own sha256 under `files`, and whose `cmdline` is
    the kernel command line: the manifest's hash vouches for everything it names.
    """

    id: uuid.UUID
    name: str
    format: ImageFormat
    source: str
    sha256: str
    size: int = 0


class CreateRequest(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: uuid.UUID
    project_id: uuid.UUID
    name: str
    description: str = ""
    tags: dict[str, str] = {}
    vcpus: int
    ram_mb: int
    disk_gb: int
    image: ImageSpec
    #: The instance's token for the metadata service: the node puts the NoCloud seed
    #: (`nocloud_seed`, with the metadata URL its guests can reach) in the SMBIOS serial.
    metadata_token: str
    start: bool = True


def guest_mac(instance_id: uuid.UUID) -> str:
    """The instance's MAC: QEMU's 52:54:00 prefix and three bytes of its id's digest, the
    same on every node (a rebuilt instance keeps it) and in the metadata service's
    network-config."""
    digest = hashlib.sha256(instance_id.bytes).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def nocloud_seed(meta_url: str, instance_id: uuid.UUID, token: str) -> str:
    """The NoCloud seed for SMBIOS: the `-net` form, a URL ending in `/` (DESIGN.md)."""
    return f"ds=nocloud-net;s={meta_url.rstrip('/')}/nocloud/{instance_id}/{token}/"


class InstanceRequest(msgspec.Struct, frozen=True, kw_only=True):
    """start, reboot, delete and status take only the instance."""

    instance_id: uuid.UUID


class StopRequest(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: uuid.UUID
    grace_seconds: int = 30


class ConsoleRequest(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: uuid.UUID
    max_bytes: int = CONSOLE_DEFAULT_BYTES


class DomainStatus(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: uuid.UUID
    state: DomainState


class ConsoleOutput(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: uuid.UUID
    data: str
    truncated: bool = False


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """A typed error: `code` is stable (see nebula_core.contract.errors), `message` is for people."""

    code: str
    message: str


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """`nebula.ctl.<node id>.register`: what a node agent offers placement. The orchestrator
    creates the node's aggregate the first time and records a change only when one of these
    differs from what it holds."""

    region: str
    capacity: Resources
    overcommit: Overcommit
    agent_version: str


class ClaimsRequest(msgspec.Struct, frozen=True, kw_only=True):
    """`nebula.ctl.<node id>.claims`: what placement has promised on the asking node."""


class NodeClaims(msgspec.Struct, frozen=True, kw_only=True):
    """A node's aggregate as the orchestrator knows it: its version and its claims (the
    instances placement expects it to run, each with what it was promised)."""

    version: int
    claims: dict[uuid.UUID, Resources] = {}

    @property
    def allocated(self) -> Resources:
        return total(self.claims.values())


class NodeReply(msgspec.Struct, frozen=True, kw_only=True):
    """Every reply on request/reply, both ways: a result or a typed error, never both."""

    status: DomainStatus | None = None
    console: ConsoleOutput | None = None
    node: NodeClaims | None = None
    error: ErrorBody | None = None
