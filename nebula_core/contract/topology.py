"""The JetStream topology of DESIGN.md, declared once: streams, durable consumers and KV
buckets. `nebula init` applies it idempotently (`nebula_core.allinone.init`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from nebula_core.contract import subjects
from nebula_core.contract.limits import SEED_MAX_BYTES

#: How long JetStream remembers a `Nats-Msg-Id` to drop a repeated publish.
DUPLICATE_WINDOW_S = 300.0


@dataclass(frozen=True)
class Topology:
    streams: list[StreamConfig]
    consumers: list[tuple[str, ConsumerConfig]]
    buckets: list[KeyValueConfig]
    notes: list[str] = field(default_factory=list)


def declare(*, replicas: int = 1, heartbeat_interval_s: float = 5.0, command_ack_wait_s: float = 60.0) -> Topology:
    """Nebula's streams, durable consumers and KV buckets for a cluster of `replicas`."""
    events = StreamConfig(
        name=subjects.EVENTS_STREAM,
        description="Nebula's event log: every change of state, immutable",
        subjects=[subjects.EVENTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=True,
        discard=DiscardPolicy.OLD,
    )
    commands = StreamConfig(
        name=subjects.COMMANDS_STREAM,
        description="Work for the orchestrators; a command is removed once acknowledged",
        subjects=[subjects.COMMANDS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
    )
    projector = ConsumerConfig(
        durable_name=subjects.PROJECTOR_CONSUMER,
        description="Postgres read models; shared by every projector replica",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_ack_pending=10_000,
        filter_subject=subjects.EVENTS_ALL,
    )
    orchestrator = ConsumerConfig(
        durable_name=subjects.ORCHESTRATOR_CONSUMER,
        description="Placement and lifecycle commands; shared by every orchestrator replica",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        # An orchestrator extends the deadline while it works; this is how long a killed
        # one's command waits before another replica gets it.
        ack_wait=command_ack_wait_s,
        max_ack_pending=1_000,
        filter_subject=subjects.COMMANDS_ALL,
    )
    nodes = KeyValueConfig(
        bucket=subjects.NODES_BUCKET,
        description="Node heartbeats; a silent node's key expires",
        history=1,
        ttl=3 * heartbeat_interval_s,
        storage=StorageType.FILE,
        replicas=replicas,
        # The server leaves a delete marker when a key ages out, so watchers are told.
        limit_marker_ttl=max(60.0, 3 * heartbeat_interval_s),
    )
    userdata = KeyValueConfig(
        bucket=subjects.USERDATA_BUCKET,
        description="Instance user-data, outside the immutable event log; purged on delete",
        history=1,
        max_value_size=SEED_MAX_BYTES,
        storage=StorageType.FILE,
        replicas=replicas,
    )
    return Topology(
        streams=[events, commands],
        consumers=[(subjects.EVENTS_STREAM, projector), (subjects.COMMANDS_STREAM, orchestrator)],
        buckets=[nodes, userdata],
    )
