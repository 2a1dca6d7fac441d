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

from aiohttp import web

from nebula_core.api import keys
from nebula_core.contract.types import Role
from nebula_core.errors import Forbidden, NotFound, Unauthorized

ADMIN = "admin"
_RANK = {"reader": 1, "member": 2, "admin": 3}
PUBLIC_ROUTES = web.AppKey("public_routes", frozenset)
PRINCIPAL = web.RequestKey("principal", "Principal")


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


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "nbl_" + secrets.token_urlsafe(32)


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


@web.middleware
async def authenticate(request: web.Request, handler):  # type: ignore[no-untyped-def]
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
    row = await app[keys.POOL].fetchrow("SELECT id, name, is_admin, token_hash FROM users WHERE token_hash = $1", given)
    if row is None or not hmac.compare_digest(row["token_hash"], given):
        raise Unauthorized("invalid token")
    return Principal(user_id=row["id"], name=row["name"], is_admin=row["is_admin"])


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
    return role  # type: ignore[no-any-return]


async def require_role(request: web.Request, project_id: uuid.UUID, at_least: Role) -> None:
    role = await project_role(request, project_id)
    if role != "cloud-admin" and _RANK[role] < _RANK[at_least]:
        raise Forbidden(f"your role in project {project_id} is {role}; this needs {at_least}")
