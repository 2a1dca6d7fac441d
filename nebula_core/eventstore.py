"""The event store: aggregates loaded from and saved to the `NEBULA_EVENTS` JetStream stream.

Guarantees, all enforced by the server rather than by this process:

- **Optimistic concurrency per aggregate.** An append carries
  `Nats-Expected-Last-Subject-Sequence`: the stream sequence of the aggregate's previous
  event (0 for a new aggregate). A writer that loaded a stale copy is refused and gets
  `ConcurrencyConflict`; it never overwrites or interleaves with the winner.
- **Retried appends are harmless.** `Nats-Msg-Id` is `<aggregate id>:<version>`, so an
  append repeated within the stream's duplicate window stores one event; and a retry
  whose first attempt landed is recognised by its identical stored payload, so it returns
  the original sequence instead of a conflict.
- **Order.** An aggregate's events are read back in append order from its own subject
  `nebula.evt.<kind>.<id>`.

Several events saved at once are appended one by one, each expecting the previous one's
sequence; if the process dies between two, a prefix is stored — each event is a complete
fact, and the retry (same message ids) completes the rest.

Writers change an aggregate through `EventStore.change`, the one load-apply-append loop:
it retries on a fresh copy after a conflict, and never decides on a stale one.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, NamedTuple, TypeVar

import nats.errors
import nats.js.errors
from eventsourcing.domain import Aggregate
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from nebula_core.contract import subjects
from nebula_core.contract.errors import ConcurrencyConflict, NotFound
from nebula_core.contract.events import Event, aggregate_of, decode_event, encode_event, event_type
from nebula_core.domain.codec import Codec

A = TypeVar("A", bound=Aggregate)

#: Histories up to this many events are read by direct gets, longer ones by a consumer.
DIRECT_READ_MAX = 32
#: JetStream's error code for a failed `Nats-Expected-Last-Subject-Sequence` check.
WRONG_LAST_SEQUENCE = 10071
#: Load-apply-append rounds `EventStore.change` makes before it lets a conflict through.
CHANGE_TRIES = 10


class StoredEvent(NamedTuple):
    """An event as it sits in the stream: with its stream sequence (its global position)."""

    seq: int
    event: Event


@dataclass(frozen=True)
class Changed(Generic[A]):
    """What `EventStore.change` did: the aggregate as saved, and the stream sequences of the
    events it appended (none when the change found nothing to record)."""

    aggregate: A
    sequences: list[int]

    @property
    def last_seq(self) -> int | None:
        """The stream sequence of the last event appended, None if none was."""
        return self.sequences[-1] if self.sequences else None


class EventStore:
    """Loads and saves aggregates; also reads raw histories for audit and projections."""

    def __init__(
        self,
        js: JetStreamContext,
        codec: Codec,
        *,
        stream: str = subjects.EVENTS_STREAM,
        timeout: float = 5.0,
        position_cache_size: int = 100_000,
    ) -> None:
        self._js = js
        self._codec = codec
        self._stream = stream
        self._timeout = timeout
        # (aggregate id, version) -> stream sequence. An immutable fact once stored, so the
        # cache never needs invalidating; it only saves a round trip on the next save.
        self._positions: OrderedDict[tuple[uuid.UUID, int], int] = OrderedDict()
        self._cache_size = position_cache_size

    # --- writing ------------------------------------------------------------------------

    async def save(self, aggregate: Aggregate, *, actor: str = "") -> list[int]:
        """Append the aggregate's pending events; returns their stream sequences.

        Raises `ConcurrencyConflict` if another writer appended since it was loaded.
        """
        pending = aggregate.collect_events()
        if not pending:
            return []
        wire = [self._codec.to_wire(e, actor=actor) for e in pending]
        return await self.append(wire)

    async def change(
        self,
        cls: type[A],
        aggregate_id: uuid.UUID,
        apply: Callable[[A], None],
        *,
        actor: str,
        tries: int = CHANGE_TRIES,
        expected_version: int | None = None,
        loaded: A | None = None,
    ) -> Changed[A]:
        """Load the aggregate, `apply` a command to it, append what the command recorded;
        after a concurrent append, load it again and apply again, up to `tries` times.

        Safe to repeat: `apply` always decides on the aggregate as stored, and its events are
        appended only if nothing was appended since that load (else it decides again on the
        fresh state), so no decision is lost, made twice or made on stale state; an `apply`
        that records nothing (the aggregate's commands ignore a repeat) appends nothing.
        What `apply` raises (`IllegalTransition`, `InsufficientCapacity`, ...) and `NotFound`
        propagate at once, as trying again would not change the answer.

        `expected_version` (a client's `If-Match`): no retry; a stale version raises
        `ConcurrencyConflict` naming the version given and the version stored.
        `loaded`: a copy the caller already holds (a cache), tried first instead of a load.
        Raises `ConcurrencyConflict` when every one of the `tries` met a concurrent writer.
        """
        kind = self._codec.kind_of(cls)
        for attempt in range(tries):
            if loaded is not None and attempt == 0:
                aggregate = loaded
            else:
                aggregate = await self.load(cls, aggregate_id)
            if expected_version is not None and aggregate.version != expected_version:
                raise self._stale(kind, aggregate_id, aggregate.version, expected_version)
            apply(aggregate)
            try:
                return Changed(aggregate, await self.save(aggregate, actor=actor))
            except ConcurrencyConflict as conflict:
                if expected_version is not None:
                    last = await self._last(kind, aggregate_id)
                    stored = last.event.version if last is not None else 0
                    raise self._stale(kind, aggregate_id, stored, expected_version) from conflict
        raise ConcurrencyConflict(f"{kind} {aggregate_id} kept changing under {tries} tries")

    @staticmethod
    def _stale(kind: str, aggregate_id: uuid.UUID, stored: int, expected: int) -> ConcurrencyConflict:
        return ConcurrencyConflict(f"{kind} {aggregate_id} is at version {stored}, not {expected}")

    async def append(self, events: list[Event]) -> list[int]:
        """Append wire events of one aggregate, versions consecutive; see the module doc."""
        first = events[0]
        kind = aggregate_of(first)
        subject = subjects.event_subject(kind, first.id)
        expected = await self._sequence_of(kind, first.id, first.version - 1)
        sequences = []
        for event in events:
            if event.id != first.id:
                raise ValueError("one append holds the events of one aggregate")
            expected = await self._publish(subject, event, expected)
            sequences.append(expected)
        return sequences

    async def _publish(self, subject: str, event: Event, expected_seq: int) -> int:
        headers = {
            "Nats-Msg-Id": f"{event.id}:{event.version}",
            "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
            subjects.HEADER_EVENT_TYPE: event_type(event),
            subjects.HEADER_ACTOR: event.actor,
        }
        try:
            ack = await self._js.publish(
                subject, encode_event(event), timeout=self._timeout, stream=self._stream, headers=headers
            )
        except nats.js.errors.APIError as err:
            if err.err_code != WRONG_LAST_SEQUENCE:
                raise
            # JetStream checks the expected sequence before deduplicating, so a retry of an
            # append that did land (its ack was lost) is refused too. It is ours if the
            # event stored at this version is byte for byte the one we are appending.
            stored = await self._stored_version(subject, event)
            if stored is None:
                raise ConcurrencyConflict(f"{subject} changed since version {event.version - 1} was read") from err
            return stored
        self._remember(event.id, event.version, ack.seq)
        return ack.seq

    async def _stored_version(self, subject: str, event: Event) -> int | None:
        """The sequence of `event` if the stream already holds exactly it, else None."""
        kind = subject.split(".")[2]
        payload = encode_event(event)
        for stored in await self.history(kind, event.id):
            if stored.event.version == event.version:
                return stored.seq if encode_event(stored.event) == payload else None
        return None

    async def _sequence_of(self, kind: str, aggregate_id: uuid.UUID, version: int) -> int:
        """The stream sequence of the aggregate's event `version` (0 for version 0)."""
        if version == 0:
            return 0
        cached = self._positions.get((aggregate_id, version))
        if cached is not None:
            return cached
        last = await self._last(kind, aggregate_id)
        if last is None or last.event.version != version:
            raise ConcurrencyConflict(
                f"{kind} {aggregate_id} is at version {last.event.version if last else 0}, not {version}"
            )
        return last.seq

    def _remember(self, aggregate_id: uuid.UUID, version: int, seq: int) -> None:
        self._positions[(aggregate_id, version)] = seq
        self._positions.move_to_end((aggregate_id, version))
        while len(self._positions) > self._cache_size:
            self._positions.popitem(last=False)

    # --- reading ------------------------------------------------------------------------

    async def load(self, cls: type[A], aggregate_id: uuid.UUID, *, at: datetime | None = None) -> A:
        """The aggregate as of now (or as it was at `at`); `NotFound` if it never existed."""
        kind = self._codec.kind_of(cls)
        history = await self.history(kind, aggregate_id)
        if at is not None:
            history = [h for h in history if h.event.at <= at]
        if not history:
            raise NotFound(f"{kind} {aggregate_id} not found")
        aggregate = self._codec.replay([h.event for h in history])
        if not isinstance(aggregate, cls):
            raise NotFound(f"{kind} {aggregate_id} not found")
        return aggregate

    async def version(self, cls: type[Aggregate], aggregate_id: uuid.UUID) -> int:
        """The aggregate's version as stored (one direct get); 0 if it never existed."""
        last = await self._last(self._codec.kind_of(cls), aggregate_id)
        return 0 if last is None else last.event.version

    async def history(self, kind: str, aggregate_id: uuid.UUID | str) -> list[StoredEvent]:
        """Every event of one aggregate, in order, with its stream sequence."""
        last = await self._last(kind, aggregate_id)
        if last is None:
            return []
        if last.event.version == 1:
            return [last]
        subject = subjects.event_subject(kind, aggregate_id)
        if last.event.version <= DIRECT_READ_MAX:
            events = await self._read_direct(subject, last)
        else:
            events = await self._read_consumer(subject, last)
        for stored in events:
            self._remember(stored.event.id, stored.event.version, stored.seq)
        return events

    async def _read_direct(self, subject: str, last: StoredEvent) -> list[StoredEvent]:
        """A short history, one direct get per event: no consumer is created, so many
        processes loading many small aggregates put no load on the server's consumers."""
        events: list[StoredEvent] = []
        seq = 1
        while True:
            raw = await self._js.get_msg(self._stream, seq=seq, subject=subject, next=True, direct=True)
            assert raw.seq is not None and raw.data is not None
            events.append(StoredEvent(raw.seq, decode_event(raw.data)))
            if raw.seq >= last.seq:
                return events
            seq = raw.seq + 1

    async def _read_consumer(self, subject: str, last: StoredEvent) -> list[StoredEvent]:
        """A long history through an ordered consumer, deleted as soon as it is read."""
        sub = await self._js.subscribe(
            subject,
            stream=self._stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=10.0,
        )
        events: list[StoredEvent] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=self._timeout)
                seq = msg.metadata.sequence.stream
                events.append(StoredEvent(seq, decode_event(msg.data)))
                if seq >= last.seq:
                    return events
        finally:
            consumer = getattr(sub, "_consumer", None)
            await sub.unsubscribe()
            if consumer:
                with contextlib.suppress(nats.errors.Error):
                    await self._js.delete_consumer(self._stream, consumer)

    async def _last(self, kind: str, aggregate_id: uuid.UUID | str) -> StoredEvent | None:
        subject = subjects.event_subject(kind, aggregate_id)
        try:
            raw = await self._js.get_last_msg(self._stream, subject)
        except nats.js.errors.NotFoundError:
            return None
        assert raw.seq is not None and raw.data is not None
        return StoredEvent(raw.seq, decode_event(raw.data))
