"""Crash-and-resume of the projector against real NATS and real Postgres.

A real `Projector` works through a stream of a few hundred events in small batches and is
killed again and again, each time in one of the windows the projector's design must
survive (see `nebula_core.projections.projector`):

- in the middle of a batch's transaction: a test transaction holds an uncommitted row with
  the key of a user a later event creates, so the projector's INSERT waits on it inside its
  batch; the projector is killed there;
- after a batch's commit and before its acknowledgements, and part-way through them: the
  message's ack step is where the process dies (only that step is wrapped, through
  `Projector._handle`; the commit, the acks that happen and the redeliveries are real);
- at random moments, one or two replicas, while new events keep arriving.

Then a clean replica finishes the stream. Every committed write to a read-model row is logged
by a trigger that this test adds to its own database, so "exactly once" is checked on
what Postgres really committed: each stream sequence 1..last is applied in exactly one
committed transaction. The tables must also equal a replay from sequence 1, and every
aggregate's row must carry its last event's version and sequence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter

import asyncpg
from nats.js import JetStreamContext

from nebula_core.contract import subjects, topology
from nebula_core.eventstore import EventStore
from nebula_core.projections.checkpoint import checkpoint
from nebula_core.projections.projector import Projector, replay
from tests.integration.test_projector import (
    CODEC,
    assert_every_table_has_rows,
    assert_rows_match,
    dump,
    last_seq,
    run_projectors,
    seed_everything,
)
from tests.support import eventually

BATCH = 8
#: The shipped consumer waits 30 s before redelivering what a dead replica held; the test
#: shortens that on its own server so that a dozen crashes fit in a few seconds.
ACK_WAIT = 0.5
#: Tables whose rows carry `last_seq`: every event writes exactly one row among them.
AGGREGATE_TABLES = ("projects", "users", "images", "nodes", "instances", "keypairs")


class Crash(Exception):
    """Stands for the projector's process dying."""


@dataclasses.dataclass
class Fuse:
    """Lets `acks` acknowledgements through, then kills the projector at the next one."""

    pool: asyncpg.Pool
    acks: int
    #: (sequence whose ack killed the projector, checkpoint at that moment)
    blown_at: tuple[int, int] | None = None
    #: acknowledgements of events the checkpoint did not yet include: must stay empty
    early: list[tuple[int, int]] = dataclasses.field(default_factory=list)


class FusedMessage:
    """A real delivered message whose ack may be where the process dies."""

    def __init__(self, message, fuse: Fuse) -> None:  # type: ignore[no-untyped-def]
        self._message = message
        self._fuse = fuse

    @property
    def metadata(self):  # type: ignore[no-untyped-def]
        return self._message.metadata

    @property
    def subject(self) -> str:
        return self._message.subject

    @property
    def data(self) -> bytes:
        return self._message.data

    async def ack(self) -> None:
        seq = self._message.metadata.sequence.stream
        projected = await checkpoint(self._fuse.pool)
        if projected < seq:
            self._fuse.early.append((seq, projected))
        if self._fuse.acks == 0:
            self._fuse.blown_at = (seq, projected)
            raise Crash(f"killed before acknowledging seq {seq}")
        self._fuse.acks -= 1
        await self._message.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self._message.nak(delay=delay)


class AckCrashingProjector(Projector):
    """The real projector, its messages' ack step wrapped by a fuse."""

    def __init__(self, js: JetStreamContext, pool: asyncpg.Pool, fuse: Fuse, **kw: int) -> None:
        super().__init__(js, pool, **kw)
        self._fuse = fuse

    async def _handle(self, messages: list) -> None:  # type: ignore[type-arg]
        await super()._handle([FusedMessage(m, self._fuse) for m in messages])


async def shorten_ack_wait(js: JetStreamContext) -> None:
    (declared,) = [c for s, c in topology.declare().consumers if c.durable_name == subjects.PROJECTOR_CONSUMER]
    await js.delete_consumer(subjects.EVENTS_STREAM, subjects.PROJECTOR_CONSUMER)
    await js.add_consumer(subjects.EVENTS_STREAM, dataclasses.replace(declared, ack_wait=ACK_WAIT))


async def log_committed_writes(pool: asyncpg.Pool) -> None:
    await pool.execute(
        """CREATE TABLE test_applied (tbl text NOT NULL, seq bigint NOT NULL, tx bigint NOT NULL);
           CREATE FUNCTION test_log_applied() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               INSERT INTO test_applied VALUES (TG_TABLE_NAME, NEW.last_seq, txid_current());
               RETURN NULL;
           END $$;"""
    )
    for table in AGGREGATE_TABLES:
        await pool.execute(
            f"CREATE TRIGGER test_log_applied AFTER INSERT OR UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION test_log_applied()"
        )


async def ack_floor(js: JetStreamContext) -> int:
    info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.PROJECTOR_CONSUMER)
    return info.ack_floor.stream_seq if info.ack_floor else 0


async def kill(task: asyncio.Task) -> BaseException | None:  # type: ignore[type-arg]
    """Cancel a projector wherever it is, as often as it takes; returns how it ended.

    One cancel is not always enough: on Python 3.11, nats-py's `Subscription.next_msg` awaits
    an inner task running `asyncio.wait_for(queue.get())`, and when the message arrives as the
    cancel does, that `wait_for` returns the message and the cancellation is lost (the task
    goes on fetching). A killed process cannot ignore its death, so cancel until it is done."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not task.done():
        assert loop.time() < deadline, "a cancelled projector did not stop"
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    return None if task.cancelled() else task.exception()


def died_of_the_kill(ended: BaseException | None) -> bool:
    """A killed projector ends cancelled or with an error of its connections' teardown, never
    because the database refused a write (a double insert would be one) or of a fuse."""
    if ended is None or isinstance(ended, asyncpg.QueryCanceledError):
        return True
    return not isinstance(ended, asyncpg.PostgresError | Crash)


async def waiting_on_our_row(pool: asyncpg.Pool) -> bool:
    """A projector's INSERT waits on the test's uncommitted row (asked outside any transaction:
    inside one, pg_stat_activity is a snapshot)."""
    return bool(
        await pool.fetchval(
            """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO users%'"""
        )
    )


