"""The read side: parameterised SQL over the read models, and the rows as API shapes."""

from __future__ import annotations

import base64
import json
import typing
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from nebula_core.api.auth import Principal
from nebula_core.contract import http as shapes
from nebula_core.contract.errors import Invalid
from nebula_core.contract.types import InstanceState, Quotas

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


# --- cursors ---------------------------------------------------------------------------


def encode_cursor(created_at: datetime, row_id: Any) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created_at), str(row_id)
    except (ValueError, TypeError) as err:
        raise Invalid("not a cursor this API gave out", ["query:cursor"]) from err


def limit_of(query: Any) -> int:
    raw = query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise Invalid(f"limit must be a whole number from 1 to {MAX_LIMIT}", ["query:limit"])
    return int(raw)


class Where:
    """A WHERE clause built from fixed fragments and numbered parameters — never from user text."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, fragment: str, *values: Any) -> None:
        """`fragment` uses `{}` for each value, in order; they become $n parameters."""
        numbers = []
        for value in values:
            self.args.append(value)
            numbers.append(f"${len(self.args)}")
        self.clauses.append(fragment.format(*numbers))

    def sql(self) -> str:
        return " AND ".join(self.clauses) if self.clauses else "true"

    def page(self, query: Any, table_alias: str) -> tuple[str, int]:
        """Keyset pagination on (created_at, id); returns (extra SQL, limit)."""
        limit = limit_of(query)
        cursor = query.get("cursor")
        if cursor:
            created_at, row_id = decode_cursor(cursor)
            self.add(f"({table_alias}.created_at, {table_alias}.id::text) > ({{}}, {{}})", created_at, row_id)
        return f"ORDER BY {table_alias}.created_at, {table_alias}.id LIMIT {limit + 1}", limit


def paged(rows: list[asyncpg.Record], limit: int, convert: Any) -> shapes.Page:
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return shapes.Page(items=[convert(r) for r in rows], next=next_cursor)


def tag_filters(where: Where, query: Any, alias: str) -> None:
    for tag in query.getall("tag", []):
        key, sep, value = tag.partition("=")
        if not key:
            raise Invalid("tag filters look like tag=key or tag=key=value", ["query:tag"])
        if sep:
            where.add(f"{alias}.tags @> {{}}::jsonb", {key: value})
        else:
            where.add(f"{alias}.tags ? {{}}", key)


# --- projects --------------------------------------------------------------------------


def project_shape(row: asyncpg.Record, usage: shapes.Usage | None = None) -> shapes.Project:
    return shapes.Project(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        tags=row["tags"],
        quotas=msgspec.convert(row["quotas"], Quotas),
        usage=usage or shapes.Usage(),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


async def usage(conn: asyncpg.Pool | asyncpg.Connection, project_id: uuid.UUID) -> shapes.Usage:
    """What the project holds now: every instance not deleted counts."""
    row = await conn.fetchrow(
        """SELECT count(*) AS instances, coalesce(sum(vcpus), 0) AS vcpus, coalesce(sum(ram_mb), 0) AS ram_mb,
                  coalesce(sum(disk_gb), 0) AS disk_gb
           FROM instances WHERE project_id = $1 AND state <> 'deleted'""",
        project_id,
    )
    return shapes.Usage(**dict(row))


async def quotas(conn: asyncpg.Pool | asyncpg.Connection, project_id: uuid.UUID) -> Quotas:
    return msgspec.convert(await conn.fetchval("SELECT quotas FROM projects WHERE id = $1", project_id), Quotas)


async def project(pool: asyncpg.Pool, project_id: uuid.UUID) -> shapes.Project | None:
    row = await pool.fetchrow("SELECT * FROM projects WHERE id = $1 AND NOT deleted", project_id)
    return None if row is None else project_shape(row, await usage(pool, project_id))


async def projects(pool: asyncpg.Pool, who: Principal, query: Any) -> shapes.Page:
    where = Where()
    where.add("NOT p.deleted")
    if not who.is_admin:
        where.add("p.id IN (SELECT project_id FROM memberships WHERE user_id = {})", who.user_id)
    tag_filters(where, query, "p")
    order, limit = where.page(query, "p")
    rows = await pool.fetch(f"SELECT p.* FROM projects p WHERE {where.sql()} {order}", *where.args)
    return paged(rows, limit, project_shape)


# --- instances -------------------------------------------------------------------------


def instance_shape(row: asyncpg.Record) -> shapes.Instance:
    return shapes.Instance(
        id=row["id"],
        project_id=row["project_id"],
        name=row["name"],
        description=row["description"],
        tags=row["tags"],
        region=row["region"],
        vcpus=row["vcpus"],
        ram_mb=row["ram_mb"],
        disk_gb=row["disk_gb"],
        image=row["image_id"],
        state=row["state"],
        node_id=row["node_id"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        booted_at=row["booted_at"],
        version=row["version"],
    )


async def instance(pool: asyncpg.Pool, instance_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM instances WHERE id = $1", instance_id)


async def instances(pool: asyncpg.Pool, who: Principal, query: Any) -> shapes.Page:
    where = Where()
    if not who.is_admin:
        where.add(
            """i.project_id IN (SELECT m.project_id FROM memberships m JOIN projects p ON p.id = m.project_id
                                WHERE m.user_id = {} AND NOT p.deleted)""",
            who.user_id,
        )
    if "state" in query:
        if query["state"] not in typing.get_args(InstanceState):
            raise Invalid(f"state must be one of {', '.join(typing.get_args(InstanceState))}", ["query:state"])
        where.add("i.state = {}", query["state"])
    else:
        where.add("i.state <> 'deleted'")
    if "region" in query:
        where.add("i.region = {}", query["region"])
    if "project_id" in query:
        try:
            where.add("i.project_id = {}", uuid.UUID(query["project_id"]))
        except ValueError as err:
            raise Invalid("project_id must be a UUID", ["query:project_id"]) from err
    if "node_id" in query and who.is_admin:
        where.add("i.node_id = {}", query["node_id"])
    tag_filters(where, query, "i")
    order, limit = where.page(query, "i")
    rows = await pool.fetch(f"SELECT i.* FROM instances i WHERE {where.sql()} {order}", *where.args)
    return paged(rows, limit, instance_shape)


# --- images, users ------------------------------------------------------------------------


def image_shape(row: asyncpg.Record) -> shapes.Image:
    return shapes.Image(
        id=row["id"],
        name=row["name"],
        format=row["format"],
        source=row["source"],
        sha256=row["sha256"],
        size=row["size"],
        min_disk_gb=row["min_disk_gb"],
        created_at=row["created_at"],
    )


async def image_by_ref(pool: asyncpg.Pool, ref: str) -> asyncpg.Record | None:
    """An image by id, or by name (the newest of that name)."""
    try:
        return await pool.fetchrow("SELECT * FROM images WHERE id = $1 AND NOT deleted", uuid.UUID(ref))
    except ValueError:
        return await pool.fetchrow(
            "SELECT * FROM images WHERE name = $1 AND NOT deleted ORDER BY created_at DESC LIMIT 1", ref
        )


def user_shape(row: asyncpg.Record) -> shapes.User:
    return shapes.User(id=row["id"], name=row["name"], is_admin=row["is_admin"], created_at=row["created_at"])
