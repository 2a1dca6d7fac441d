"""The write side as the API uses it: append events, publish commands, and wait until the
read models have caught up, so that a client reads its own writes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TypeVar

import asyncpg
from eventsourcing.domain import Aggregate
from nats.js import JetStreamContext

from nebula_core.contract import subjects
from nebula_core.contract.commands import Command
from nebula_core.eventstore import EventStore
from nebula_core.messaging import publish_command
from nebula_core.projections.checkpoint import checkpoint

A = TypeVar("A", bound=Aggregate)

#: How long a write waits for the projector before answering anyway.
PROJECTION_WAIT_S = 5.0


class Writer:
    def __init__(self, store: EventStore, js: JetStreamContext, pool: asyncpg.Pool) -> None:
        self.store = store
        self.js = js
        self.pool = pool

    async def save(self, aggregate: Aggregate, *, actor: str) -> int:
        """Append the aggregate's pending events; returns the last one's stream sequence."""
        sequences = await self.store.save(aggregate, actor=actor)
        return sequences[-1] if sequences else 0

    async def change(
        self,
        cls: type[A],
        aggregate_id: uuid.UUID,
        apply: Callable[[A], None],
        *,
        actor: str,
        expected_version: int | None = None,
        attempts: int = 5,
    ) -> tuple[A, int]:
        """`EventStore.change`; returns the aggregate and the last appended event's stream
        sequence (0 when the change recorded nothing).

        With `expected_version` (from `If-Match`) there is no retry: a stale version is the
        caller's conflict to resolve, and it gets `ConcurrencyConflict`.
        """
        changed = await self.store.change(
            cls, aggregate_id, apply, actor=actor, tries=attempts, expected_version=expected_version
        )
        return changed.aggregate, changed.last_seq or 0

    async def publish(self, command: Command) -> None:
        """Put a command on the work queue; its `command_id` makes a repeat harmless."""
        await publish_command(self.js, command)

    async def projected(
        self, seq: int, timeout: float = PROJECTION_WAIT_S, using: asyncpg.Connection | None = None
    ) -> bool:
        """Wait until the read models include `seq`; False if they did not within `timeout`.

        `using`: a connection the caller already holds (so a caller holding a lock does
        not need a second connection from the pool).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.005
        while await checkpoint(using or self.pool) < seq:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    async def stream_head(self) -> int:
        info = await self.js.stream_info(subjects.EVENTS_STREAM)
        return int(info.state.last_seq)
