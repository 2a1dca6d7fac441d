"""The projector: `NEBULA_EVENTS` → Postgres read models, exactly once, in stream order.

Every batch is applied in one transaction that first locks the projection's checkpoint
row, skips what the checkpoint already covers, applies only the run of events that
continues it without a gap, and moves the checkpoint in the same commit. Messages are
acknowledged after the commit. Hence:

- a crash before the commit applies nothing (the messages are redelivered);
- a crash after the commit but before the acks applies nothing twice (the redelivered
  events are at or below the checkpoint and are skipped);
- several replicas sharing the durable consumer cannot apply out of order, nor wait on
  one another: a batch that does not continue the checkpoint (earlier events are with
  another replica, or wait for redelivery after a crash) is preceded, in the same
  transaction, by the missing events read straight from the stream. Those, when they are
  delivered, are at or below the checkpoint and only acknowledged.

Each event is decoded and applied inside a savepoint of that transaction. One that cannot
be (see `nebula_core.projections.parked`) is rolled back to its savepoint, so nothing of it
is half-applied, and parked: kept in `parked_events` with its error while the checkpoint
moves past it. One bad event never stops projection; a failure of the database or the
connection still fails the whole batch, which is retried.

`replay()` rebuilds every read model from sequence 1 in one transaction, holding the same
lock, so readers see the old tables until the rebuilt ones commit. It parks the same way,
after emptying `parked_events`: a replay tries every parked event again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from nebula_core.contract import subjects
from nebula_core.contract.events import Event, decode_known
from nebula_core.projections import parked
from nebula_core.projections.checkpoint import checkpoint, lock_checkpoint, save_checkpoint
from nebula_core.projections.handlers import HANDLERS, TABLES
from nebula_core.projections.parked import UnknownEventType, parkable

log = logging.getLogger("nebula.projector")


@dataclass(frozen=True)
class RawEvent:
    """An event as the stream holds it: decoded only inside its savepoint, so that one
    which cannot be decoded is parked like one which cannot be applied."""

    subject: str
    data: bytes


@dataclass(frozen=True)
class BatchResult:
    applied: int
    #: Sequences that are done (applied now or before, or parked): acknowledge them.
    done: frozenset[int]
    checkpoint: int
    #: Of `applied`, the events parked instead of applied.
    parked: int = 0


def _decode(data: bytes) -> Event:
    event = decode_known(data)
    if event is None:
        kind = msgspec.json.decode(data, type=dict).get("type")
        raise UnknownEventType(f"unknown event type {kind!r}")
    return event


async def _apply(conn: asyncpg.Connection, seq: int, raw: RawEvent) -> bool:
    """Apply the event at `seq` in a savepoint; park it if it cannot be. True: applied."""
    try:
        async with conn.transaction():
            event = _decode(raw.data)
            handler = HANDLERS.get(type(event))
            if handler is not None:
                await handler(conn, event, seq)
    except Exception as err:
        if not parkable(err):
            raise
        error = parked.describe(err)
        log.error("parked event seq=%d subject=%s: %s", seq, parked.storable(raw.subject), error)
        await parked.park(conn, seq, raw.subject, raw.data, error)
        return False
    return True


#: The most events one batch reads from the stream to close a gap before it.
MAX_GAP_FILL = 10_000

Fill = Callable[[list[int]], Awaitable[dict[int, RawEvent]]]


async def apply_batch(
    conn: asyncpg.Connection, batch: list[tuple[int, RawEvent]], fill: Fill | None = None
) -> BatchResult:
    """Apply what continues the checkpoint, in one transaction; see the module docstring.
    `fill` reads the events of the given sequences from the stream, to close the gaps
    between the checkpoint and the batch; without it, a batch stops at its first gap."""
    async with conn.transaction():
        last = await lock_checkpoint(conn)
        done = {seq for seq, _ in batch if seq <= last}
        if fill is not None and batch:
            have = {seq for seq, _ in batch}
            top = min(max(have), last + MAX_GAP_FILL)
            missing = [seq for seq in range(last + 1, top + 1) if seq not in have]
            if missing:
                found = await fill(missing)
                batch = [*batch, *found.items()]
        applied = set_aside = 0
        for seq, raw in sorted(batch, key=lambda item: item[0]):
            if seq <= last:
                continue
            if seq != last + 1:
                break  # a gap: an earlier event is still with another replica
            if not await _apply(conn, seq, raw):
                set_aside += 1
            last = seq
            done.add(seq)
            applied += 1
        if applied:
            await save_checkpoint(conn, last)
    return BatchResult(applied, frozenset(done), last, set_aside)


class Projector:
    """One replica: pulls batches from the shared durable consumer and applies them."""

    def __init__(self, js: JetStreamContext, pool: asyncpg.Pool, *, batch_size: int = 256) -> None:
        self._js = js
        self._pool = pool
        self._batch_size = batch_size

    async def _fill(self, seqs: list[int]) -> dict[int, RawEvent]:
        """The events at `seqs`, read straight from the stream (a sequence that is not
        there any more is left out, and the batch stops before it)."""
        found: dict[int, RawEvent] = {}
        for seq in seqs:
            try:
                raw = await self._js.get_msg(subjects.EVENTS_STREAM, seq=seq, direct=True)
            except nats.js.errors.NotFoundError:
                log.warning("event seq=%d is not in the stream", seq)
                break
            found[seq] = RawEvent(raw.subject or "", raw.data or b"")
        return found

    async def run(self, stop: asyncio.Event) -> None:
        await self._catch_up_after_a_lost_database()
        sub = await self._js.pull_subscribe_bind(subjects.PROJECTOR_CONSUMER, stream=subjects.EVENTS_STREAM)
        log.info("projector consuming stream=%s consumer=%s", subjects.EVENTS_STREAM, subjects.PROJECTOR_CONSUMER)
        try:
            while not stop.is_set():
                try:
                    messages = await sub.fetch(self._batch_size, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                await self._handle(messages)
        finally:
            await sub.unsubscribe()

    async def _catch_up_after_a_lost_database(self) -> None:
        """Postgres was emptied or replaced, but the consumer had moved on: rebuild by replay."""
        info = await self._js.consumer_info(subjects.EVENTS_STREAM, subjects.PROJECTOR_CONSUMER)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        if await checkpoint(self._pool) < (floor or 0):
            log.warning("read models are behind the consumer's ack floor seq=%d: replaying", floor)
            await replay(self._js, self._pool)

    async def _handle(self, messages: list[Msg]) -> None:
        batch = [(m.metadata.sequence.stream, RawEvent(m.subject, m.data)) for m in messages]
        async with self._pool.acquire() as conn:
            result = await apply_batch(conn, batch, self._fill)
        for message, (seq, _) in zip(messages, batch, strict=True):
            if seq in result.done:
                await message.ack()
            else:
                await message.nak(delay=0.2)
        if result.applied:
            log.info(
                "applied events count=%d parked=%d checkpoint=%d", result.applied, result.parked, result.checkpoint
            )


async def replay(js: JetStreamContext, pool: asyncpg.Pool, *, batch_size: int = 1000) -> int:
    """Rebuild every read model from stream sequence 1; returns the sequence it reached."""
    info = await js.stream_info(subjects.EVENTS_STREAM)
    last = info.state.last_seq
    async with pool.acquire() as conn, conn.transaction():
        await lock_checkpoint(conn)
        for table in TABLES:  # DELETE, not TRUNCATE: readers keep the old rows, unblocked, until the commit
            await conn.execute(f"DELETE FROM {table}")
        await parked.clear(conn)
        await save_checkpoint(conn, 0)
        set_aside = await _replay_into(js, conn, last, batch_size) if last else 0
        await save_checkpoint(conn, last)
    log.info("replayed read models up to seq=%d parked=%d", last, set_aside)
    return int(last)


async def _replay_into(js: JetStreamContext, conn: asyncpg.Connection, last: int, batch_size: int) -> int:
    """Apply every event up to `last`; returns how many were parked."""
    sub = await js.subscribe(
        subjects.EVENTS_ALL,
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        pending_msgs_limit=batch_size * 4,
    )
    set_aside = 0
    try:
        while True:
            message = await sub.next_msg(timeout=10.0)
            seq = message.metadata.sequence.stream
            if not await _apply(conn, seq, RawEvent(message.subject, message.data)):
                set_aside += 1
            if seq >= last:
                return set_aside
    finally:
        await sub.unsubscribe()
