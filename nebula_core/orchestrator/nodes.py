"""Calling a node agent: request/reply on `nebula.node.<id>.<op>` with a timeout per try
and a bounded number of tries. Retrying is safe because every node operation is
idempotent (a repeated create of the same domain succeeds, a delete of a missing one
succeeds). A node that never answers raises `NodeUnavailable`; a node that answers with
an error raises `NodeError` carrying the node's own code and reason.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from nebula_core.contract import subjects
from nebula_core.contract.errors import NebulaError, NodeUnavailable
from nebula_core.contract.node import NodeReply

log = logging.getLogger("nebula.orchestrator.nodes")

_reply = msgspec.json.Decoder(NodeReply)


class NodeError(NebulaError):
    """The node tried and failed; `code` is the node's (`not_found`, `invalid`, …)."""

    def __init__(self, node_id: str, op: str, code: str, message: str) -> None:
        super().__init__(f"node {node_id} could not {op}: {message}")
        self.code = code
        self.node_id = node_id


class NodeClient:
    def __init__(self, nc: NATS, *, timeout: float, tries: int) -> None:
        self._nc = nc
        self._timeout = timeout
        self._tries = max(1, tries)

    async def call(self, node_id: str, op: str, request: msgspec.Struct, *, timeout: float | None = None) -> NodeReply:
        """The node's answer to `request`; raises `NodeUnavailable` or `NodeError`."""
        subject = subjects.node_subject(node_id, op)
        payload = msgspec.json.encode(request)
        per_try = timeout or self._timeout
        for attempt in range(1, self._tries + 1):
            try:
                msg = await self._nc.request(subject, payload, timeout=per_try)
            except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as err:
                log.warning(
                    "node=%s op=%s attempt=%d/%d no answer: %s", node_id, op, attempt, self._tries, type(err).__name__
                )
                if attempt < self._tries and isinstance(err, nats.errors.NoRespondersError):
                    await asyncio.sleep(min(per_try, 1.0 * attempt))
                continue
            reply = _reply.decode(msg.data)
            if reply.error is not None:
                raise NodeError(node_id, op, reply.error.code, reply.error.message)
            return reply
        raise NodeUnavailable(f"node {node_id} did not answer {op} after {self._tries} tries of {per_try:g} s")
