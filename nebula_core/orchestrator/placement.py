"""Placement: which nodes may take an instance, best first. Pure — values in, values out.

Filters run in a fixed order (region, liveness, free capacity after overcommit), and when
they leave nothing the refusal names the filter that removed the last candidates and what
was asked ("no node in region eu-1 with 4 free vCPUs"), never a bare "no valid host".
The weigher orders the survivors: `spread` puts the instance where the most room is left,
`pack` where the least is, so that whole nodes stay free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from nebula_core.contract.errors import InsufficientCapacity
from nebula_core.contract.types import Resources
from nebula_core.domain.node import shortfall

Strategy = Literal["spread", "pack"]


@dataclass(frozen=True)
class Candidate:
    """What placement knows of one node: where it is, whether it lives, what is free."""

    node_id: str
    region: str
    live: bool
    usable: Resources
    free: Resources


class NoValidHost(InsufficientCapacity):
    """No node passes the filters; the message says which filter removed them all."""

    code = "no_valid_host"


def _fraction_free(node: Candidate) -> float:
    """The scarcest dimension's free share: 1.0 is an empty node, 0.0 a full one."""
    shares = [
        free / total
        for free, total in (
            (node.free.vcpus, node.usable.vcpus),
            (node.free.ram_mb, node.usable.ram_mb),
            (node.free.disk_gb, node.usable.disk_gb),
        )
        if total > 0
    ]
    return min(shares, default=0.0)


def rank(nodes: Iterable[Candidate], *, want: Resources, region: str, strategy: Strategy = "spread") -> list[Candidate]:
    """The nodes that can take `want` in `region`, best first; `NoValidHost` when none can."""
    everywhere = list(nodes)
    in_region = [n for n in everywhere if n.region == region]
    if not in_region:
        known = sorted({n.region for n in everywhere})
        where = f" (regions with nodes: {', '.join(known)})" if known else " (no node is registered)"
        raise NoValidHost(f"no node in region {region}{where}")
    live = [n for n in in_region if n.live]
    if not live:
        raise NoValidHost(f"no live node in region {region}: all {len(in_region)} are down")
    fitting = [n for n in live if not shortfall(n.free, want)]
    if not fitting:
        missing = _common_shortfall(live, want)
        raise NoValidHost(f"no node in region {region} with {' and '.join(missing)}")
    # Ties broken by node id, so that the order is stable and tests can reason about it.
    if strategy == "pack":
        return sorted(fitting, key=lambda n: (_fraction_free(n), n.node_id))
    return sorted(fitting, key=lambda n: (-_fraction_free(n), n.node_id))


def _common_shortfall(nodes: list[Candidate], want: Resources) -> list[str]:
    """What the live nodes lack: each dimension in which no node has enough, or — when each
    dimension fits somewhere but never all on one node — every dimension that fell short."""
    per_node = [shortfall(n.free, want) for n in nodes]
    everywhere = [m for m in per_node[0] if all(m in other for other in per_node[1:])]
    if everywhere:
        return everywhere
    seen: list[str] = []
    for missing in per_node:
        seen.extend(m for m in missing if m not in seen)
    return seen
