"""Generate `schemas/` from the contract: one JSON Schema per message type and the
AsyncAPI document of the NATS subjects. `nebula schemas --write` writes them;
`tests/unit/test_schemas.py` fails when the checked-in files differ from the code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from nebula_core.contract import commands, events, kv, node, subjects

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


def _schema(t: Any) -> dict[str, Any]:
    return msgspec.json.schema(t)  # type: ignore[no-any-return]


def message_types() -> dict[str, dict[str, Any]]:
    """Every message type by its file name under schemas/ (without `.json`)."""
    out: dict[str, Any] = {}
    for tag, t in events.EVENT_TYPES.items():
        out[f"events/{tag}"] = t
    for tag, t in commands.COMMAND_TYPES.items():
        out[f"commands/{tag}"] = t
    for t in (
        node.CreateRequest,
        node.InstanceRequest,
        node.StopRequest,
        node.ConsoleRequest,
        node.NodeReply,
    ):
        out[f"node/{t.__name__}"] = t
    out["kv/Heartbeat"] = kv.Heartbeat
    out["kv/InstanceSeed"] = kv.InstanceSeed
    return {name: _schema(t) for name, t in sorted(out.items())}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/messages/{name.replace('/', '.')}"}


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of Nebula's streams, subjects and buckets."""
    types = message_types()
    messages = {
        name.replace("/", "."): {"name": name, "contentType": "application/json", "payload": schema}
        for name, schema in types.items()
    }
    event_refs = [_ref(n) for n in types if n.startswith("events/")]
    command_refs = [_ref(n) for n in types if n.startswith("commands/")]
    node_refs = [_ref(n) for n in types if n.startswith("node/")]
    channels = {
        "events": {
            "address": f"{subjects.EVENTS_PREFIX}.{{aggregate}}.{{id}}",
            "description": (
                f"Stream {subjects.EVENTS_STREAM}: every change of state, immutable. "
                "Headers: Nats-Msg-Id=<id>:<version>, Nats-Expected-Last-Subject-Sequence, "
                f"{subjects.HEADER_EVENT_TYPE}, {subjects.HEADER_ACTOR}."
            ),
            "parameters": {
                "aggregate": {"enum": list(subjects.AGGREGATES)},
                "id": {"description": "the aggregate's id"},
            },
            "messages": {f"m{i}": r for i, r in enumerate(event_refs)},
        },
        "commands": {
            "address": f"{subjects.COMMANDS_PREFIX}.{{verb}}",
            "description": f"Stream {subjects.COMMANDS_STREAM} (work queue), consumer {subjects.ORCHESTRATOR_CONSUMER}.",
            "parameters": {"verb": {"enum": list(subjects.COMMAND_VERBS)}},
            "messages": {f"m{i}": r for i, r in enumerate(command_refs)},
        },
        "node": {
            "address": f"{subjects.NODE_PREFIX}.{{node_id}}.{{op}}",
            "description": "Request/reply with one node agent; the reply is a NodeReply.",
            "parameters": {"node_id": {}, "op": {"enum": list(subjects.NODE_OPS)}},
            "messages": {f"m{i}": r for i, r in enumerate(node_refs)},
        },
        "heartbeats": {
            "address": f"$KV.{subjects.NODES_BUCKET}.{{node_id}}",
            "description": f"KV bucket {subjects.NODES_BUCKET}: one key per live node, with a TTL.",
            "parameters": {"node_id": {}},
            "messages": {"heartbeat": _ref("kv/Heartbeat")},
        },
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Nebula", "version": "1", "description": "Nebula's NATS contract."},
        "channels": channels,
        "components": {"messages": messages},
    }


def _dump(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def generate() -> dict[str, bytes]:
    """Every file under schemas/ (relative path → content), from the code alone."""
    files = {f"{name}.json": _dump(schema) for name, schema in message_types().items()}
    files["asyncapi.json"] = _dump(asyncapi())
    files["openapi.json"] = _dump(_openapi())
    return files


def _openapi() -> dict[str, Any]:
    from nebula_core.api.app import openapi_document  # the HTTP API is described by its own routes

    return openapi_document()


def drift(root: Path = SCHEMAS_DIR) -> list[str]:
    """Files under `root` that differ from, are missing from, or are extra to the code."""
    wanted = generate()
    have = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.json")} if root.exists() else {}
    return sorted(
        [f"differs: {n}" for n in wanted if n in have and have[n] != wanted[n]]
        + [f"missing: {n}" for n in wanted if n not in have]
        + [f"extra: {n}" for n in have if n not in wanted]
    )


def write(root: Path = SCHEMAS_DIR) -> list[str]:
    """Rewrite schemas/ from the code; returns the files that changed."""
    changed = drift(root)
    for old in root.rglob("*.json") if root.exists() else []:
        old.unlink()
    for name, content in generate().items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return changed
