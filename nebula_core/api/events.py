"""GET /v1/events: the live event stream for integrations, as Server-Sent Events.

Each SSE message is one event: `id` is its stream sequence, `event` its type, `data` the
EventRecord as JSON. A client that reconnects with `Last-Event-ID` (or `?since=<seq>`)
resumes right after that sequence, losing nothing. Callers see only the events of what
they may see: their projects and those projects' instances, their own user, the images;
cloud admins see everything. A token holds at most `NEBULA_API_EVENT_STREAMS` streams open
at once (a 429 beyond; see `ratelimit`).
"""

from __future__ import annotations

import time
import uuid

import msgspec
from aiohttp import web
from aiohttp_sse import sse_response
from nats.js.api import ConsumerConfig, DeliverPolicy

from nebula_core.api import keys
from nebula_core.api.auth import Principal, principal
from nebula_core.api.event_records import record
from nebula_core.api.ratelimit import LIMITS
from nebula_core.api.routing import Operations, Query
from nebula_core.contract import subjects
from nebula_core.contract.errors import Invalid
from nebula_core.contract.events import Event, InstanceCreated, aggregate_of, decode_known, event_type
from nebula_core.contract.http import STREAM_SEQUENCE_MAX, EventRecord, StreamSequence

ops = Operations()

_MEMBERSHIP_TTL_S = 5.0


class Visibility:
    """Decides, per event, whether one caller may see it; remembers what it looked up."""

    def __init__(self, request: web.Request, who: Principal) -> None:
        self._pool = request.app[keys.POOL]
        self._who = who
        self._instance_project: dict[uuid.UUID, uuid.UUID | None] = {}
        self._projects: set[uuid.UUID] = set()
        self._projects_at = 0.0

    async def _member_of(self, project_id: uuid.UUID | None) -> bool:
        if project_id is None:
            return False
        if time.monotonic() - self._projects_at > _MEMBERSHIP_TTL_S:
            rows = await self._pool.fetch("SELECT project_id FROM memberships WHERE user_id = $1", self._who.user_id)
            self._projects = {r["project_id"] for r in rows}
            self._projects_at = time.monotonic()
        return project_id in self._projects

    async def _project_of_instance(self, event: Event) -> uuid.UUID | None:
        if isinstance(event, InstanceCreated):
            self._instance_project[event.id] = event.project_id
        if event.id not in self._instance_project:
            project_id = await self._pool.fetchval("SELECT project_id FROM instances WHERE id = $1", event.id)
            if project_id is None:
                return None  # not projected yet: asked again at its next event, never remembered as no one's
            self._instance_project[event.id] = project_id
        return self._instance_project[event.id]

    async def allows(self, event: Event) -> bool:
        if self._who.is_admin:
            return True
        kind = aggregate_of(event)
        if kind == "image":
            return True
        if kind == "user":
            return event.id == self._who.user_id
        if kind == "project":
            return await self._member_of(event.id)
        if kind == "instance":
            return await self._member_of(await self._project_of_instance(event))
        return False


def _resume_from(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("since")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):  # isdigit() alone takes '²', which int() refuses
        raise Invalid("since / Last-Event-ID is a stream sequence (a whole number)", ["query:since"])
    if int(raw) > STREAM_SEQUENCE_MAX:
        raise Invalid(f"since / Last-Event-ID is a stream sequence, at most {STREAM_SEQUENCE_MAX}", ["query:since"])
    return int(raw)


@ops(
    "GET",
    "/v1/events",
    summary="Live stream of events (Server-Sent Events), resumable",
    content_type="text/event-stream",
    stream_of=EventRecord,
    query={"since": Query("Resume after this stream sequence (or send Last-Event-ID)", StreamSequence)},
)
async def stream_events(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    since = _resume_from(request)
    with request.app[LIMITS].stream(who):
        return await _stream(request, who, since)


async def _stream(request: web.Request, who: Principal, since: int | None) -> web.StreamResponse:
    js = request.app[keys.NATS_CLIENT].jetstream()
    config = (
        ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        if since is None
        else ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=since + 1)
    )
    sub = await js.subscribe(
        subjects.EVENTS_ALL,
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        config=config,
        deliver_policy=config.deliver_policy,
    )
    visibility = Visibility(request, who)
    try:
        async with sse_response(request, ping_interval=15) as response:
            while response.is_connected():
                try:
                    message = await sub.next_msg(timeout=1.0)
                except TimeoutError:  # nats-py's own TimeoutError is one too
                    continue
                event = decode_known(message.data)
                if event is None or not await visibility.allows(event):
                    continue
                seq = message.metadata.sequence.stream
                shown = record(seq, event, sources_shown=who.is_admin)
                await response.send(msgspec.json.encode(shown).decode(), id=str(seq), event=event_type(event))
    finally:
        await sub.unsubscribe()
    return response
