"""FastStream on NATS, set up once for every role that declares subscribers (the
orchestrator's durable command consumer and node watch, the node agents' request/reply
handlers): msgspec decodes and encodes every message, and a handler that fails answers
with a typed `NodeReply(error=…)` instead of leaving the requester to time out.

Both ends of node request/reply meet here, so a typed error survives the trip: a node's
handler raises, say, `NotFound`; `reply_errors` puts its code and message in an
`ErrorBody`; the caller's `NodeClient` raises `NotFound` again (`ERRORS_BY_CODE`), with
the node's message. A node that does not answer is `NodeUnavailable`.

The AsyncAPI document in `schemas/` is generated from the brokers built here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import msgspec
import nats.errors
from fast_depends.exceptions import ValidationError
from fast_depends.msgspec import MsgSpecSerializer
from faststream.middlewares import ExceptionMiddleware
from faststream.nats import NatsBroker
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from nebula_core.contract import subjects
from nebula_core.contract.commands import Command, ReportDomain, command_verb
from nebula_core.contract.errors import ERRORS_BY_CODE, NebulaError, NodeUnavailable
from nebula_core.contract.node import ClaimsRequest, ErrorBody, NodeClaims, NodeReply, Registration
from nebula_core.nats_client import identity_options, servers

log = logging.getLogger("nebula.messaging")


def error_reply(code: str, message: str) -> NodeReply:
    return NodeReply(error=ErrorBody(code=code, message=message))


def reply_error(body: ErrorBody) -> NebulaError:
    """The typed error an `ErrorBody` carries: the class its code names, with its message.
    A code this version does not know (a newer node's) is a plain `NebulaError` that says it."""
    cls = ERRORS_BY_CODE.get(body.code)
    if cls is None:
        return NebulaError(f"{body.message} (error code {body.code!r})")
    return cls(body.message)


def _invalid(exc: ValidationError) -> NodeReply:
    cause = exc.__cause__
    detail = str(cause) if isinstance(cause, msgspec.ValidationError) else "the request does not match its schema"
    return error_reply("invalid", detail)


def _nebula(exc: NebulaError) -> NodeReply:
    return error_reply(exc.code, exc.message)


def _unexpected(exc: Exception) -> NodeReply:
    log.exception("handler failed: %s", exc)
    return error_reply("internal", f"{type(exc).__name__}: {exc}")


def reply_for(exc: Exception) -> NodeReply:
    """The reply a request/reply handler's error becomes (as `reply_errors` answers)."""
    if isinstance(exc, ValidationError):
        return _invalid(exc)
    if isinstance(exc, NebulaError):
        return _nebula(exc)
    return _unexpected(exc)


#: Errors raised by a request/reply handler become the reply (`publish_handlers`); a
#: JetStream consumer's handler has nobody to reply to, so there they are only logged and
#: FastStream's ack policy decides about redelivery.
reply_errors = ExceptionMiddleware(
    publish_handlers={ValidationError: _invalid, NebulaError: _nebula, Exception: _unexpected},
)


def make_broker(nats_url: str, *, name: str, middlewares: Sequence[Any] = (), **options: Any) -> NatsBroker:
    """A broker for role `name`, reconnecting forever; msgspec for every payload."""
    return NatsBroker(
        servers(nats_url),
        name=f"nebula-{name}",
        serializer=MsgSpecSerializer(),
        middlewares=list(middlewares),
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        logger=logging.getLogger(f"nebula.{name}.broker"),
        log_level=logging.DEBUG,
        **{**identity_options(nats_url), **options},
    )


async def publish_command(js: JetStreamContext, command: Command) -> None:
    """Put a command on the `NEBULA_COMMANDS` work queue. Its `command_id` is the
    `Nats-Msg-Id`, so publishing one command twice (a retry, or several orchestrators
    deriving the same id) stores it once. A node's report goes on that node's subject."""
    subject = (
        subjects.report_subject(command.node_id)
        if isinstance(command, ReportDomain)
        else subjects.command_subject(command_verb(command))
    )
    await js.publish(
        subject,
        msgspec.json.encode(command),
        stream=subjects.COMMANDS_STREAM,
        headers={"Nats-Msg-Id": str(command.command_id)},
    )


_node_reply = msgspec.json.Decoder(NodeReply)


class Requester:
    """Request/reply with a timeout per try and at most `tries` tries; only a request nobody
    answered is repeated (every operation asked this way is idempotent). An answer with an
    error raises that error's own class (`reply_error`); no answer at all (timeouts, no
    responders) raises `NodeUnavailable`, naming who did not answer."""

    def __init__(self, nc: NATS, *, timeout: float, tries: int = 1) -> None:
        self._nc = nc
        self._timeout = timeout
        self._tries = max(1, tries)

    async def request(
        self, subject: str, request: msgspec.Struct, *, who: str, op: str, timeout: float | None = None
    ) -> NodeReply:
        payload = msgspec.json.encode(request)
        per_try = timeout or self._timeout
        for attempt in range(1, self._tries + 1):
            try:
                msg = await self._nc.request(subject, payload, timeout=per_try)
            except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as err:
                log.warning("%s op=%s attempt=%d/%d no answer: %r", who, op, attempt, self._tries, err)
                if attempt < self._tries and isinstance(err, nats.errors.NoRespondersError):
                    await asyncio.sleep(min(per_try, 1.0 * attempt))  # a responder restarting
                continue
            try:
                reply = _node_reply.decode(msg.data)
            except msgspec.DecodeError as err:
                raise NebulaError(f"{who} answered {op} with something that is not a reply: {err}") from err
            if reply.error is not None:
                raise reply_error(reply.error)
            return reply
        tries = "1 try" if self._tries == 1 else f"{self._tries} tries"
        raise NodeUnavailable(f"{who} did not answer {op} after {tries} of {per_try:g} s")


class NodeClient(Requester):
    """Calling node agents: request/reply on `nebula.node.<id>.<op>` (`Requester`). Repeating
    a request is safe because every node operation is idempotent (a repeated create of the
    same domain succeeds, a delete of a missing one succeeds)."""

    async def call(self, node_id: str, op: str, request: msgspec.Struct, *, timeout: float | None = None) -> NodeReply:
        """The node's answer to `request`; its typed error, or `NodeUnavailable`."""
        return await self.request(
            subjects.node_subject(node_id, op), request, who=f"node {node_id}", op=op, timeout=timeout
        )


class ControlClient(Requester):
    """A node agent asking the orchestrators (`nebula.ctl.<its id>.<op>`): its registration
    and its claims. Both are safe to repeat."""

    def __init__(self, nc: NATS, node_id: str, *, timeout: float, tries: int = 1) -> None:
        super().__init__(nc, timeout=timeout, tries=tries)
        self.node_id = node_id

    async def _ask(self, op: str, request: msgspec.Struct) -> NodeClaims:
        subject = subjects.control_subject(self.node_id, op)
        reply = await self.request(subject, request, who="the orchestrators", op=op)
        if reply.node is None:
            raise NebulaError(f"the orchestrators answered {op} without the node's claims")
        return reply.node

    async def register(self, registration: Registration) -> NodeClaims:
        return await self._ask("register", registration)

    async def claims(self) -> NodeClaims:
        return await self._ask("claims", ClaimsRequest())
