"""FastStream on NATS, set up once for every role that declares subscribers (the
orchestrator's durable command consumer and node watch, the node agents' request/reply
handlers): msgspec decodes and encodes every message, and a handler that fails answers
with a typed `NodeReply(error=…)` instead of leaving the requester to time out.

The AsyncAPI document in `schemas/` is generated from the brokers built here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec
from fast_depends.exceptions import ValidationError
from fast_depends.msgspec import MsgSpecSerializer
from faststream.middlewares import ExceptionMiddleware
from faststream.nats import NatsBroker
from nats.js import JetStreamContext

from nebula_core.contract import subjects
from nebula_core.contract.commands import Command, command_verb
from nebula_core.contract.errors import NebulaError
from nebula_core.contract.node import ErrorBody, NodeReply
from nebula_core.nats_client import servers

log = logging.getLogger("nebula.messaging")


def error_reply(code: str, message: str) -> NodeReply:
    return NodeReply(error=ErrorBody(code=code, message=message))


def _invalid(exc: ValidationError) -> NodeReply:
    cause = exc.__cause__
    detail = str(cause) if isinstance(cause, msgspec.ValidationError) else "the request does not match its schema"
    return error_reply("invalid", detail)


def _nebula(exc: NebulaError) -> NodeReply:
    return error_reply(exc.code, exc.message)


def _unexpected(exc: Exception) -> NodeReply:
    log.exception("handler failed: %s", exc)
    return error_reply("internal", f"{type(exc).__name__}: {exc}")


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
        **options,
    )


async def publish_command(js: JetStreamContext, command: Command) -> None:
    """Put a command on the `NEBULA_COMMANDS` work queue. Its `command_id` is the
    `Nats-Msg-Id`, so publishing one command twice (a retry, or several orchestrators
    deriving the same id) stores it once."""
    await js.publish(
        subjects.command_subject(command_verb(command)),
        msgspec.json.encode(command),
        stream=subjects.COMMANDS_STREAM,
        headers={"Nats-Msg-Id": str(command.command_id)},
    )
