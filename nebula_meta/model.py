"""The metadata service's own read model, in memory, kept current from NATS.

Instances come from the `instance.*` events (token hash, hostname, project, tags; gone
when deleted); their user-data from a watch on the `nebula_userdata` bucket. A request
is answered from this memory alone — never by asking another service.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from nebula_core.contract import subjects
from nebula_core.contract.events import Event, InstanceCreated, InstanceDeleted, InstanceUpdated, decode_known
from nebula_core.contract.kv import InstanceSeed

log = logging.getLogger("nebula.meta")


@dataclass
class Record:
    instance_id: uuid.UUID
    token_hash: str
    hostname: str
    project_id: uuid.UUID
    tags: dict[str, str]
    user_data: bytes | None = None


@dataclass
class Instances:
    """What the metadata service knows: `events_read` once the instances' history has been
    read, `seeds_read` once the user-data bucket's current values have."""

    by_id: dict[uuid.UUID, Record] = field(default_factory=dict)
    seeds: dict[uuid.UUID, bytes] = field(default_factory=dict)
    events_read: asyncio.Event = field(default_factory=asyncio.Event)
    seeds_read: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        """Both read: before that, a known instance could be served empty user-data, which
        cloud-init would take as the real thing on its first boot."""
        return self.events_read.is_set() and self.seeds_read.is_set()

    async def wait_ready(self) -> None:
        await asyncio.gather(self.events_read.wait(), self.seeds_read.wait())

    def apply(self, event: Event) -> None:
        if isinstance(event, InstanceCreated):
            self.by_id[event.id] = Record(
                event.id, event.metadata_token_hash, event.name, event.project_id, dict(event.tags)
            )
        elif isinstance(event, InstanceUpdated) and event.id in self.by_id:
            record = self.by_id[event.id]
            record.hostname, record.tags = event.name, dict(event.tags)
        elif isinstance(event, InstanceDeleted):
            self.by_id.pop(event.id, None)
            self.seeds.pop(event.id, None)

    def user_data(self, instance_id: uuid.UUID) -> bytes | None:
        return self.seeds.get(instance_id)


async def follow_events(js: JetStreamContext, model: Instances, stop: asyncio.Event) -> None:
    """Replay every instance event from the start, then keep following."""
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.aggregate_events("instance"))
    head = info.state.last_seq
    sub = await js.subscribe(
        subjects.aggregate_events("instance"),
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    if head == 0 or not info.state.messages:
        model.events_read.set()
    try:
        while not stop.is_set():
            try:
                message = await sub.next_msg(timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                model.events_read.set()  # nothing pending: caught up
                continue
            event = decode_known(message.data)
            if event is not None:
                model.apply(event)
            if message.metadata.num_pending == 0:
                model.events_read.set()
    finally:
        await sub.unsubscribe()


async def follow_seeds(js: JetStreamContext, model: Instances, stop: asyncio.Event) -> None:
    """Mirror the user-data bucket: puts add, deletes and purges remove."""
    kv = await js.key_value(subjects.USERDATA_BUCKET)
    watcher = await kv.watchall()
    try:
        while not stop.is_set():
            try:
                entry = await watcher.updates(timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            if entry is None:
                model.seeds_read.set()  # the end of the initial values
                continue
            try:
                instance_id = uuid.UUID(entry.key)
            except ValueError:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                model.seeds.pop(instance_id, None)
            else:
                model.seeds[instance_id] = msgspec.json.decode(entry.value, type=InstanceSeed).user_data.encode()
    finally:
        await watcher.stop()
