"""The JetStream topology of DESIGN.md, declared once and applied idempotently.

`apply()` creates what is missing and leaves what matches alone, so running
`nebula init` twice changes nothing. Where the server already holds a stream,
consumer or bucket whose configuration differs from the declaration in a field we
declare, it raises `TopologyConflict` naming each field and both values, rather than
silently running against a configuration nobody wrote down.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
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
from nebula_core.errors import TopologyConflict

#: How long JetStream remembers a `Nats-Msg-Id` to drop a repeated publish.
DUPLICATE_WINDOW_S = 300.0
#: User-data is at most 64 KiB (DESIGN.md, enforced by the API). The bucket holds it as a
#: JSON `InstanceSeed` with the token, where escaping can make a byte six (``\u0001``):
#: the bucket's limit leaves room for the worst case and refuses anything beyond it.
USERDATA_MAX_BYTES = 64 * 1024
SEED_MAX_BYTES = 8 * USERDATA_MAX_BYTES


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


# Fields compared between the declaration and the server, per kind of object.
_STREAM_FIELDS = (
    "subjects", "retention", "storage", "num_replicas", "deny_delete", "deny_purge",
    "duplicate_window", "allow_direct", "max_age", "max_msgs_per_subject",
)
_CONSUMER_FIELDS = ("deliver_policy", "ack_policy", "ack_wait", "max_ack_pending", "filter_subject")


async def apply(js: JetStreamContext, topology: Topology) -> list[str]:
    """Make the server hold `topology`; returns one line per object: created or unchanged."""
    report = []
    for stream in topology.streams:
        report.append(await _ensure_stream(js, stream))
    for stream_name, consumer in topology.consumers:
        report.append(await _ensure_consumer(js, stream_name, consumer))
    for bucket in topology.buckets:
        report.append(await _ensure_bucket(js, bucket))
    return report


async def _ensure_stream(js: JetStreamContext, wanted: StreamConfig) -> str:
    assert wanted.name
    try:
        info = await js.stream_info(wanted.name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(wanted)
        return f"stream {wanted.name}: created"
    _raise_on_drift(f"stream {wanted.name}", wanted, info.config, _STREAM_FIELDS)
    return f"stream {wanted.name}: unchanged"


async def _ensure_consumer(js: JetStreamContext, stream: str, wanted: ConsumerConfig) -> str:
    assert wanted.durable_name
    what = f"consumer {stream}/{wanted.durable_name}"
    try:
        info = await js.consumer_info(stream, wanted.durable_name)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(stream, wanted)
        return f"{what}: created"
    _raise_on_drift(what, wanted, info.config, _CONSUMER_FIELDS)
    return f"{what}: unchanged"


async def _ensure_bucket(js: JetStreamContext, wanted: KeyValueConfig) -> str:
    stream_name = f"KV_{wanted.bucket}"
    try:
        info = await js.stream_info(stream_name)
    except nats.js.errors.NotFoundError:
        await js.create_key_value(wanted)
        return f"bucket {wanted.bucket}: created"
    have = info.config
    differences = _differences(
        {
            "history": (wanted.history, have.max_msgs_per_subject),
            "ttl": (wanted.ttl or 0.0, have.max_age or 0.0),
            "max_value_size": (wanted.max_value_size or -1, have.max_msg_size or -1),
            "replicas": (wanted.replicas, have.num_replicas),
            "storage": (_plain(wanted.storage), _plain(have.storage)),
        }
    )
    raised = differences.pop("max_value_size", None)
    if differences:
        raise TopologyConflict(_conflict_message(f"bucket {wanted.bucket}", differences))
    if raised is not None:
        want, had = raised
        if had != -1 and (want == -1 or want > had):  # a larger limit refuses nothing it took before
            await js.update_stream(dataclasses.replace(have, max_msg_size=want))
            return f"bucket {wanted.bucket}: max_value_size raised from {had} to {want}"
        raise TopologyConflict(_conflict_message(f"bucket {wanted.bucket}", {"max_value_size": raised}))
    return f"bucket {wanted.bucket}: unchanged"


def _raise_on_drift(what: str, wanted: Any, have: Any, names: tuple[str, ...]) -> None:
    pairs = {}
    for name in names:
        value = getattr(wanted, name)
        if value is None:
            continue  # not declared: the server's default is fine
        pairs[name] = (_plain(value), _plain(getattr(have, name)))
    differences = _differences(pairs)
    if differences:
        raise TopologyConflict(_conflict_message(what, differences))


def _differences(pairs: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    return {name: (want, have) for name, (want, have) in pairs.items() if want != have}


def _conflict_message(what: str, differences: dict[str, tuple[Any, Any]]) -> str:
    details = "; ".join(f"{name}: declared {want!r}, server has {have!r}" for name, (want, have) in differences.items())
    return f"{what} exists with a different configuration ({details}); refusing to diverge silently"


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
