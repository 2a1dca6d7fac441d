"""An event as integrators see it, in the live stream (`GET /v1/events`) and in an
instance's history (`GET /v1/instances/{id}/events`) alike."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from nebula_core.contract import http as shapes
from nebula_core.contract.events import Event, encode_event, event_type


def record(seq: int, event: Event, *, sources_shown: bool = False) -> shapes.EventRecord:
    """`event`, at stream sequence `seq`: envelope fields on top, the rest under `data`.
    An image's `source` is null unless `sources_shown` (for cloud admins: it may carry
    credentials), as in the image's own answer."""
    data = msgspec.json.decode(encode_event(event))
    if not sources_shown and event_type(event).startswith("image.") and "source" in data:
        data["source"] = None
    envelope = {k: data.pop(k) for k in ("type", "id", "version", "at", "actor")}
    return shapes.EventRecord(
        seq=seq,
        type=envelope["type"],
        aggregate=event_type(event).split(".")[0],
        id=uuid.UUID(envelope["id"]),
        version=envelope["version"],
        at=datetime.fromisoformat(envelope["at"].replace("Z", "+00:00")),
        actor=envelope["actor"],
        data=data,
    )
