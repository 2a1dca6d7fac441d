"""/v1/projects and their members."""

from __future__ import annotations

import uuid

from aiohttp import web

from nebula_core.api import keys, queries
from nebula_core.api.auth import principal, require_admin, require_role
from nebula_core.api.idempotency import new_id
from nebula_core.api.project_lock import project_lock
from nebula_core.api.resources import etag, if_match, path_uuid, read_your_write
from nebula_core.api.routing import Operations, Query, body, respond
from nebula_core.contract import http as shapes
from nebula_core.contract.errors import Conflict, Forbidden, Invalid, NotFound
from nebula_core.domain import Project, User, create_with_id

ops = Operations()


def _project_from_aggregate(project: Project, usage: shapes.Usage) -> shapes.Project:
    return shapes.Project(
        id=project.id,
        name=project.name,
        description=project.description,
        tags=dict(project.tags),
        quotas=project.quotas,
        usage=usage,
        created_at=project.created_on,
        updated_at=project.modified_on,
        version=project.version,
    )


async def _project_from_events(request: web.Request, project_id: uuid.UUID) -> shapes.Project:
    """The live project as its events show it, if the caller may see it (else `NotFound`):
    cloud admins see every project, users those the events make them a member of."""
    try:
        project = await request.app[keys.WRITER].store.load(Project, project_id)
    except NotFound:
        project = None
    who = principal(request)
    if project is None or project.deleted or not (who.is_admin or who.user_id in project.members):
        raise NotFound(f"project {project_id} not found")
    return _project_from_aggregate(project, await queries.usage(request.app[keys.POOL], project_id))


async def project_answer(request: web.Request, project_id: uuid.UUID, seq: int, status: int) -> web.Response:
    pool = request.app[keys.POOL]
    view = await read_your_write(
        request, seq, lambda: queries.project(pool, project_id), lambda: _project_from_events(request, project_id)
    )
    return respond(view, status, headers=etag(view.version))


@ops(
    "POST",
    "/v1/projects",
    summary="Create a project (cloud admins)",
    body=shapes.ProjectCreate,
    response=shapes.Project,
    status=201,
    errors=(403,),
)
async def create_project(request: web.Request) -> web.Response:
    who = require_admin(request)
    spec = await body(request, shapes.ProjectCreate)
    project = create_with_id(
        Project,
        new_id(request, "project"),
        name=spec.name,
        description=spec.description,
        tags=spec.tags,
        quotas=spec.quotas,
    )
    seq = await request.app[keys.WRITER].save(project, actor=who.key)
    return await project_answer(request, project.id, seq, 201)


@ops(
    "GET",
    "/v1/projects",
    summary="The projects the caller is a member of (all, for admins)",
    list_of=shapes.Project,
    query={"tag": Query("Only those with this tag; repeated, with each", shapes.TagFilter, repeatable=True)},
    paged=True,
)
async def list_projects(request: web.Request) -> web.Response:
    return respond(await queries.projects(request.app[keys.POOL], principal(request), request.query))


@ops(
    "GET", "/v1/projects/{project_id}", summary="One project, with what it uses of its quotas", response=shapes.Project
)
async def get_project(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "project_id")
    pool = request.app[keys.POOL]
    view: shapes.Project | None
    try:
        await require_role(request, project_id, "reader")
    except NotFound:
        if await pool.fetchval("SELECT true FROM projects WHERE id = $1", project_id):
            raise  # projected: the read models' answer stands
        # Not projected yet (the projector is stopped or behind): the events are the truth.
        view = await _project_from_events(request, project_id)
    else:
        view = await queries.project(pool, project_id)
    if view is None:
        raise NotFound(f"project {project_id} not found")
    return respond(view, headers=etag(view.version))


@ops(
    "PATCH",
    "/v1/projects/{project_id}",
    summary="Change a project (If-Match: its ETag, optional)",
    body=shapes.ProjectPatch,
    response=shapes.Project,
    errors=(403,),
    if_match=True,
)
async def patch_project(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "project_id")
    await require_role(request, project_id, "admin")
    spec = await body(request, shapes.ProjectPatch)
    who = principal(request)
    if spec.quotas is not None and not who.is_admin:
        raise Forbidden("only a cloud administrator may change a project's quotas")
    _, seq = await request.app[keys.WRITER].change(
        Project,
        project_id,
        lambda p: p.update(name=spec.name, description=spec.description, tags=spec.tags, quotas=spec.quotas),
        actor=who.key,
        expected_version=if_match(request),
    )
    return await project_answer(request, project_id, seq, 200)


@ops("DELETE", "/v1/projects/{project_id}", summary="Delete an empty project", status=204, errors=(403,), if_match=True)
async def delete_project(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "project_id")
    await require_role(request, project_id, "admin")
    writer = request.app[keys.WRITER]
    # The lock instance creators take: none is between its count and its append, and none
    # creates in the project once it is deleted.
    async with project_lock(writer, project_id) as conn:
        held = await queries.usage(conn, project_id)
        if held.instances:
            raise Conflict(f"project {project_id} still holds {held.instances} instance(s); delete them first")
        _, seq = await writer.change(
            Project, project_id, lambda p: p.delete(), actor=principal(request).key, expected_version=if_match(request)
        )
        await writer.projected(seq, using=conn)
    return web.Response(status=204)


@ops(
    "POST",
    "/v1/projects/{project_id}/members",
    summary="Give a user a role in the project",
    body=shapes.MemberAdd,
    response=shapes.Member,
    status=201,
    errors=(403,),
    also_checked={"$.user_id": "names a user that exists"},
)
async def add_member(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "project_id")
    await require_role(request, project_id, "admin")
    spec = await body(request, shapes.MemberAdd)
    if not await request.app[keys.POOL].fetchval("SELECT true FROM users WHERE id = $1", spec.user_id):
        try:  # a user just created, not projected yet?
            await request.app[keys.WRITER].store.load(User, spec.user_id)
        except NotFound:
            raise Invalid(f"no user {spec.user_id}", ["$.user_id"]) from None
    writer = request.app[keys.WRITER]
    _, seq = await writer.change(
        Project, project_id, lambda p: p.set_member(spec.user_id, spec.role), actor=principal(request).key
    )
    await writer.projected(seq)
    return respond(shapes.Member(user_id=spec.user_id, role=spec.role), 201)


@ops("GET", "/v1/projects/{project_id}/members", summary="The project's members and their roles", list_of=shapes.Member)
async def list_members(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "project_id")
    await require_role(request, project_id, "reader")
    return respond(await queries.members(request.app[keys.POOL], project_id))


@ops(
    "DELETE",
    "/v1/projects/{project_id}/members/{user_id}",
    summary="Take a user out of the project",
    status=204,
    errors=(403,),
)
async def remove_member(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "project_id")
    await require_role(request, project_id, "admin")
    user_id = path_uuid(request, "user_id")
    writer = request.app[keys.WRITER]
    _, seq = await writer.change(Project, project_id, lambda p: p.remove_member(user_id), actor=principal(request).key)
    await writer.projected(seq)
    return web.Response(status=204)
