"""The metadata service's own read model, in memory, kept current from NATS.

Instances come from the `instance.*` events (token hash, hostname, project, tags; gone
when deleted); their user-data from a watch on the `nebula_userdata` bucket. A request
is answered from this memory alone — never by asking another service.

Each follower reads what it follows from the start into a fresh table and puts it in
place once it has caught up, then keeps it current; an event or a seed it cannot decode
is skipped and counted, never a crash. A follower that fails (NATS away, its stream or
bucket deleted or made anew) is started again by its `Follower`, after a backoff, and
reads everything again; `/healthz` fails while one is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import nats.errors
import nats.js.errors
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
    public_keys: tuple[str, ...] = ()


@dataclass
class Instances:
    """What the metadata service knows: `events_read` once the instances' history has been
    read, `seeds_read` once the user-data bucket's current values have."""

    by_id: dict[uuid.UUID, Record] = field(default_factory=dict)
    seeds: dict[uuid.UUID, bytes] = field(default_factory=dict)
    events_read: asyncio.Event = field(default_factory=asyncio.Event)
    seeds_read: asyncio.Event = field(default_factory=asyncio.Event)
    #: Events and seeds skipped because they could not be decoded (since their follower started).
    skipped_events: int = 0
    skipped_seeds: int = 0

    @property
    def ready(self) -> bool:
        """Both read: before that, a known instance could be served empty user-data, which
        cloud-init would take as the real thing on its first boot."""
        return self.events_read.is_set() and self.seeds_read.is_set()

    async def wait_ready(self) -> None:
        await asyncio.gather(self.events_read.wait(), self.seeds_read.wait())

    def apply(self, event: Event, by_id: dict[uuid.UUID, Record] | None = None) -> None:
        """Apply `event` to `by_id` (a table being read afresh), or to the one in place."""
        by_id = self.by_id if by_id is None else by_id
        if isinstance(event, InstanceCreated):
            by_id[event.id] = Record(
                event.id,
                event.metadata_token_hash,
                event.name,
                event.project_id,
                dict(event.tags),
                public_keys=tuple(event.public_keys),
            )
        elif isinstance(event, InstanceUpdated) and event.id in by_id:
            record = by_id[event.id]
            record.hostname, record.tags = event.name, dict(event.tags)
        elif isinstance(event, InstanceDeleted):
            by_id.pop(event.id, None)
            self.seeds.pop(event.id, None)

    def user_data(self, instance_id: uuid.UUID) -> bytes | None:
        return self.seeds.get(instance_id)


#: How often a follower checks that what it follows is still the stream it started on.
CHECK_EVERY = 2.0


class SourceLost(Exception):
    """The stream a follower reads was deleted, or made anew: what it read no longer holds."""


class _Source:
    """A followed stream, known by its creation time and checked every `CHECK_EVERY` s: a
    follower whose stream was deleted or made anew would otherwise wait forever, unaware."""

    def __init__(self, js: JetStreamContext, stream: str, created: object) -> None:
        self._js, self._stream, self._created = js, stream, created
        self._checked = time.monotonic()

    async def check(self) -> None:
        if time.monotonic() - self._checked < CHECK_EVERY:
            return
        try:
            created = (await self._js.stream_info(self._stream)).created
        except nats.js.errors.NotFoundError:
            raise SourceLost(f"stream {self._stream} was deleted") from None
        if created != self._created:
            raise SourceLost(f"stream {self._stream} was made anew")
        self._checked = time.monotonic()


def _no_one() -> None:
    pass


