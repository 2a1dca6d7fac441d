"""/v1/keypairs: each caller's own SSH public keys, by name. An instance created with
`keypairs: [names]` gets their keys in its meta-data (`public-keys`), which cloud-init
installs for the image's default user. Nobody sees or uses another's keypairs."""

from __future__ import annotations

import base64
import hashlib
import uuid

from aiohttp import web
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from nebula_core.api import keys, queries
from nebula_core.api.auth import principal
from nebula_core.api.idempotency import new_id
from nebula_core.api.resources import path_uuid, read_your_write
from nebula_core.api.routing import Operations, body, respond
from nebula_core.contract import http as shapes
from nebula_core.contract.errors import Conflict, Invalid, NotFound
from nebula_core.domain import Keypair, create_with_id

ops = Operations()


def fingerprint(public_key: str) -> str:
    """The key's fingerprint as `ssh-keygen -l` shows it: SHA256 of the key blob, base64."""
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def checked_public_key(text: str) -> str:
    """The key line, stripped, if it parses as an OpenSSH public key; a 422 otherwise."""
    line = text.strip()
    try:
        load_ssh_public_key(line.encode())
    except (ValueError, UnsupportedAlgorithm) as err:
        raise Invalid(f"not an OpenSSH public key: {err}", ["$.public_key"]) from None
    return line


def _from_aggregate(keypair: Keypair) -> shapes.Keypair:
    return shapes.Keypair(
        id=keypair.id,
        name=keypair.name,
        public_key=keypair.public_key,
        fingerprint=keypair.fingerprint,
        created_at=keypair.created_on,
    )


async def _from_events(request: web.Request, keypair_id: uuid.UUID) -> shapes.Keypair:
    """The caller's keypair as its events show it (one the projector has not reached yet)."""
    try:
        keypair = await request.app[keys.WRITER].store.load(Keypair, keypair_id)
    except NotFound:
        keypair = None
    if keypair is None or keypair.deleted or keypair.owner != principal(request).key:
        raise NotFound(f"keypair {keypair_id} not found")
    return _from_aggregate(keypair)


@ops(
    "POST",
    "/v1/keypairs",
    summary="Add one of your SSH public keys, by name",
    body=shapes.KeypairCreate,
    response=shapes.Keypair,
    status=201,
    errors=(409,),
    also_checked={"$.public_key": "must parse as an OpenSSH public key"},
)
async def create_keypair(request: web.Request) -> web.Response:
    who = principal(request)
    spec = await body(request, shapes.KeypairCreate)
    public_key = checked_public_key(spec.public_key)
    pool = request.app[keys.POOL]
    if await pool.fetchval(
        "SELECT true FROM keypairs WHERE owner = $1 AND name = $2 AND NOT deleted", who.key, spec.name
    ):
        raise Conflict(f"you have a keypair named {spec.name!r}")
    keypair = create_with_id(
        Keypair,
        new_id(request, "keypair"),
        owner=who.key,
        name=spec.name,
        public_key=public_key,
        fingerprint=fingerprint(public_key),
    )
    seq = await request.app[keys.WRITER].save(keypair, actor=who.key)
    view = await read_your_write(
        request, seq, lambda: queries.keypair(pool, who.key, keypair.id), lambda: _from_events(request, keypair.id)
    )
    return respond(view, 201)


@ops("GET", "/v1/keypairs", summary="Your keypairs", list_of=shapes.Keypair, paged=True)
async def list_keypairs(request: web.Request) -> web.Response:
    return respond(await queries.keypairs(request.app[keys.POOL], principal(request).key, request.query))


@ops("GET", "/v1/keypairs/{keypair_id}", summary="One of your keypairs", response=shapes.Keypair)
async def get_keypair(request: web.Request) -> web.Response:
    keypair_id = path_uuid(request, "keypair_id")
    view = await queries.keypair(request.app[keys.POOL], principal(request).key, keypair_id)
    return respond(view if view is not None else await _from_events(request, keypair_id))


@ops("DELETE", "/v1/keypairs/{keypair_id}", summary="Remove one of your keypairs", status=204)
async def delete_keypair(request: web.Request) -> web.Response:
    who = principal(request)
    keypair_id = path_uuid(request, "keypair_id")
    await _from_events(request, keypair_id)  # theirs, and not deleted: else the same 404
    writer = request.app[keys.WRITER]
    _, seq = await writer.change(Keypair, keypair_id, lambda keypair: keypair.delete(), actor=who.key)
    await writer.projected(seq)
    return web.Response(status=204)


async def public_keys_of(request: web.Request, names: list[str]) -> tuple[str, ...]:
    """The public keys of the caller's keypairs `names`, in order; a 422 naming the first
    name that is not one of theirs."""
    if not names:
        return ()
    found = await queries.keypairs_named(request.app[keys.POOL], principal(request).key, list(names))
    for i, name in enumerate(names):
        if name not in found:
            raise Invalid(f"you have no keypair named {name!r}", [f"$.keypairs[{i}]"])
    return tuple(dict.fromkeys(found[name]["public_key"] for name in names))
