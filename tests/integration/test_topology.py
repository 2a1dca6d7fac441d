"""`nebula init`'s JetStream half against a real nats-server."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

from nebula_core.allinone import init
from nebula_core.contract import topology
from nebula_core.contract.errors import TopologyConflict
from nebula_core.contract.limits import SEED_MAX_BYTES


async def test_applying_twice_changes_nothing(nc: NATS) -> None:
    js = nc.jetstream()
    declared = topology.declare()

    first = await init.apply(js, declared)
    before = {s: (await js.stream_info(s)).config for s in ("NEBULA_EVENTS", "NEBULA_COMMANDS")}
    second = await init.apply(js, declared)
    after = {s: (await js.stream_info(s)).config for s in ("NEBULA_EVENTS", "NEBULA_COMMANDS")}

    assert all(line.endswith(": created") for line in first)
    assert all(line.endswith(": unchanged") for line in second)
    assert len(first) == len(second) == 6
    assert before == after


async def test_a_conflicting_stream_is_reported_not_changed(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="NEBULA_EVENTS",
            subjects=["nebula.evt.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.MEMORY,
            duplicate_window=10,
        )
    )

    with pytest.raises(TopologyConflict) as raised:
        await init.apply(js, topology.declare())

    message = raised.value.message
    assert "stream NEBULA_EVENTS" in message
    assert "storage: declared 'file', server has 'memory'" in message
    assert "deny_purge" in message
    assert (await js.stream_info("NEBULA_EVENTS")).config.storage == StorageType.MEMORY


async def test_a_conflicting_bucket_is_reported(nc: NATS) -> None:
    js = nc.jetstream()
    await js.create_key_value(bucket="nebula_nodes", history=5)

    with pytest.raises(TopologyConflict, match=r"bucket nebula_nodes.*history: declared 1, server has 5"):
        await init.apply(js, topology.declare())


async def test_a_smaller_value_limit_is_raised_in_place_and_a_larger_one_refused(nc: NATS) -> None:
    js = nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket="nebula_userdata", history=1, max_value_size=64 * 1024))
    kv = await js.key_value("nebula_userdata")
    await kv.put("kept", b"seed")

    report = await init.apply(js, topology.declare())

    assert f"bucket nebula_userdata: max_value_size raised from 65536 to {SEED_MAX_BYTES}" in report
    assert (await js.stream_info("KV_nebula_userdata")).config.max_msg_size == SEED_MAX_BYTES
    assert (await kv.get("kept")).value == b"seed"
    assert "bucket nebula_userdata: unchanged" in await init.apply(js, topology.declare())

    await js.delete_key_value("nebula_userdata")
    await js.create_key_value(KeyValueConfig(bucket="nebula_userdata", history=1, max_value_size=1 << 20))
    with pytest.raises(TopologyConflict, match="max_value_size: declared 524288, server has 1048576"):
        await init.apply(js, topology.declare())


async def test_heartbeat_keys_expire_and_watchers_are_told(nc: NATS) -> None:
    js = nc.jetstream()
    await init.apply(js, topology.declare(heartbeat_interval_s=0.5))
    kv = await js.key_value("nebula_nodes")
    watcher = await kv.watch("node-1")
    await kv.put("node-1", b"alive")

    operations = []
    async for entry in watcher:
        operations.append(None if entry is None else entry.operation)
        if entry is not None and entry.operation is not None:
            break  # the first entry that is not a plain put: the expiry marker
    await watcher.stop()

    # The put (operation None), then the server's marker once the TTL ran out.
    assert operations[-1] == "PURGE"
    assert (await js.stream_info("KV_nebula_nodes")).state.messages <= 1
