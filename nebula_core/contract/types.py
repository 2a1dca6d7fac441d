"""Value types shared by events, commands and the HTTP API."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

import msgspec

Role = Literal["admin", "member", "reader"]
ImageFormat = Literal["direct-kernel", "qcow2"]
InstanceState = Literal[
    "pending",
    "scheduled",
    "running",
    "stopping",
    "stopped",
    "starting",
    "rebooting",
    "deleting",
    "deleted",
    "error",
    "unknown",
]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Description = Annotated[str, msgspec.Meta(max_length=1024)]
TagKey = Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
TagValue = Annotated[str, msgspec.Meta(max_length=255)]
Tags = Annotated[dict[TagKey, TagValue], msgspec.Meta(max_length=50)]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class Quotas(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A project's limits; each counts what the project holds, not what it has asked for."""

    instances: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 10
    vcpus: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 20
    ram_mb: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 51_200
    disk_gb: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 1_000


class InstanceAddress(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One address of an instance: its NIC (`mac`) on a libvirt network, and the IPv4
    address the guest leased there."""

    network: str
    mac: str
    ipv4: str


class Resources(msgspec.Struct, frozen=True, kw_only=True):
    """An amount of compute: a node's capacity, an allocation, an instance's flavour."""

    vcpus: int = 0
    ram_mb: int = 0
    disk_gb: int = 0


def total(amounts: Iterable[Resources]) -> Resources:
    """The sum of some amounts of compute."""
    amounts = list(amounts)
    return Resources(
        vcpus=sum(a.vcpus for a in amounts),
        ram_mb=sum(a.ram_mb for a in amounts),
        disk_gb=sum(a.disk_gb for a in amounts),
    )


class Overcommit(msgspec.Struct, frozen=True, kw_only=True):
    """How far a node's physical capacity may be promised (OpenStack's allocation ratios)."""

    cpu: float = 4.0
    ram: float = 1.0
    disk: float = 1.0
