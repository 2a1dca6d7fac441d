"""Names to ids: a person types `demo` or `web-1`, the API wants UUIDs.

An argument that parses as a UUID is taken as an id without asking; otherwise the
matching list is read and the name must name exactly one thing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

from nebula_core.cli.client import Api, ApiError
from nebula_core.cli.session import Failed
from nebula_core.contract import http as shapes


class _Named(Protocol):
    id: uuid.UUID
    name: str


def as_uuid(ref: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(ref)
    except ValueError:
        return None


def _one(kind: str, ref: str, matches: Sequence[_Named]) -> uuid.UUID:
    if len(matches) == 1:
        return matches[0].id
    if not matches:
        raise Failed(f"no {kind} named {ref!r}")
    ids = ", ".join(str(m.id) for m in matches)
    raise Failed(f"{len(matches)} {kind}s are named {ref!r} ({ids}); give the id instead")


async def project_id(api: Api, ref: str) -> uuid.UUID:
    """A project by id or name (among the projects the caller may see)."""
    found = as_uuid(ref)
    if found is not None:
        return found
    projects = await api.all("/v1/projects", shapes.Project)
    return _one("project", ref, [p for p in projects if p.name == ref])


async def instance_id(api: Api, ref: str, project: uuid.UUID | None = None) -> uuid.UUID:
    """An instance by id or name: a live one first, else a deleted one of that name."""
    found = as_uuid(ref)
    if found is not None:
        return found
    scope = [("project_id", str(project))] if project else []
    live = await api.all("/v1/instances", shapes.Instance, scope)
    named = [i for i in live if i.name == ref]
    if not named:
        gone = await api.all("/v1/instances", shapes.Instance, [*scope, ("state", "deleted")])
        named = [i for i in gone if i.name == ref]
    return _one("instance", ref, named)


async def user_id(api: Api, ref: str) -> uuid.UUID:
    """A user by id or name; names are looked up in GET /v1/users, which is for cloud admins."""
    found = as_uuid(ref)
    if found is not None:
        return found
    try:
        users = await api.all("/v1/users", shapes.User)
    except ApiError as err:
        if err.status == 403:
            raise Failed(f"only cloud admins may look users up by name: give {ref!r}'s user id instead") from None
        raise
    return _one("user", ref, [u for u in users if u.name == ref])


async def image(api: Api, ref: str) -> shapes.Image:
    """An image by id or name (the newest of that name, as the API does for instances)."""
    found = as_uuid(ref)
    if found is not None:
        return await api.get(f"/v1/images/{found}", shapes.Image)
    named = [i for i in await api.all("/v1/images", shapes.Image) if i.name == ref]
    if not named:
        raise Failed(f"no image named {ref!r}")
    return max(named, key=lambda i: i.created_at)
