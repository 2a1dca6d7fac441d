"""`nebula init`: the JetStream topology and the Postgres migrations, applied idempotently.

`apply()` creates what is missing and leaves what matches alone, so running
`nebula init` twice changes nothing. Where the server already holds a stream,
consumer or bucket whose configuration differs from the declaration in a field we
declare, it raises `TopologyConflict` naming each field and both values, rather than
silently running against a configuration nobody wrote down.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import asyncpg
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, KeyValueConfig, StreamConfig

from nebula_core import nats_client
from nebula_core.config import Settings
from nebula_core.contract import topology
from nebula_core.contract.errors import TopologyConflict
from nebula_core.contract.topology import Topology
from nebula_core.projections import database, migrate


async def apply_topology(settings: Settings) -> list[str]:
    nc = await nats_client.connect(settings.nats_url, name="nebula-init", once=True)
    try:
        declared = topology.declare(replicas=settings.nats_replicas, heartbeat_interval_s=settings.heartbeat_interval)
        return await apply(nc.jetstream(), declared)
    finally:
        await nc.close()


async def apply_migrations(dsn: str) -> list[str]:
    try:
        conn = await database.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError) as err:
        raise ConnectionError(f"cannot reach Postgres: {err}") from err
    try:
        return await migrate.apply(conn)
    finally:
        await conn.close()


async def initialize(settings: Settings) -> list[str]:
    """Topology then migrations; returns what each step did, one line per object."""
    if not settings.pg_dsn:
        raise ValueError("no Postgres: set NEBULA_PG_DSN (or use `nebula up`, which embeds one)")
    return [*await apply_topology(settings), *await apply_migrations(settings.pg_dsn)]


# Fields compared between the declaration and the server, per kind of object.
_STREAM_FIELDS = (
    "subjects",
    "retention",
    "storage",
    "num_replicas",
    "deny_delete",
    "deny_purge",
    "duplicate_window",
    "allow_direct",
    "max_age",
    "max_msgs_per_subject",
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
