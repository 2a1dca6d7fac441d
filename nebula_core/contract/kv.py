"""Records kept in JetStream key-value buckets."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from nebula_core.contract.types import Overcommit, Resources


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """A node's liveness and load, under key `<node id>` of the `nebula_nodes` bucket.

    The key carries a TTL of a few heartbeat intervals: a node that falls silent
    disappears from the bucket by itself and every watcher is told.
    """

    node_id: str
    name: str
    region: str
    capacity: Resources
    overcommit: Overcommit
    allocated: Resources
    running: int
    health: Literal["ok", "degraded"] = "ok"
    agent_version: str
    at: datetime
    interval_seconds: float = 5.0


class InstanceSeed(msgspec.Struct, frozen=True, kw_only=True):
    """An instance's secrets, under key `<instance id>` of the `nebula_userdata` bucket —
    never in the immutable event log. Written by the API before the instance's first
    event; read by the orchestrator to build the node's seed; purged when it is deleted.
    The metadata service holds only the token's sha256 (from `instance.created`)."""

    metadata_token: str
    user_data: str = ""
