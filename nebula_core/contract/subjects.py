"""Subject, stream, consumer and bucket names: declared here once, used everywhere."""

from __future__ import annotations

import re
import uuid

EVENTS_STREAM = "NEBULA_EVENTS"
COMMANDS_STREAM = "NEBULA_COMMANDS"

EVENTS_PREFIX = "nebula.evt"
COMMANDS_PREFIX = "nebula.cmd"
NODE_PREFIX = "nebula.node"
CONTROL_PREFIX = "nebula.ctl"

EVENTS_ALL = f"{EVENTS_PREFIX}.>"
COMMANDS_ALL = f"{COMMANDS_PREFIX}.>"

#: Durable consumers shared by every replica of a role.
PROJECTOR_CONSUMER = "projector"
ORCHESTRATOR_CONSUMER = "orchestrator"

#: Key-value buckets.
NODES_BUCKET = "nebula_nodes"
USERDATA_BUCKET = "nebula_userdata"

#: The aggregates whose events live on the event stream.
AGGREGATES = ("project", "instance", "node", "image", "user", "keypair")

#: Verbs on the command stream, consumed by the orchestrators.
COMMAND_VERBS = ("place", "start", "stop", "reboot", "delete", "evacuate", "report", "booted")

#: Operations a node agent answers on request/reply.
NODE_OPS = ("create", "start", "stop", "reboot", "delete", "status", "console")

#: What a node agent asks the orchestrators on request/reply (`nebula.ctl.<node id>.<op>`):
#: a node keeps no aggregate of its own; the orchestrator records its registration.
CONTROL_OPS = ("register", "claims")
#: The queue group in which the orchestrator replicas answer nodes.
CONTROL_QUEUE = "orchestrator"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")

# Nats-* headers the event store writes; the event type also travels in the payload.
HEADER_EVENT_TYPE = "Nebula-Event-Type"
HEADER_ACTOR = "Nebula-Actor"


def _token(value: str, what: str) -> str:
    """A subject token must not contain '.', '*', '>' or whitespace: check, never escape."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} is not a valid subject token")
    return value


def event_subject(aggregate: str, aggregate_id: uuid.UUID | str) -> str:
    """`nebula.evt.<aggregate>.<id>`: the subject holding one aggregate's events, in order."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}")
    return f"{EVENTS_PREFIX}.{aggregate}.{_token(str(aggregate_id), 'aggregate id')}"


def aggregate_events(aggregate: str) -> str:
    """Wildcard over every event of one kind of aggregate."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}")
    return f"{EVENTS_PREFIX}.{aggregate}.*"


def command_subject(verb: str) -> str:
    """`nebula.cmd.<verb>`: where a command for the orchestrators is published."""
    if verb not in COMMAND_VERBS:
        raise ValueError(f"unknown command verb {verb!r}")
    return f"{COMMANDS_PREFIX}.{verb}"


def node_subject(node_id: str, op: str) -> str:
    """`nebula.node.<node id>.<op>`: a node agent's request/reply endpoint."""
    if op not in NODE_OPS:
        raise ValueError(f"unknown node operation {op!r}")
    return f"{NODE_PREFIX}.{_token(node_id, 'node id')}.{op}"


def report_subject(node_id: str) -> str:
    """`nebula.cmd.report.<node id>`: where node `node_id` publishes its reports (its NATS
    identity may publish there only, so the subject tells the orchestrator who reported)."""
    return f"{COMMANDS_PREFIX}.report.{_token(node_id, 'node id')}"


def control_subject(node_id: str, op: str) -> str:
    """`nebula.ctl.<node id>.<op>`: where node `node_id` asks the orchestrators (its NATS
    identity may publish there only, so the subject tells the orchestrator who asks)."""
    if op not in CONTROL_OPS:
        raise ValueError(f"unknown control operation {op!r}")
    return f"{CONTROL_PREFIX}.{_token(node_id, 'node id')}.{op}"


def control_requests(op: str) -> str:
    """Wildcard over every node's `op` requests to the orchestrators."""
    if op not in CONTROL_OPS:
        raise ValueError(f"unknown control operation {op!r}")
    return f"{CONTROL_PREFIX}.*.{op}"


def node_of(subject: str, prefix: str) -> str:
    """The node id in `subject`, one of `<prefix>.<node id>.…`; ValueError otherwise."""
    head, _, rest = subject.partition(f"{prefix}.")
    node_id = rest.split(".", 1)[0]
    if head or not node_id:
        raise ValueError(f"{subject!r} names no node under {prefix}")
    return _token(node_id, "node id")
