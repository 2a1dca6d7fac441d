"""/v1/images: what instances boot from. Everyone may list them; cloud admins add them."""

from __future__ import annotations

from aiohttp import web

from nebula_core.api import keys, queries, shapes
from nebula_core.api.auth import require_admin
from nebula_core.api.idempotency import new_id
from nebula_core.api.projects import path_uuid
from nebula_core.api.routing import Operations, body, respond
from nebula_core.domain import Image, create_with_id
from nebula_core.errors import Conflict, NotFound

ops = Operations()


@ops("POST", "/v1/images", summary="Register an image (cloud admins)", body=shapes.ImageCreate,
     response=shapes.Image, status=201)
async def create_image(request: web.Request) -> web.Response:
    who = require_admin(request)
    spec = await body(request, shapes.ImageCreate)
    pool = request.app[keys.POOL]
    if await pool.fetchval("SELECT true FROM images WHERE name = $1 AND NOT deleted", spec.name):
        raise Conflict(f"an image named {spec.name!r} exists")
    image = create_with_id(
        Image, new_id(request, "image"), name=spec.name, format=spec.format, source=spec.source,
        sha256=spec.sha256, size=spec.size, min_disk_gb=spec.min_disk_gb,
    )
    writer = request.app[keys.WRITER]
    await writer.projected(await writer.save(image, actor=who.key))
    row = await pool.fetchrow("SELECT * FROM images WHERE id = $1", image.id)
    return respond(queries.image_shape(row), 201)


@ops("GET", "/v1/images", summary="The images", list_of=shapes.Image,
     query={"limit": "1-500", "cursor": "from `next`"})
async def list_images(request: web.Request) -> web.Response:
    where = queries.Where()
    where.add("NOT g.deleted")
    order, limit = where.page(request.query, "g")
    rows = await request.app[keys.POOL].fetch(f"SELECT g.* FROM images g WHERE {where.sql()} {order}", *where.args)
    return respond(queries.paged(rows, limit, queries.image_shape))


@ops("GET", "/v1/images/{image_id}", summary="One image", response=shapes.Image)
async def get_image(request: web.Request) -> web.Response:
    image_id = path_uuid(request, "image_id")
    row = await request.app[keys.POOL].fetchrow("SELECT * FROM images WHERE id = $1 AND NOT deleted", image_id)
    if row is None:
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
