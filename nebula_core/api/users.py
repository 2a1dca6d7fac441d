"""/v1/users: people and their API tokens (shown once, stored hashed)."""

from __future__ import annotations

from aiohttp import web

from nebula_core.api import keys, queries
from nebula_core.api.auth import hash_token, new_token, principal, require_admin
from nebula_core.api.idempotency import new_id
from nebula_core.api.routing import Operations, body, respond
from nebula_core.contract import http as shapes
from nebula_core.contract.errors import Conflict
from nebula_core.domain import User, create_with_id

ops = Operations()


def _user_from_aggregate(user: User, token: str | None = None) -> shapes.User:
    return shapes.User(id=user.id, name=user.name, is_admin=user.is_admin, created_at=user.created_on, token=token)


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


@ops("GET", "/v1/users/me", summary="Who the token belongs to", response=shapes.User)
async def whoami(request: web.Request) -> web.Response:
    who = principal(request)
    if who.user_id is None:
        return respond({"id": None, "name": who.name, "is_admin": True})
    view = await queries.user(request.app[keys.POOL], who.user_id)
    if view is None:
        # Not projected yet (the projector is stopped or behind): the events are the truth.
        view = _user_from_aggregate(await request.app[keys.WRITER].store.load(User, who.user_id))
    return respond(view)
