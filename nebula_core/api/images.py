"""/v1/images: what instances boot from. Everyone may list them; cloud admins add and
remove them, and only they see where an image comes from (a source may carry credentials).

A source is checked when the image is registered (`image_sources`): a local one must lie
under an image root, an http(s) one may not name a forbidden address; each node checks
again, on its own filesystem and DNS, when it fetches.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import msgspec
from aiohttp import web

from nebula_core.api import keys, queries
from nebula_core.api.auth import Principal, principal, require_admin
from nebula_core.api.idempotency import new_id
from nebula_core.api.resources import path_uuid, read_your_write
from nebula_core.api.routing import Operations, body, respond
from nebula_core.contract import http as shapes
from nebula_core.contract.errors import Conflict, Invalid, NotFound
from nebula_core.contract.image_sources import SourceRefused, check_source
from nebula_core.domain import Image, create_with_id

ops = Operations()


def _image_from_aggregate(image: Image) -> shapes.Image:
    return shapes.Image(
        id=image.id,
        name=image.name,
        format=image.format,
        source=image.source,
        sha256=image.sha256,
        size=image.size,
        min_disk_gb=image.min_disk_gb,
        default_user=image.default_user,
        created_at=image.created_on,
    )


async def _image_from_events(request: web.Request, image_id: uuid.UUID) -> shapes.Image:
    """The image as its events show it (for one the projector has not reached yet)."""
    try:
        image = await request.app[keys.WRITER].store.load(Image, image_id)
    except NotFound:
        image = None
    if image is None or image.deleted:
        raise NotFound(f"image {image_id} not found")
    return _image_from_aggregate(image)


def _seen_by(who: Principal, image: shapes.Image) -> shapes.Image:
    """The image as `who` may see it: its source for cloud admins only."""
    return image if who.is_admin else msgspec.structs.replace(image, source=None)


async def _check_source(request: web.Request, source: str) -> None:
    """A 422 naming `$.source` for a source the image policy refuses (resolved on this host;
    each node resolves it again on its own when it fetches)."""
    try:
        await asyncio.to_thread(check_source, source, request.app[keys.SETTINGS].image_sources, os.path.realpath)
    except SourceRefused as err:
        raise Invalid(str(err), ["$.source"]) from err


@ops(
    "POST",
    "/v1/images",
    summary="Register an image (cloud admins)",
    body=shapes.ImageCreate,
    response=shapes.Image,
    status=201,
    errors=(403,),
    also_checked={"$.source": "a path under one of the image roots, or a URL of no address the image policy refuses"},
)
async def create_image(request: web.Request) -> web.Response:
    who = require_admin(request)
    spec = await body(request, shapes.ImageCreate)
    await _check_source(request, spec.source)
    pool = request.app[keys.POOL]
    if await pool.fetchval("SELECT true FROM images WHERE name = $1 AND NOT deleted", spec.name):
        raise Conflict(f"an image named {spec.name!r} exists")
    image = create_with_id(
        Image,
        new_id(request, "image"),
        name=spec.name,
        format=spec.format,
        source=spec.source,
        sha256=spec.sha256,
        size=spec.size,
        min_disk_gb=spec.min_disk_gb,
        default_user=spec.default_user,
    )
    seq = await request.app[keys.WRITER].save(image, actor=who.key)
    view = await read_your_write(
        request, seq, lambda: queries.image(pool, image.id), lambda: _image_from_events(request, image.id)
    )
    return respond(view, 201)


@ops("GET", "/v1/images", summary="The images", list_of=shapes.Image, paged=True)
async def list_images(request: web.Request) -> web.Response:
    who = principal(request)
    page = await queries.images(request.app[keys.POOL], request.query)
    page.items = [_seen_by(who, image) for image in page.items]
    return respond(page)


@ops("GET", "/v1/images/{image_id}", summary="One image", response=shapes.Image)
async def get_image(request: web.Request) -> web.Response:
    who = principal(request)
    image_id = path_uuid(request, "image_id")
    row = await queries.image_row(request.app[keys.POOL], image_id)
    if row is None:
        # Not projected yet (the projector is stopped or behind): the events are the truth.
        return respond(_seen_by(who, await _image_from_events(request, image_id)))
    if row["deleted"]:
        raise NotFound(f"image {image_id} not found")
    return respond(_seen_by(who, queries.image_shape(row)))


@ops("DELETE", "/v1/images/{image_id}", summary="Remove an image (cloud admins)", status=204, errors=(403, 409))
async def delete_image(request: web.Request) -> web.Response:
    who = require_admin(request)
    image_id = path_uuid(request, "image_id")
    writer = request.app[keys.WRITER]
    _, seq = await writer.change(Image, image_id, lambda image: image.delete(), actor=who.key)
    await writer.projected(seq)
    return web.Response(status=204)
