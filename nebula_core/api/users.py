"""/v1/users: people and their API tokens (shown once, stored hashed).

Cloud admins create, list, disable, enable and delete users; a user's token is rotated by
the user or by a cloud admin. Disabling is a PATCH of the user's `disabled` field (a state
of the user, as an account is enabled or not in other clouds), so it is idempotent and
undone by the same call with `false`. What a token may do is decided by `auth`, which reads
the user's events past the read model: a token rotated away, or whose user is disabled or
deleted, is refused as soon as the event is appended.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from aiohttp import web

from nebula_core.api import keys, queries
from nebula_core.api.auth import hash_token, new_token, principal, require_admin
from nebula_core.api.idempotency import new_id
from nebula_core.api.resources import path_uuid, read_your_write
from nebula_core.api.routing import Operations, body, respond
from nebula_core.contract import http as shapes
from nebula_core.contract.errors import Conflict, NotFound
from nebula_core.domain import User, create_with_id

ops = Operations()


def _user_from_aggregate(user: User, token: str | None = None) -> shapes.User:
    return shapes.User(
        id=user.id,
        name=user.name,
        is_admin=user.is_admin,
        disabled=user.disabled,
        created_at=user.created_on,
        token=token,
    )


async def _user_from_events(request: web.Request, user_id: uuid.UUID) -> shapes.User:
    """The user as its events show it; `NotFound` for one that does not exist or is deleted."""
    try:
        user = await request.app[keys.WRITER].store.load(User, user_id)
    except NotFound:
        user = None
    if user is None or user.deleted:
        raise NotFound(f"user {user_id} not found")
    return _user_from_aggregate(user)


def _live(apply: Callable[[User], None]) -> Callable[[User], None]:
    """`apply`, for a user that is not deleted (a deleted one is `NotFound`, as an unknown one)."""

    def on(user: User) -> None:
        if user.deleted:
            raise NotFound(f"user {user.id} not found")
        apply(user)

    return on


async def _changed(request: web.Request, user_id: uuid.UUID, apply: Callable[[User], None]) -> int:
    """Apply a command to the user; the stream sequence of what it recorded (0: nothing)."""
    _, seq = await request.app[keys.WRITER].change(User, user_id, _live(apply), actor=principal(request).key)
    return seq


async def _answer(request: web.Request, user_id: uuid.UUID, seq: int, token: str | None = None) -> web.Response:
    """The user once the read models include `seq` (else as the events show it)."""
    pool = request.app[keys.POOL]
    view = await read_your_write(
        request, seq, lambda: queries.user(pool, user_id), lambda: _user_from_events(request, user_id)
    )
    view.token = token
    return respond(view)


def _self_or_admin(request: web.Request, user_id: uuid.UUID) -> None:
    """A user sees and rotates only themself; to anyone else another user does not exist."""
    who = principal(request)
    if not (who.is_admin or who.user_id == user_id):
        raise NotFound(f"user {user_id} not found")


@ops(
    "POST",
    "/v1/users",
    summary="Create a user and its API token (cloud admins); the token is shown once",
    body=shapes.UserCreate,
    response=shapes.User,
    status=201,
    errors=(403,),
)
async def create_user(request: web.Request) -> web.Response:
    who = require_admin(request)
    spec = await body(request, shapes.UserCreate)
    pool = request.app[keys.POOL]
    if await pool.fetchval("SELECT true FROM users WHERE name = $1", spec.name):
        raise Conflict(f"a user named {spec.name!r} exists")
    token = new_token()
    user = create_with_id(
        User, new_id(request, "user"), name=spec.name, token_hash=hash_token(token), is_admin=spec.is_admin
    )
    writer = request.app[keys.WRITER]
    # The answer is the aggregate's, projected or not. The wait lets what reads the users
    # table see the user at once when the projector keeps up; when it does not, the token
    # authenticates anyway (auth looks among the events the projector has not reached).
    await writer.projected(await writer.save(user, actor=who.key))
    return respond(_user_from_aggregate(user, token=token), 201)


@ops(
    "GET",
    "/v1/users",
    summary="Every user (cloud admins)",
    list_of=shapes.User,
    paged=True,
    errors=(403,),
)
async def list_users(request: web.Request) -> web.Response:
    require_admin(request)
    return respond(await queries.users(request.app[keys.POOL], request.query))


@ops(
    "GET",
    "/v1/users/me",
    summary="Who the token belongs to: a user, or the bootstrap admin (no id, no creation time)",
    response=shapes.Me,
)
async def whoami(request: web.Request) -> web.Response:
    who = principal(request)
    if who.user_id is None:
        return respond(shapes.Me(id=None, name=who.name, is_admin=who.is_admin, disabled=False, created_at=None))
    view = await queries.user(request.app[keys.POOL], who.user_id)
    if view is None:
        # Not projected yet (the projector is stopped or behind): the events are the truth.
        view = await _user_from_events(request, who.user_id)
    return respond(
        shapes.Me(
            id=view.id, name=view.name, is_admin=view.is_admin, disabled=view.disabled, created_at=view.created_at
        )
    )


@ops("GET", "/v1/users/{user_id}", summary="One user (cloud admins, or the user themself)", response=shapes.User)
async def get_user(request: web.Request) -> web.Response:
    user_id = path_uuid(request, "user_id")
    _self_or_admin(request, user_id)
    view = await queries.user(request.app[keys.POOL], user_id)
    if view is None:
        # Not projected yet, or deleted: the events tell which.
        view = await _user_from_events(request, user_id)
    return respond(view)


@ops(
    "PATCH",
    "/v1/users/{user_id}",
    summary="Disable or enable a user (cloud admins): with `disabled: true` the user's token is refused at once, "
    "by every API process, until `disabled: false`; memberships stay. Repeating either changes nothing",
    body=shapes.UserPatch,
    response=shapes.User,
    errors=(403,),
)
async def patch_user(request: web.Request) -> web.Response:
    require_admin(request)
    user_id = path_uuid(request, "user_id")
    spec = await body(request, shapes.UserPatch)

    def apply(user: User) -> None:
        if spec.disabled is True:
            user.disable()
        elif spec.disabled is False:
            user.enable()

    return await _answer(request, user_id, await _changed(request, user_id, apply))


@ops(
    "DELETE",
    "/v1/users/{user_id}",
    summary="Delete a user (cloud admins): the token is refused at once and the user's memberships go; "
    "the name may be used again",
    status=204,
    errors=(403,),
)
async def delete_user(request: web.Request) -> web.Response:
    require_admin(request)
    user_id = path_uuid(request, "user_id")
    seq = await _changed(request, user_id, lambda user: user.delete())
    await request.app[keys.WRITER].projected(seq)
    return web.Response(status=204)


@ops(
    "POST",
    "/v1/users/{user_id}/token",
    summary="Rotate a user's token (the user themself, or a cloud admin): the new token is in this answer only, "
    "and the old one is refused at once",
    response=shapes.User,
)
async def rotate_token(request: web.Request) -> web.Response:
    user_id = path_uuid(request, "user_id")
    _self_or_admin(request, user_id)
    token = new_token()
    seq = await _changed(request, user_id, lambda user: user.rotate_token(hash_token(token)))
    return await _answer(request, user_id, seq, token=token)
