"""Request and response bodies of the HTTP API: msgspec types, the one source of the
validation rules and of the OpenAPI document. JSON names here are part of the contract."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from nebula_core.contract.limits import CONSOLE_MAX_BYTES, USER_DATA_MAX_BYTES
from nebula_core.contract.types import ImageFormat, InstanceAddress, InstanceState, Quotas, Role

# Text fields hold no control character (C0, DEL, C1; a NUL could not reach Postgres nor
# libvirt's XML) and no noncharacter; multi-line text may hold tabs and line breaks.
_ONE_LINE = r"^[^\x00-\x1f\x7f-\x9f\ufffe\uffff]*$"
_PRINTABLE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]*$"

Name = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Letters, digits, '.', '_' and '-'; starts with a letter or digit",
    ),
]
Description = Annotated[
    str,
    msgspec.Meta(max_length=1024, pattern=_PRINTABLE, description="Text; no control characters but tab and newlines"),
]
TagKey = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")]
TagValue = Annotated[
    str, msgspec.Meta(max_length=255, pattern=_ONE_LINE, description="One line: no control characters")
]
Tags = Annotated[dict[TagKey, TagValue], msgspec.Meta(max_length=50)]
Region = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
ImageRef = Annotated[
    str, msgspec.Meta(min_length=1, max_length=63, pattern=_ONE_LINE, description="An image's name or id")
]

#: User-data is at most 64 KiB of UTF-8 (checked in bytes by the handler as well).


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: unknown fields are an error, not silently dropped."""


# --- projects ------------------------------------------------------------------------


class ProjectCreate(Body, kw_only=True):
    name: Name
    description: Description = ""
    tags: Tags = {}
    quotas: Quotas = Quotas()


class ProjectPatch(Body, kw_only=True):
    name: Name | None = None
    description: Description | None = None
    tags: Tags | None = None
    quotas: Quotas | None = None


class Usage(msgspec.Struct, kw_only=True):
    instances: int = 0
    vcpus: int = 0
    ram_mb: int = 0
    disk_gb: int = 0


class Project(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    description: str
    tags: dict[str, str]
    quotas: Quotas
    usage: Usage
    created_at: datetime
    updated_at: datetime
    version: int


# --- users and members -----------------------------------------------------------------


class UserCreate(Body, kw_only=True):
    name: Name
    is_admin: bool = False


class UserPatch(Body, kw_only=True):
    """What may change of a user (cloud admins); only what is given changes."""

    disabled: Annotated[
        bool | None,
        msgspec.Meta(
            description="true: the user's token is refused from now on (their memberships stay); false: it works again"
        ),
    ] = None


class User(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    is_admin: bool
    disabled: bool
    created_at: datetime
    token: Annotated[
        str | None,
        msgspec.Meta(
            description="The API token, shown once: in the answer to the POST that created the user or rotated "
            "its token, null in every other answer. Only its sha256 is kept, so a lost token cannot be shown "
            "again (a create repeated with its Idempotency-Key after a failed first answer gets the user "
            "without it): rotate it"
        ),
    ] = None


class Me(msgspec.Struct, kw_only=True):
    """Who a token belongs to: a user, or the bootstrap admin (the operator's
    `NEBULA_ADMIN_TOKEN`), who is not a user and so has no id and no creation time."""

    id: Annotated[uuid.UUID | None, msgspec.Meta(description="The user's id; null for the bootstrap admin")]
    name: str
    is_admin: bool
    disabled: bool
    created_at: Annotated[datetime | None, msgspec.Meta(description="null for the bootstrap admin")]


class MemberAdd(Body, kw_only=True):
    user_id: uuid.UUID
    role: Role


class Member(msgspec.Struct, kw_only=True):
    user_id: uuid.UUID
    role: Role


# --- images --------------------------------------------------------------------------


class ImageCreate(Body, kw_only=True):
    name: Name
    format: ImageFormat
    source: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=2048,
            pattern=r"^(/|file://|https?://)[^\x00-\x1f\x7f-\x9f\ufffe\uffff]*$",
            description="An absolute path or file:// URL under one of the operator's image roots "
            "(NEBULA_IMAGE_ROOTS), or an http(s) URL; by default, no loopback, link-local, private-use or "
            "other non-global address (NEBULA_IMAGE_ALLOW_PRIVATE). Nodes check it again when they fetch",
        ),
    ]
    sha256: Sha256
    size: Annotated[int, msgspec.Meta(ge=0, le=1 << 44)] = 0
    min_disk_gb: Annotated[int, msgspec.Meta(ge=0, le=65536)] = 0
    default_user: Annotated[
        str,
        msgspec.Meta(
            max_length=32,
            pattern=r"^([a-z_][a-z0-9_-]*)?$",
            description="The user its cloud-init installs keypairs for (e.g. `debian`): `nebula instance ssh` "
            "logs in as it",
        ),
    ] = ""


