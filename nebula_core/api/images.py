"""/v1/images: what instances boot from. Everyone may list them; cloud admins add them."""

from __future__ import annotations

import uuid

from aiohttp import web

from nebula_core.api import keys, queries
from nebula_core.api.auth import require_admin
from nebula_core.api.idempotency import new_id
from nebula_core.api.resources import path_uuid, read_your_write
from nebula_core.api.routing import Operations, body, respond
from nebula_core.contract import http as shapes
from nebula_core.contract.errors import Conflict, NotFound
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


@ops(
    "POST",
    "/v1/images",
    summary="Register an image (cloud admins)",
    body=shapes.ImageCreate,
    response=shapes.Image,
    status=201,
)
async def create_image(request: web.Request) -> web.Response:
    who = require_admin(request)
    spec = await body(request, shapes.ImageCreate)
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
    )
    seq = await request.app[keys.WRITER].save(image, actor=who.key)
    view = await read_your_write(
        request, seq, lambda: queries.image(pool, image.id), lambda: _image_from_events(request, image.id)
    )
    return respond(view, 201)


@ops("GET", "/v1/images", summary="The images", list_of=shapes.Image, query={"limit": "1-500", "cursor": "from `next`"})
async def list_images(request: web.Request) -> web.Response:
    return respond(await queries.images(request.app[keys.POOL], request.query))


@ops("GET", "/v1/images/{image_id}", summary="One image", response=shapes.Image)
async def get_image(request: web.Request) -> web.Response:
    image_id = path_uuid(request, "image_id")
    row = await queries.image_row(request.app[keys.POOL], image_id)
    if row is None:
        # Not projected yet (the projector is stopped or behind): the events are the truth.
        return respond(await _image_from_events(request, image_id))
    if row["deleted"]:
        raise NotFound(f"image {image_id} not found")
    return respond(queries.image_shape(row))


@ops("DELETE", "/v1/images/{image_id}", summary="Remove an image (cloud admins)", status=204)
async def delete_image(request: web.Request) -> web.Response:
    who = require_admin(request)
    image_id = path_uuid(request, "image_id")
    writer = request.app[keys.WRITER]
    _, seq = await writer.change(Image, image_id, lambda image: image.delete(), actor=who.key)
    await writer.projected(seq)
    return web.Response(status=204)
