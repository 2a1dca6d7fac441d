"""Bearer tokens and who may do what.

Tokens are random (256 bits) and stored only as their sha256; the comparison with the
stored hash is constant-time. A user's token is looked up in the users table, and the
user's events the table does not include yet have the last word: a token rotated away, or
whose user is disabled or deleted, is refused by every API process as soon as the event is
appended, and a new user's or a new token works at once. A project the caller is not a
member of does not exist as far as the caller can tell (404); a member whose role is too
low for an action gets 403.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Literal

import asyncpg
import nats.errors
import nats.js.errors
from aiohttp import web

from nebula_core.api import keys
from nebula_core.api.errors import unavailable
from nebula_core.contract import subjects
from nebula_core.contract.errors import Forbidden, NotFound, Unauthorized
from nebula_core.contract.events import UserCreated, UserTokenRotated, decode_known
from nebula_core.contract.types import Role
from nebula_core.domain import User
from nebula_core.projections.checkpoint import checkpoint

log = logging.getLogger("nebula.api.auth")

ADMIN = "admin"
#: A token the users table does not know is looked for among at most this many user
#: events past the projection's checkpoint (users are few; a longer backlog gets a 401).
UNPROJECTED_USER_EVENTS_MAX = 64
_RANK = {"reader": 1, "member": 2, "admin": 3}
DISABLED = "this token's user is disabled"
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
    if await _last_user_event(app, row["id"]) > row["last_seq"]:
        # The user changed since the table was written (a rotation, disabling or deletion
        # the projector has not reached): their events decide, so a revoked token is
        # refused at once by every API process, whatever the projection lag.
        return _admitted(await app[keys.WRITER].store.load(User, row["id"]), given)
    if not hmac.compare_digest(row["token_hash"], given):
        raise Unauthorized("invalid token")
    if row["disabled"]:
        raise Unauthorized(DISABLED)
    return Principal(user_id=row["id"], name=row["name"], is_admin=row["is_admin"])


async def _user_row(pool: asyncpg.Pool, given: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT id, name, is_admin, disabled, token_hash, last_seq FROM users WHERE token_hash = $1", given
    )


async def _last_user_event(app: web.Application, user_id: uuid.UUID) -> int:
    """The stream sequence of the user's last event: one direct get of the last message on
    its subject (0 if it has none, which a projected user cannot be).

    While NATS is away it says 0, and the read model's answer stands: what Postgres alone
    answers is still answered. No event can be appended meanwhile (nor projected), so only
    a change appended just before NATS went away and not projected yet goes unseen. A
    client that is not connected is not asked (its request would wait out its timeout)."""
    if not app[keys.NATS_CLIENT].is_connected:
        return 0
    try:
        raw = await app[keys.WRITER].js.get_msg(
            subjects.EVENTS_STREAM, subject=subjects.event_subject("user", user_id), direct=True
        )
    except nats.js.errors.NotFoundError:
        return 0
    except nats.errors.Error as err:
        if unavailable(err) is None:
            raise
        log.debug("auth: NATS unavailable, user %s judged by the read model: %r", user_id, err)
        return 0
    return int(raw.seq or 0)


def _admitted(user: User, given: str) -> Principal:
    """The caller, if `given` is the hash of the user's current token and the user may use it."""
    if user.deleted or not hmac.compare_digest(user.token_hash, given):
        raise Unauthorized("invalid token")
    if user.disabled:
        raise Unauthorized(DISABLED)
    return Principal(user_id=user.id, name=user.name, is_admin=user.is_admin)


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
            # The user's current state, as all its events tell: a later rotation revokes
            # this token, a disabling suspends it, a deletion ends it.
            return _admitted(await writer.store.load(User, event.id), given)
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
