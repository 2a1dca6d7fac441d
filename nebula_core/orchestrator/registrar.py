"""The orchestrators answer node agents: `nebula.ctl.<node id>.register` and `.claims`.

A node keeps no aggregate and reads no event: it tells the orchestrators what it offers,
and they record it in the node's aggregate (`Fleet.register`); it asks what placement has
promised on it, and they answer from the aggregate. Who asks is the node its subject
names, since only that node's NATS identity may publish there. Every replica answers, in
one queue group.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from faststream.nats import NatsBroker, NatsMessage

from nebula_core.contract import subjects
from nebula_core.contract.node import ClaimsRequest, NodeClaims, NodeReply, Registration
from nebula_core.domain import Node
from nebula_core.messaging import error_reply, reply_for
from nebula_core.orchestrator.fleet import Fleet

log = logging.getLogger("nebula.orchestrator.registrar")


def declare_node_answers(broker: NatsBroker, fleet: Callable[[], Fleet | None]) -> None:
    """Subscribe `broker` to the nodes' requests, answered with `fleet()` (set by then)."""

    async def answer(msg: NatsMessage, ask: Callable[[Fleet, str], Awaitable[Node]]) -> NodeReply:
        known = fleet()
        if known is None:
            return error_reply("unavailable", "the orchestrator is starting")
        try:
            node_id = subjects.node_of(msg.raw_message.subject, subjects.CONTROL_PREFIX)
        except ValueError as err:
            return error_reply("invalid", str(err))
        try:
            node = await ask(known, node_id)
        except Exception as err:
            log.warning("node=%s request on %s not answered: %s", node_id, msg.raw_message.subject, err)
            return reply_for(err)
        return NodeReply(node=NodeClaims(version=node.version, claims=dict(node.claims)))

    @broker.subscriber(
        subjects.control_requests("register"),
        queue=subjects.CONTROL_QUEUE,
        title="orchestrator/register",
        description="A node agent registers: its aggregate is created or brought up to date.",
    )
    async def on_register(registration: Registration, msg: NatsMessage) -> NodeReply:
        return await answer(msg, lambda f, node_id: f.register(node_id, registration))

    @broker.subscriber(
        subjects.control_requests("claims"),
        queue=subjects.CONTROL_QUEUE,
        title="orchestrator/claims",
        description="A node agent asks what placement has promised on it.",
    )
    async def on_claims(request: ClaimsRequest, msg: NatsMessage) -> NodeReply:
        return await answer(msg, lambda f, node_id: f.current(node_id))
