"""Bearer tokens and who may do what.

Tokens are random (256 bits) and stored only as their sha256; the comparison with the
stored hash is constant-time. A project the caller is not a member of does not exist as
far as the caller can tell (404); a member whose role is too low for an action gets 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Literal

import asyncpg
import nats.js.errors
from aiohttp import web

from nebula_core.api import keys
from nebula_core.contract import subjects
from nebula_core.contract.errors import Forbidden, NotFound, Unauthorized
from nebula_core.contract.events import UserCreated, UserTokenRotated, decode_known
from nebula_core.contract.types import Role
from nebula_core.domain import User
from nebula_core.projections.checkpoint import checkpoint

ADMIN = "admin"
#: A token the users table does not know is looked for among at most this many user
#: events past the projection's checkpoint (users are few; a longer backlog gets a 401).
UNPROJECTED_USER_EVENTS_MAX = 64
_RANK = {"reader": 1, "member": 2, "admin": 3}
PUBLIC_ROUTES = web.AppKey("public_routes", frozenset)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the bootstrap admin, or a user (perhaps a cloud admin)."""

    user_id: uuid.UUID | None
    name: str
    is_admin: bool

    @property
    def key(self) -> str:
        """Stable identity for idempotency keys and audit (`actor` of events)."""
        return f"user:{self.user_id}" if self.user_id else ADMIN


PRINCIPAL = web.RequestKey("principal", Principal)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "nbl_" + secrets.token_urlsafe(32)


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


@web.middleware
async def authenticate(request: web.Request, handler):
    route = request.match_info.route
    if route.name in request.app[PUBLIC_ROUTES] or route.resource is None:
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("an 'Authorization: Bearer <token>' header is required")
    request[PRINCIPAL] = await _identify(request.app, token.strip())
    return await handler(request)


async def _identify(app: web.Application, token: str) -> Principal:
    given = hash_token(token)
    admin_token = app[keys.SETTINGS].admin_token
    if admin_token and hmac.compare_digest(given, hash_token(admin_token)):
        return Principal(user_id=None, name=ADMIN, is_admin=True)
    pool = app[keys.POOL]
    row = await _user_row(pool, given)
    if row is None:
        # The users table may lag the events: a user created a moment ago, the projector
        # stopped or behind. Read the checkpoint, ask the table again (a user projected in
        # between is there now), and look among the user events past the checkpoint.
        projected = await checkpoint(pool)
        row = await _user_row(pool, given)
        if row is None:
            return await _unprojected_user(app, given, projected)
    if not hmac.compare_digest(row["token_hash"], given):
        raise Unauthorized("invalid token")
    return Principal(user_id=row["id"], name=row["name"], is_admin=row["is_admin"])


async def _user_row(pool: asyncpg.Pool, given: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT id, name, is_admin, token_hash FROM users WHERE token_hash = $1", given)


async def _unprojected_user(app: web.Application, given: str, projected: int) -> Principal:
    """The user whose token hashes to `given`, from the user events after stream sequence
    `projected` (those the read models do not include yet); `Unauthorized` if none.

    The stream has no index by token hash, but it need not: only the unprojected tail can
    hold a token the table lacks, and the server filters it to user events, one direct get
    each — when the projector keeps up, a single get that finds nothing."""
    writer = app[keys.WRITER]
    seq = projected + 1
    for _ in range(UNPROJECTED_USER_EVENTS_MAX):
        try:
            raw = await writer.js.get_msg(
                subjects.EVENTS_STREAM, seq=seq, subject=subjects.aggregate_events("user"), next=True, direct=True
            )
        except nats.js.errors.NotFoundError:
            break
        assert raw.seq is not None and raw.data is not None
        event = decode_known(raw.data)
        if isinstance(event, (UserCreated, UserTokenRotated)) and hmac.compare_digest(event.token_hash, given):
            # The user's current token, as all its events tell (a later rotation revokes this one).
            user = await writer.store.load(User, event.id)
            if hmac.compare_digest(user.token_hash, given):
                return Principal(user_id=user.id, name=user.name, is_admin=user.is_admin)
            break
        seq = raw.seq + 1
    raise Unauthorized("invalid token")


def require_admin(request: web.Request) -> Principal:
    who = principal(request)
    if not who.is_admin:
        raise Forbidden("only a cloud administrator may do this")
    return who


async def project_role(request: web.Request, project_id: uuid.UUID) -> Role | Literal["cloud-admin"]:
    """The caller's role in a live project; `NotFound` if it does not exist or they may not see it."""
    pool = request.app[keys.POOL]
    who = principal(request)
    if who.is_admin:
        if not await pool.fetchval("SELECT true FROM projects WHERE id = $1 AND NOT deleted", project_id):
            raise NotFound(f"project {project_id} not found")
        return "cloud-admin"
    role = await pool.fetchval(
        """SELECT m.role FROM memberships m JOIN projects p ON p.id = m.project_id
           WHERE m.project_id = $1 AND m.user_id = $2 AND NOT p.deleted""",
        project_id,
        who.user_id,
    )
    if role is None:
        raise NotFound(f"project {project_id} not found")
    return role


async def require_role(request: web.Request, project_id: uuid.UUID, at_least: Role) -> None:
    role = await project_role(request, project_id)
    if role != "cloud-admin" and _RANK[role] < _RANK[at_least]:
        raise Forbidden(f"your role in project {project_id} is {role}; this needs {at_least}")