async def follow_events(
    js: JetStreamContext, model: Instances, stop: asyncio.Event, caught_up: Callable[[], None] = _no_one
) -> None:
    """Read every instance event from the start into a fresh table, put it in place once
    caught up (then call `caught_up`), and keep following."""
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.aggregate_events("instance"))
    source = _Source(js, subjects.EVENTS_STREAM, info.created)
    sub = await js.subscribe(
        subjects.aggregate_events("instance"),
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    table: dict[uuid.UUID, Record] = {}
    skipped = 0
    live = False

    def go_live() -> None:
        nonlocal live
        if not live:
            live = True
            model.by_id, model.skipped_events = table, skipped
            model.events_read.set()
            caught_up()

    if not info.state.messages:
        go_live()
    try:
        while not stop.is_set():
            await source.check()
            try:
                message = await sub.next_msg(timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                go_live()  # nothing pending: caught up
                continue
            try:
                event = decode_known(message.data)
            except msgspec.MsgspecError as err:
                event = None
                skipped += 1
                if live:
                    model.skipped_events = skipped
                log.warning(
                    "skipped an event that cannot be decoded seq=%d subject=%s: %s",
                    message.metadata.sequence.stream,
                    message.subject,
                    err,
                )
            if event is not None:
                model.apply(event, table)
            if message.metadata.num_pending == 0:
                go_live()
    finally:
        await _stop_following(sub.unsubscribe)


async def follow_seeds(
    js: JetStreamContext, model: Instances, stop: asyncio.Event, caught_up: Callable[[], None] = _no_one
) -> None:
    """Mirror the user-data bucket (puts add, deletes and purges remove): its current values
    are read into a fresh table, put in place at the end of them (then `caught_up` is called)."""
    info = await js.stream_info(f"KV_{subjects.USERDATA_BUCKET}")  # the stream that holds the bucket
    source = _Source(js, info.config.name or "", info.created)
    watcher = await (await js.key_value(subjects.USERDATA_BUCKET)).watchall()
    seeds: dict[uuid.UUID, bytes] = {}
    skipped = 0
    live = False
    try:
        while not stop.is_set():
            await source.check()
            try:
                entry = await watcher.updates(timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            if entry is None:  # the end of the initial values
                if not live:
                    live = True
                    model.seeds, model.skipped_seeds = seeds, skipped
                    model.seeds_read.set()
                    caught_up()
                continue
            try:
                instance_id = uuid.UUID(entry.key)
            except ValueError:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                seeds.pop(instance_id, None)
                continue
            try:
                seeds[instance_id] = msgspec.json.decode(entry.value, type=InstanceSeed).user_data.encode()
            except msgspec.MsgspecError as err:
                skipped += 1
                if live:
                    model.skipped_seeds = skipped
                log.warning("skipped a seed that cannot be decoded instance=%s: %s", instance_id, err)
    finally:
        await _stop_following(watcher.stop)


async def _stop_following(stop: Callable[[], Awaitable[None]]) -> None:
    """Unsubscribe; on a connection already closed there is nothing left to stop."""
    try:
        await stop()
    except nats.errors.Error as err:
        log.debug("could not unsubscribe: %s", err)


#: A follower: runs until `stop` is set, calling its second argument each time it has caught up.
Follow = Callable[[asyncio.Event, Callable[[], None]], Awaitable[None]]


class Follower:
    """Keeps one follower running. One that fails, or returns before it is told to stop,
    is logged and started again after a backoff (doubling from `first_delay` up to
    `max_delay` seconds, back to `first_delay` once a run has caught up). `failure` says
    why it is down, from a failure until a new run has caught up; None while it is well."""

    def __init__(self, name: str, follow: Follow, *, first_delay: float = 0.5, max_delay: float = 30.0) -> None:
        self.name = name
        self._follow = follow
        self._first_delay, self._max_delay = first_delay, max_delay
        self._delay = first_delay
        self.failure: str | None = None
        self.failures = 0

    def _caught_up(self) -> None:
        if self.failure is not None:
            log.info("follower %s is back after %d failures", self.name, self.failures)
        self.failure = None
        self._delay = self._first_delay

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._follow(stop, self._caught_up)
            except Exception as err:
                self.failure = f"{type(err).__name__}: {err}"
            else:
                if stop.is_set():
                    return
                self.failure = "stopped following"
            self.failures += 1
            log.error("follower %s is down, restarting in %.1fs: %s", self.name, self._delay, self.failure)
            try:
                await asyncio.wait_for(stop.wait(), self._delay)
            except TimeoutError:
                pass
            self._delay = min(self._delay * 2, self._max_delay)