async def test_a_projector_killed_again_and_again_applies_every_event_exactly_once(
    js: JetStreamContext, pool: asyncpg.Pool, pg_dsn: str
) -> None:
    await shorten_ack_wait(js)
    await log_committed_writes(pool)
    store = EventStore(js, CODEC)
    seeded = await seed_everything(store, copies=4)
    assert await last_seq(js) >= 30 * BATCH

    # 1. Killed inside a batch's transaction, some of the batch already written in it. With the
    #    whole stream available, fetches return full batches: 1-8, 9-16, ...; the victim is a
    #    user created well into the stream and not near the start of its batch.
    victim = next(
        u for u in seeded.users if seeded.first_seq[u.id] > 12 * BATCH and (seeded.first_seq[u.id] - 1) % BATCH >= 2
    )
    victim_seq = seeded.first_seq[victim.id]
    blocker = await asyncpg.connect(pg_dsn)
    task = None
    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute(
            "INSERT INTO users (id, name, token_hash, created_at, version, last_seq) "
            "VALUES ($1, 'blocker', 'blocker', now(), 0, 0)",
            victim.id,
        )
        task = asyncio.create_task(Projector(js, pool, batch_size=BATCH).run(asyncio.Event()))
        await eventually(lambda: waiting_on_our_row(pool))
        before = await checkpoint(pool)
        assert 0 < before < victim_seq - 1  # events before the victim are written, uncommitted, in the batch
        ended = await kill(task)
        await held.rollback()
    finally:
        if task is not None and not task.done():
            await kill(task)
        await blocker.close()
    assert died_of_the_kill(ended)
    assert await checkpoint(pool) == before
    assert await pool.fetchval("SELECT max(seq) FROM test_applied") == before  # nothing of the killed batch
    assert await pool.fetchval("SELECT count(*) FROM users WHERE id = $1", victim.id) == 0
    assert await ack_floor(js) <= before

    # 2. Killed after a batch's commit: before its first ack, and part-way through the acks.
    for acks in (0, 3, BATCH + 2, 2 * BATCH + 5):
        fuse = Fuse(pool, acks)
        task = asyncio.create_task(AckCrashingProjector(js, pool, fuse, batch_size=BATCH).run(asyncio.Event()))
        done, _ = await asyncio.wait({task}, timeout=15)
        assert done, f"the projector never reached ack number {acks + 1}"
        assert isinstance(task.exception(), Crash), task.exception()
        assert fuse.blown_at is not None and not fuse.early
        seq, projected = fuse.blown_at
        assert projected >= seq  # the event being acknowledged was committed first
        assert await checkpoint(pool) > await ack_floor(js)  # committed, never acknowledged
        assert await checkpoint(pool) <= await last_seq(js)

    # 3. Killed at random moments, one or two replicas at a time, while events keep coming.
    rng = random.Random(1729)
    progress = []
    for round_ in range(6):
        start = await checkpoint(pool)
        writer = asyncio.create_task(seed_everything(store, tag=f"late-{round_}-"))
        _, tasks = await run_projectors(js, pool, replicas=1 + round_ % 2, batch_size=BATCH)
        await asyncio.sleep(rng.uniform(0.2, 0.9))
        for task in tasks:
            assert died_of_the_kill(await kill(task))
        assert await checkpoint(pool) >= await ack_floor(js)
        progress.append(await checkpoint(pool) - start)
        seeded.merge(await writer)
    assert sum(progress) > 0  # restarts resumed where the kills left off

    # 4. Two clean replicas (the shipped batch size) finish the stream and acknowledge
    # everything; the margin is for a loaded machine.
    target = await last_seq(js)
    stop, tasks = await run_projectors(js, pool, replicas=2)
    try:
        await eventually(lambda: _all_done(js, pool, target), timeout=30)
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results

    # Exactly once, as Postgres committed it: each sequence applied in one committed transaction
    # (a user's deletion removes its row, so it leaves no write to log; the rows are gone).
    applied = await pool.fetch("SELECT seq, tx FROM test_applied ORDER BY seq")
    assert seeded.rowless_seqs
    assert Counter(r["seq"] for r in applied) == Counter(set(range(1, target + 1)) - seeded.rowless_seqs)
    by_tx: dict[int, list[int]] = {}
    for r in applied:
        by_tx.setdefault(r["tx"], []).append(r["seq"])
    assert len(by_tx) >= 20  # many small batches, one transaction each
    # gapless runs, but for the deletions that left no row
    assert all(set(range(seqs[0], seqs[-1] + 1)) - set(seqs) <= seeded.rowless_seqs for seqs in by_tx.values())
    info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.PROJECTOR_CONSUMER)
    assert info.delivered.consumer_seq > target  # deliveries beyond one per event: what the crashes left came back

    await assert_rows_match(pool, seeded, exact=True)
    await assert_every_table_has_rows(pool)
    live = await dump(pool)
    assert await replay(js, pool) == target
    rebuilt = await dump(pool)
    for table in live:
        assert live[table] == rebuilt[table], table
    assert await checkpoint(pool) == target


async def _all_done(js: JetStreamContext, pool: asyncpg.Pool, target: int) -> bool:
    if await checkpoint(pool) < target:
        return False
    info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.PROJECTOR_CONSUMER)
    return info.num_pending == 0 and info.num_ack_pending == 0
