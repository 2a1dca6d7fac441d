"""/v1/instances: create (202, placed asynchronously), read, act on, delete, audit, console."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import msgspec
from aiohttp import web
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError

from nebula_core.api import keys, queries
from nebula_core.api.auth import principal, require_role
from nebula_core.api.event_records import record
from nebula_core.api.idempotency import new_id
from nebula_core.api.keypairs import public_keys_of
from nebula_core.api.project_lock import project_lock
from nebula_core.api.resources import etag, if_match, path_uuid, read_your_write
from nebula_core.api.routing import Operations, Query, body, respond
from nebula_core.contract import commands, subjects
from nebula_core.contract import http as shapes
from nebula_core.contract.errors import Conflict, Invalid, NodeUnavailable, NotFound, QuotaExceeded
from nebula_core.contract.kv import InstanceSeed
from nebula_core.contract.limits import CONSOLE_DEFAULT_BYTES, CONSOLE_MAX_BYTES, USER_DATA_MAX_BYTES
from nebula_core.contract.node import ConsoleRequest
from nebula_core.contract.types import Quotas, Resources, Role
from nebula_core.domain import Instance, create_with_id
from nebula_core.eventstore import EventStore
from nebula_core.messaging import NodeClient

ops = Operations()


def _instance_from_aggregate(instance: Instance) -> shapes.Instance:
    return shapes.Instance(
        id=instance.id,
        project_id=instance.project_id,
        name=instance.name,
        description=instance.description,
        tags=dict(instance.tags),
        region=instance.region,
        vcpus=instance.flavor.vcpus,
        ram_mb=instance.flavor.ram_mb,
        disk_gb=instance.flavor.disk_gb,
        image=instance.image_id,
        state=instance.state,
        node_id=instance.node_id,
        error=instance.error,
        created_at=instance.created_on,
        updated_at=instance.modified_on,
        booted_at=instance.booted_at,
        addresses=list(instance.addresses),
        version=instance.version,
    )


async def _require_role(request: web.Request, instance_id: uuid.UUID, project_id: uuid.UUID, at_least: Role) -> None:
    """The caller may see the instance (else `NotFound`) and act on it (else `Forbidden`).
    Cloud admins may, always: an instance left in a deleted project included."""
    if principal(request).is_admin:
        return
    try:
        await require_role(request, project_id, at_least)
    except NotFound:
        raise NotFound(f"instance {instance_id} not found") from None


async def _visible(request: web.Request, instance_id: uuid.UUID, at_least: Role = "reader") -> Instance:
    """The instance, if the caller may see it (else `NotFound`) and act on it (else `Forbidden`)."""
    store: EventStore = request.app[keys.WRITER].store
    try:
        instance = await store.load(Instance, instance_id)
    except NotFound:
        raise NotFound(f"instance {instance_id} not found") from None
    await _require_role(request, instance_id, instance.project_id, at_least)
    return instance


async def _answer(request: web.Request, instance_id: uuid.UUID, seq: int, status: int) -> web.Response:
    """The instance as the read models show it once they include `seq` (else as the events do)."""

    async def from_read_model() -> shapes.Instance | None:
        row = await queries.instance(request.app[keys.POOL], instance_id)
        return queries.instance_shape(row) if row is not None and row["last_seq"] >= seq else None

    async def from_events() -> shapes.Instance:
        return _instance_from_aggregate(await request.app[keys.WRITER].store.load(Instance, instance_id))

    view = await read_your_write(request, seq, from_read_model, from_events)
    return respond(view, status, headers=etag(view.version))


def _check_quota(quotas: Quotas, held: shapes.Usage, flavor: Resources) -> None:
    over = []
    if held.instances + 1 > quotas.instances:
        over.append(f"instances: {held.instances} of {quotas.instances} used")
    if held.vcpus + flavor.vcpus > quotas.vcpus:
        over.append(f"vcpus: {held.vcpus} + {flavor.vcpus} > {quotas.vcpus}")
    if held.ram_mb + flavor.ram_mb > quotas.ram_mb:
        over.append(f"ram_mb: {held.ram_mb} + {flavor.ram_mb} > {quotas.ram_mb}")
    if held.disk_gb + flavor.disk_gb > quotas.disk_gb:
        over.append(f"disk_gb: {held.disk_gb} + {flavor.disk_gb} > {quotas.disk_gb}")
    if over:
        raise QuotaExceeded("quota exceeded: " + "; ".join(over))


async def _image_for(pool: asyncpg.Pool, spec: shapes.InstanceCreate) -> asyncpg.Record:
    image = await queries.image_by_ref(pool, spec.image)
    if image is None:
        raise Invalid(f"no image {spec.image!r}", ["$.image"])
    if spec.disk_gb < image["min_disk_gb"]:
        raise Invalid(f"image {image['name']} needs a disk of at least {image['min_disk_gb']} GiB", ["$.disk_gb"])
    return image


@ops(
    "POST",
    "/v1/instances",
    summary="Create an instance; it is placed and booted asynchronously",
    body=shapes.InstanceCreate,
    response=shapes.Instance,
    status=202,
    errors=(403, 404),
    also_checked={
        "$.image": "names an image that exists (by name or id)",
        "$.disk_gb": "at least the image's `min_disk_gb`",
        "$.user_data": f"at most {USER_DATA_MAX_BYTES} bytes of UTF-8",
        "$.keypairs": "names keypairs of the caller's own",
    },
)
async def create_instance(request: web.Request) -> web.Response:
    spec = await body(request, shapes.InstanceCreate)
    user_data = spec.user_data.encode()
    if len(user_data) > USER_DATA_MAX_BYTES:
        raise Invalid(f"user_data is {len(user_data)} bytes; at most {USER_DATA_MAX_BYTES}", ["$.user_data"])
    who = principal(request)
    await require_role(request, spec.project_id, "member")
    pool, writer = request.app[keys.POOL], request.app[keys.WRITER]
    image = await _image_for(pool, spec)
    public_keys = await public_keys_of(request, spec.keypairs)
    flavor = Resources(vcpus=spec.vcpus, ram_mb=spec.ram_mb, disk_gb=spec.disk_gb)
    instance_id = new_id(request, "instance")
    # One writer per project at a time (creators, a deletion), across API replicas: count,
    # append, see it counted - and never create in a project deleted meanwhile.
    async with project_lock(writer, spec.project_id) as conn:
        quotas = await queries.quotas(conn, spec.project_id)
        _check_quota(quotas, await queries.usage(conn, spec.project_id), flavor)
        token = await _store_seed(writer.js, instance_id, spec.user_data)
        instance = create_with_id(
            Instance,
            instance_id,
            project_id=spec.project_id,
            owner_id=who.user_id or uuid.UUID(int=0),
            name=spec.name,
            description=spec.description,
            tags=spec.tags,
            region=spec.region,
            flavor=flavor,
            image_id=image["id"],
            user_data_size=len(user_data),
            user_data_sha256=hashlib.sha256(user_data).hexdigest(),
            metadata_token_hash=hashlib.sha256(token.encode()).hexdigest(),
            public_keys=public_keys,
        )
        seq = await writer.save(instance, actor=who.key)
        await writer.projected(seq, using=conn)
    await writer.publish(_command(commands.PlaceInstance, instance.id, who.key))
    return await _answer(request, instance.id, seq, 202)


async def _store_seed(js: JetStreamContext, instance_id: uuid.UUID, user_data: str) -> str:
    """Store the instance's seed before its first event; returns its metadata token.

    A seed already under the id - a twin of this request with the same Idempotency-Key,
    or an attempt that failed before its first event - keeps its token: whichever twin
    appends `instance.created`, the token hash in it matches the token the node is given."""
    seeds = await js.key_value(subjects.USERDATA_BUCKET)
    key, token = str(instance_id), secrets.token_urlsafe(32)
    try:
        await seeds.create(key, msgspec.json.encode(InstanceSeed(metadata_token=token, user_data=user_data)))
        return token
    except KeyWrongLastSequenceError:
        entry = await seeds.get(key)
    assert entry.value is not None and entry.revision is not None
    seed = msgspec.json.decode(entry.value, type=InstanceSeed)
    if seed.user_data != user_data:
        renewed = InstanceSeed(metadata_token=seed.metadata_token, user_data=user_data)
        await seeds.update(key, msgspec.json.encode(renewed), last=entry.revision)
    return seed.metadata_token


def _command(cls: type[commands.Command], instance_id: uuid.UUID, actor: str, **fields: object) -> commands.Command:
    return cls(command_id=uuid.uuid4(), instance_id=instance_id, requested_at=datetime.now(UTC), actor=actor, **fields)


@ops(
    "GET",
    "/v1/instances",
    summary="Instances the caller may see",
    list_of=shapes.Instance,
    query={
        "state": Query("Only those in this state (without it: all but the deleted)", shapes.InstanceState),
        "tag": Query("Only those with this tag; repeated, with each", shapes.TagFilter, repeatable=True),
        "region": Query("Only those in this region", shapes.QueryText),
        "project_id": Query("Only those of this project", uuid.UUID),
        "node_id": Query("Only those on this node (cloud admins; ignored for others)", shapes.QueryText),
    },
    paged=True,
)
async def list_instances(request: web.Request) -> web.Response:
    return respond(await queries.instances(request.app[keys.POOL], principal(request), request.query))


@ops(
    "GET",
    "/v1/instances/{instance_id}",
    summary="One instance; with ?at=<RFC 3339 time>, as it was then",
    response=shapes.Instance,
    query={"at": Query("As it was at this time (RFC 3339, with its offset)", shapes.PastTime)},
)
async def get_instance(request: web.Request) -> web.Response:
    instance_id = path_uuid(request, "instance_id")
    if "at" in request.query:
        return await _instance_at(request, instance_id, request.query["at"])
    row = await queries.instance(request.app[keys.POOL], instance_id)
    if row is None:
        # Not projected yet (or the projector is behind): the events are the truth.
        view = _instance_from_aggregate(await _visible(request, instance_id))
    else:
        await _require_role(request, instance_id, row["project_id"], "reader")
        view = queries.instance_shape(row)
    return respond(view, headers=etag(view.version))


async def _instance_at(request: web.Request, instance_id: uuid.UUID, at: str) -> web.Response:
    try:
        # A '+' in a query string arrives as a space unless the client encoded it.
        when = datetime.fromisoformat(at.strip().replace(" ", "+").replace("Z", "+00:00"))
    except ValueError:
        raise Invalid("at must be an RFC 3339 time, e.g. 2026-11-25T10:00:00Z", ["query:at"]) from None
    if when.tzinfo is None:
        raise Invalid("at needs a time zone (e.g. Z)", ["query:at"])
    await _visible(request, instance_id)
    try:
        then = await request.app[keys.WRITER].store.load(Instance, instance_id, at=when)
    except NotFound:
        raise NotFound(f"instance {instance_id} did not exist at {at}") from None
    return respond(_instance_from_aggregate(then))


_ACTIONS: dict[str, tuple[Callable[[Instance], None], type[commands.Command]]] = {
    "start": (Instance.request_start, commands.StartInstance),
    "stop": (Instance.request_stop, commands.StopInstance),
    "reboot": (Instance.request_reboot, commands.RebootInstance),
}


@ops(
    "POST",
    "/v1/instances/{instance_id}/actions",
    summary="Start, stop or reboot an instance",
    body=shapes.Action,
    response=shapes.Instance,
    status=202,
    errors=(403,),
    if_match=True,
)
async def act(request: web.Request) -> web.Response:
    instance_id = path_uuid(request, "instance_id")
    action = (await body(request, shapes.Action)).action
    await _visible(request, instance_id, "member")
    request_change, command = _ACTIONS[action]
    who = principal(request)
    _, seq = await request.app[keys.WRITER].change(
        Instance, instance_id, request_change, actor=who.key, expected_version=if_match(request)
    )
    await request.app[keys.WRITER].publish(_command(command, instance_id, who.key))
    return await _answer(request, instance_id, seq, 202)


@ops(
    "DELETE",
    "/v1/instances/{instance_id}",
    summary="Delete an instance (its domain, disks and data)",
    response=shapes.Instance,
    status=202,
    errors=(403,),
    if_match=True,
)
async def delete_instance(request: web.Request) -> web.Response:
    instance_id = path_uuid(request, "instance_id")
    await _visible(request, instance_id, "member")
    who = principal(request)
    _, seq = await request.app[keys.WRITER].change(
        Instance, instance_id, Instance.request_delete, actor=who.key, expected_version=if_match(request)
    )
    await request.app[keys.WRITER].publish(_command(commands.DeleteInstance, instance_id, who.key))
    return await _answer(request, instance_id, seq, 202)


@ops(
    "GET",
    "/v1/instances/{instance_id}/events",
    summary="The instance's whole history, from the event log",
    list_of=shapes.EventRecord,
)
async def instance_events(request: web.Request) -> web.Response:
    instance_id = path_uuid(request, "instance_id")
    await _visible(request, instance_id)
    history = await request.app[keys.WRITER].store.history("instance", instance_id)
    return respond(shapes.Page(items=[record(s.seq, s.event) for s in history], next=None))


@ops(
    "GET",
    "/v1/instances/{instance_id}/console",
    summary="The tail of the instance's serial console",
    response=shapes.Console,
    query={"bytes": Query(f"How much of the tail, in bytes (default {CONSOLE_DEFAULT_BYTES})", shapes.ConsoleBytes)},
    errors=(409,),
)
async def console(request: web.Request) -> web.Response:
    instance_id = path_uuid(request, "instance_id")
    instance = await _visible(request, instance_id)
    if instance.node_id is None or instance.state in ("deleted", "pending"):
        raise Conflict(f"instance {instance_id} has no console while it is {instance.state}")
    raw = request.query.get("bytes", str(CONSOLE_DEFAULT_BYTES))
    if not queries.whole_number(raw) or not 1 <= int(raw) <= CONSOLE_MAX_BYTES:
        raise Invalid(f"bytes must be a whole number from 1 to {CONSOLE_MAX_BYTES}", ["query:bytes"])
    # The node's own error keeps its type: a domain the node does not have is a 404.
    nodes = NodeClient(request.app[keys.NATS_CLIENT], timeout=10)
    reply = await nodes.call(instance.node_id, "console", ConsoleRequest(instance_id=instance_id, max_bytes=int(raw)))
    if reply.console is None:
        raise NodeUnavailable(f"node {instance.node_id} answered without console output")
    return respond(
        shapes.Console(
            instance_id=instance_id,
            node_id=instance.node_id,
            data=reply.console.data,
            truncated=reply.console.truncated,
        )
    )