class Image(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    format: ImageFormat
    source: Annotated[
        str | None,
        msgspec.Meta(
            description="Where nodes fetch the image from; shown to cloud admins only (a source may carry "
            "credentials), null for everyone else"
        ),
    ]
    sha256: str
    size: int
    min_disk_gb: int
    default_user: str = ""
    created_at: datetime


# --- instances -----------------------------------------------------------------------


class InstanceCreate(Body, kw_only=True):
    project_id: uuid.UUID
    name: Name
    description: Description = ""
    tags: Tags = {}
    region: Region = "default"
    vcpus: Annotated[int, msgspec.Meta(ge=1, le=128)]
    ram_mb: Annotated[int, msgspec.Meta(ge=64, le=1 << 20)]
    disk_gb: Annotated[int, msgspec.Meta(ge=1, le=65536)]
    image: ImageRef
    user_data: Annotated[str, msgspec.Meta(max_length=USER_DATA_MAX_BYTES)] = ""
    keypairs: Annotated[
        list[Name],
        msgspec.Meta(
            max_length=16,
            description="Names of the caller's own keypairs: their public keys go into the instance's "
            "meta-data (`public-keys`), which cloud-init installs for the image's default user",
        ),
    ] = []


class Instance(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    description: str
    tags: dict[str, str]
    region: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    image: uuid.UUID
    state: InstanceState
    node_id: str | None
    error: str
    created_at: datetime
    updated_at: datetime
    booted_at: datetime | None
    #: The guest's leased addresses on its node's network (empty until it has one).
    addresses: list[InstanceAddress] = []
    version: int


class Action(Body, kw_only=True):
    action: Literal["start", "stop", "reboot"]


class Console(msgspec.Struct, kw_only=True):
    instance_id: uuid.UUID
    node_id: str
    data: str
    truncated: bool


# --- keypairs -------------------------------------------------------------------------

PublicKey = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=16384,
        pattern=r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
        r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?$",
        description="One OpenSSH public key line (`ssh-ed25519 AAAA… comment`), as in authorized_keys "
        "(without options); its key must parse",
    ),
]


class KeypairCreate(Body, kw_only=True):
    name: Name
    public_key: PublicKey


class Keypair(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    public_key: str
    #: As `ssh-keygen -l` shows it: `SHA256:<base64 of the key blob's sha256>`.
    fingerprint: str
    created_at: datetime


# --- nodes ---------------------------------------------------------------------------


class Node(msgspec.Struct, kw_only=True):
    id: str
    region: str
    capacity: dict[str, int]
    overcommit: dict[str, float]
    allocated: dict[str, int]
    instances: int
    alive: bool
    down: bool
    agent_version: str
    last_heartbeat: datetime | None


# --- events, lists, errors -----------------------------------------------------------


class EventRecord(msgspec.Struct, kw_only=True):
    """One event as it sits in the stream: `seq` is its global position."""

    seq: int
    type: str
    aggregate: str
    id: uuid.UUID
    version: int
    at: datetime
    actor: str
    data: dict[str, Any]


class Page(msgspec.Struct, kw_only=True):
    items: list[Any]
    next: str | None


class Error(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: str
    message: str
    fields: list[str] = []


class Health(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Answered 200 while NATS and Postgres answer, 503 when one does not. `status` is
    `degraded` for either trouble: a dependency unreachable (503), or events parked (200:
    this process serves, but the read models lack the events `parked_events` counts)."""

    status: Literal["ok", "degraded"]
    nats: str
    postgres: str
    parked_events: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description="Events the projector could not decode or apply, kept aside in the parked_events "
            "table (`nebula replay` tries them again); absent when there are none, or Postgres did not answer",
        ),
    ] = 0


# --- query parameters ----------------------------------------------------------------
# Their values as the API reads them: a value of the type is never refused for its form.

#: Free text in a query (`region`, `node_id`): one line, no control characters.
QueryText = Annotated[str, msgspec.Meta(pattern=_ONE_LINE, description="One line: no control characters")]
#: A tag filter: `key` (the tag is set) or `key=value` (it is set to that value).
TagFilter = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[^=\x00-\x1f\x7f-\x9f\ufffe\uffff][^\x00-\x1f\x7f-\x9f\ufffe\uffff]*$",
        description="`key` (the tag is set) or `key=value` (it is set to that value); one line",
    ),
]
#: The greatest stream sequence to resume after: sequences are unsigned 64-bit numbers.
STREAM_SEQUENCE_MAX = (1 << 64) - 2
#: A stream sequence to resume after (`/v1/events`); msgspec checks no bound past 64-bit
#: signed integers, so the handler checks the greatest.
StreamSequence = Annotated[int, msgspec.Meta(ge=0, extra_json_schema={"maximum": STREAM_SEQUENCE_MAX})]
#: A time to look back to (`?at=`).
PastTime = Annotated[datetime, msgspec.Meta(tz=True, extra_json_schema={"minLength": 1})]
#: How much of a console's tail to send, in bytes.
ConsoleBytes = Annotated[int, msgspec.Meta(ge=1, le=CONSOLE_MAX_BYTES)]
