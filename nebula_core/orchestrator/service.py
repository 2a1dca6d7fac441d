"""`nebula orchestrator`: the NATS side of placement and lifecycle, on FastStream.

- One durable pull consumer (`orchestrator` on `NEBULA_COMMANDS`), shared by every
  replica. A command is acked only after its outcome is recorded; a handler that hits a
  transient failure (a live node that did not answer, an append that kept conflicting)
  naks it for redelivery, and a command that is not a command is terminated. While a
  command runs, its ack deadline is extended, so a slow node does not cause a second
  delivery; a killed orchestrator's unacked commands go to another replica after it.
- A watch on the `nebula_nodes` heartbeat bucket keeps the set of live nodes.
- Node agents' registrations and questions about their claims (`registrar`).
- A reconciler (Postgres read models) re-drives what a crash or an outage left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import cast

import asyncpg
import msgspec
from faststream import AckPolicy
from faststream.exceptions import NackMessage
from faststream.nats import JStream, KvWatch, NatsBroker, NatsMessage, PullSub
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from nebula_core import nats_client
from nebula_core.config import Settings
from nebula_core.contract import commands, subjects
from nebula_core.contract.errors import ConcurrencyConflict, NodeUnavailable, NotFound
from nebula_core.contract.kv import Heartbeat
from nebula_core.domain import AGGREGATES
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from nebula_core.messaging import NodeClient, make_broker
from nebula_core.orchestrator.fleet import Fleet
from nebula_core.orchestrator.lifecycle import ACTOR, Lifecycle
from nebula_core.orchestrator.liveness import Liveness
from nebula_core.orchestrator.reconciler import Reconciler
from nebula_core.orchestrator.registrar import declare_node_answers
from nebula_core.projections import database

log = logging.getLogger("nebula.orchestrator")

#: Commands handled at once by one replica (each is mostly waiting on NATS or a node).
WORKERS = 16
#: Redelivery delay after a transient failure.
RETRY_DELAY_S = 2.0
#: After this many deliveries a command that keeps failing is given up (and logged).
MAX_DELIVERIES = 20

_heartbeat = msgspec.json.Decoder(Heartbeat)


class Orchestrator:
    def __init__(self, settings: Settings, *, pool: asyncpg.Pool | None = None, workers: int = WORKERS) -> None:
        self.settings = settings
        self.pool = pool
        self.broker: NatsBroker = make_broker(settings.nats_url, name="orchestrator")
        self._declare(self.broker, workers)
        self._tasks: list[asyncio.Task[None]] = []
        self.lifecycle: Lifecycle | None = None
        self.liveness: Liveness | None = None
        self.fleet: Fleet | None = None
        self._keepalive_every = 10.0

    def _declare(self, broker: NatsBroker, workers: int) -> None:
        @broker.subscriber(
            subjects.COMMANDS_ALL,
            stream=JStream(subjects.COMMANDS_STREAM, declare=False),
            durable=subjects.ORCHESTRATOR_CONSUMER,
            pull_sub=PullSub(batch_size=workers, timeout=1.0),
            inbox_prefix=nats_client.pull_inbox(self.settings.nats_url),
            max_workers=workers,
            ack_policy=AckPolicy.REJECT_ON_ERROR,
            title="orchestrator/commands",
            description="Placement and lifecycle commands, shared by every orchestrator replica.",
        )
        async def on_command(command: commands.AnyCommand, msg: NatsMessage) -> None:  # type: ignore[valid-type]
            await self.handle(command, msg)

        declare_node_answers(broker, lambda: self.fleet)

        @broker.subscriber(
            "*",
            kv_watch=KvWatch(subjects.NODES_BUCKET, declare=False),
            title="orchestrator/heartbeats",
            description="Node heartbeats: a node is live while its key exists.",
        )
        async def on_heartbeat(msg: NatsMessage) -> None:
            # Raw entries: an expiry marker has no body to decode, only its operation.
            entry = cast(KeyValue.Entry, msg.raw_message)
            await self.heartbeat(entry.key, entry.operation, entry.value or b"")

    # --- lifetime ----------------------------------------------------------------------

    async def start(self) -> None:
        nc = await self.broker.connect()
        js = nc.jetstream()
        store = EventStore(js, Codec(*AGGREGATES))
        self.fleet = Fleet(store, actor=ACTOR)
        nodes = NodeClient(nc, timeout=self.settings.node_timeout, tries=self.settings.node_retries)
        self.lifecycle = Lifecycle(self.settings, store, js, self.fleet, nodes)
        self.liveness = Liveness(self.fleet, self.lifecycle, js, grace=self.settings.evacuation_grace)
        consumer = await js.consumer_info(subjects.COMMANDS_STREAM, subjects.ORCHESTRATOR_CONSUMER)
        self._keepalive_every = max(0.5, (consumer.config.ack_wait or 30.0) / 3)
        # Know the live nodes before taking the first command: a restarted replica with
        # commands waiting would otherwise place them on an empty fleet.
        live = await self._load_heartbeats(js)
        await self.broker.start()
        if self.pool is not None:
            reconciler = Reconciler(self.settings, self.pool, js, self.fleet, self.liveness)
            self._tasks.append(asyncio.create_task(reconciler.run(), name="reconciler"))
        log.info(
            "orchestrator started: strategy=%s grace=%.0fs, %d live nodes",
            self.settings.placement_strategy,
            self.settings.evacuation_grace,
            live,
        )

    async def _load_heartbeats(self, js: JetStreamContext) -> int:
        """The heartbeats in the bucket now (the watch delivers them again, harmlessly)."""
        bucket = await js.key_value(subjects.NODES_BUCKET)
        watcher = await bucket.watchall()
        count = 0
        try:
            async for entry in watcher:
                if entry is None:  # the initial values are all delivered
                    break
                await self.heartbeat(entry.key, entry.operation, entry.value or b"")
                count += entry.operation is None
        finally:
            await watcher.stop()
        return count

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.liveness is not None:
            await self.liveness.close()
        await self.broker.stop()

    # --- handlers ----------------------------------------------------------------------

    async def handle(self, command: commands.Command, msg: NatsMessage) -> None:
        assert self.lifecycle is not None
        handler = self._handlers()[type(command)]
        if isinstance(command, commands.ReportDomain) and msg.raw_message.subject != subjects.report_subject(
            command.node_id
        ):
            # Only node X may publish on X's report subject: a report naming another node
            # is a node speaking for one it is not, and is not believed.
            log.warning(
                "command=%s instance=%s report naming node %s arrived on %s: dropped",
                command.command_id,
                command.instance_id,
                command.node_id,
                msg.raw_message.subject,
            )
            return
        deliveries = msg.raw_message.metadata.num_delivered
        keepalive = asyncio.create_task(_keep_alive(msg, self._keepalive_every))
        try:
            await handler(command)
        except NotFound as gone:
            log.warning("command=%s instance=%s dropped: %s", command.command_id, command.instance_id, gone)
        except (NodeUnavailable, ConcurrencyConflict) as transient:
            if deliveries >= MAX_DELIVERIES:
                log.error(
                    "command=%s instance=%s given up after %d deliveries: %s",
                    command.command_id,
                    command.instance_id,
                    deliveries,
                    transient,
                )
                return
            log.warning("command=%s instance=%s retrying: %s", command.command_id, command.instance_id, transient)
            raise NackMessage(delay=RETRY_DELAY_S) from transient
        except Exception as unexpected:  # a timeout of NATS or Postgres, or a bug: retried all the same
            if deliveries >= MAX_DELIVERIES:
                log.exception(
                    "command=%s instance=%s given up after %d deliveries",
                    command.command_id,
                    command.instance_id,
                    deliveries,
                )
                return
            log.exception("command=%s instance=%s failed; retrying", command.command_id, command.instance_id)
            raise NackMessage(delay=RETRY_DELAY_S) from unexpected
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    def _handlers(self) -> dict[type[commands.Command], Callable[[commands.Command], Awaitable[None]]]:
        lc = self.lifecycle
        assert lc is not None
        return {
            commands.PlaceInstance: lambda c: lc.place(c.instance_id),
            commands.StartInstance: lc.start,  # type: ignore[dict-item]
            commands.StopInstance: lc.stop,  # type: ignore[dict-item]
            commands.RebootInstance: lc.reboot,  # type: ignore[dict-item]
            commands.DeleteInstance: lambda c: lc.delete(c.instance_id),
            commands.EvacuateInstance: lc.evacuate,  # type: ignore[dict-item]
            commands.ReportDomain: lc.report,  # type: ignore[dict-item]
            commands.RecordBoot: lc.booted,  # type: ignore[dict-item]
        }

    async def heartbeat(self, node_id: str, operation: str | None, body: bytes) -> None:
        assert self.fleet is not None and self.liveness is not None
        if operation in ("DEL", "PURGE") or not body:
            if self.fleet.silence(node_id):
                await self.liveness.node_lost(node_id, "its heartbeat expired")
            return
        try:
            beat = _heartbeat.decode(body)
        except msgspec.ValidationError as err:
            log.warning("node=%s unreadable heartbeat: %s", node_id, err)
            return
        if beat.node_id != node_id:  # a node writes only its own key: it speaks for itself
            log.warning("node=%s heartbeat naming node %s: ignored", node_id, beat.node_id)
            return
        if self.fleet.beat(beat):
            try:
                node = await self.fleet.node(node_id)
            except NotFound:
                return
            if node.down:
                await self.liveness.node_back(node_id)


async def _keep_alive(msg: NatsMessage, every: float) -> None:
    """Tell JetStream the command is still being worked on, so it is not redelivered."""
    while True:
        await asyncio.sleep(every)
        await msg.in_progress()


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """`nebula orchestrator`: until `stop` is set."""
    pool = await database.create_pool(settings.pg_dsn, min_size=1, max_size=4) if settings.pg_dsn else None
    orchestrator = Orchestrator(settings, pool=pool)
    try:
        await orchestrator.start()
        await stop.wait()
    finally:
        await orchestrator.stop()
        if pool is not None:
            await pool.close()
