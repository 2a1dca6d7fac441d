"""The read side: parameterised SQL over the read models, and the rows as API shapes.

Each resource has one SELECT and one row → shape function, and both its list and its
single answer are built from them, so the two cannot disagree."""

from __future__ import annotations

import base64
import json
import re
import typing
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from nebula_core.api.auth import Principal
from nebula_core.contract import http as shapes
from nebula_core.contract.errors import Invalid
from nebula_core.contract.kv import Heartbeat
from nebula_core.contract.types import InstanceAddress, InstanceState, Quotas

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


# --- cursors ---------------------------------------------------------------------------


def encode_cursor(created_at: datetime, row_id: Any) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created_at), str(uuid.UUID(row_id))
    except (ValueError, TypeError, AttributeError) as err:
        raise Invalid("not a cursor this API gave out", ["query:cursor"]) from err


#: What no query parameter may hold: control characters (C0, DEL, C1) and noncharacters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ufffe\uffff]")


def text_param(query: Any, name: str) -> str | None:
    """The query parameter `name` (None if absent), refused naming it if it holds a control character."""
    value: str | None = query.get(name)
    return None if value is None else plain_text(value, name)


def plain_text(value: str, name: str) -> str:
    """`value`, of the query parameter `name`, refused naming it if it holds a control character."""
    if _CONTROL.search(value):
        raise Invalid(f"{name} may not hold control characters", [f"query:{name}"])
    return value


def whole_number(raw: str) -> bool:
    """`raw` is ASCII digits only (str.isdigit() also takes '²', which int() refuses)."""
    return raw.isascii() and raw.isdigit()


def limit_of(query: Any) -> int:
    raw = query.get("limit", str(DEFAULT_LIMIT))
    if not whole_number(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise Invalid(f"limit must be a whole number from 1 to {MAX_LIMIT}", ["query:limit"])
    return int(raw)


class Where:
    """A WHERE clause built from fixed fragments and numbered parameters — never from user text."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def param(self, value: Any) -> str:
        """`value` as the next numbered parameter; returns its placeholder (`$n`)."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, fragment: str, *values: Any) -> None:
        """`fragment` uses `{}` for each value, in order; they become $n parameters."""
        self.clauses.append(fragment.format(*[self.param(value) for value in values]))

    def sql(self) -> str:
        return " AND ".join(self.clauses) if self.clauses else "true"

    def page(self, query: Any, table_alias: str) -> tuple[str, int]:
        """Keyset pagination on (created_at, id); returns (ORDER BY and LIMIT, limit).
        Call it last: the LIMIT is a parameter after every other."""
        limit = limit_of(query)
        cursor = query.get("cursor")
        if cursor:
            created_at, row_id = decode_cursor(cursor)
            self.add(f"({table_alias}.created_at, {table_alias}.id::text) > ({{}}, {{}})", created_at, row_id)
        return f"ORDER BY {table_alias}.created_at, {table_alias}.id LIMIT {self.param(limit + 1)}", limit


def paged(rows: list[asyncpg.Record], limit: int, convert: Any) -> shapes.Page:
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return shapes.Page(items=[convert(r) for r in rows], next=next_cursor)


async def page_of(pool: asyncpg.Pool, select: str, where: Where, query: Any, alias: str, convert: Any) -> shapes.Page:
    """One page of `select` (whose table is `alias`) filtered by `where`, each row converted."""
    order, limit = where.page(query, alias)
    return paged(await pool.fetch(f"{select} WHERE {where.sql()} {order}", *where.args), limit, convert)


def tag_filters(where: Where, query: Any, alias: str) -> None:
    for tag in query.getall("tag", []):
        key, sep, value = plain_text(tag, "tag").partition("=")
        if not key:
            raise Invalid("tag filters look like tag=key or tag=key=value", ["query:tag"])
        if sep:
            where.add(f"{alias}.tags @> {{}}::jsonb", {key: value})
        else:
            where.add(f"{alias}.tags ? {{}}", key)


# --- projects --------------------------------------------------------------------------

#: What a project holds now: every instance not deleted counts. `{project}`: the project's id.
_USAGE = """SELECT count(*) AS instances, coalesce(sum(vcpus), 0) AS vcpus, coalesce(sum(ram_mb), 0) AS ram_mb,
                   coalesce(sum(disk_gb), 0) AS disk_gb
            FROM instances WHERE project_id = {project} AND state <> 'deleted'"""

#: Every project answer, one or a page of them: the row and what it holds (as `usage`).
_PROJECTS = f"SELECT p.*, to_jsonb(u) AS usage FROM projects p CROSS JOIN LATERAL ({_USAGE.format(project='p.id')}) u"


def project_shape(row: asyncpg.Record) -> shapes.Project:
    """A row of `_PROJECTS` as the API shows it."""
    return shapes.Project(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        tags=row["tags"],
        quotas=msgspec.convert(row["quotas"], Quotas),
        usage=msgspec.convert(row["usage"], shapes.Usage),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


async def usage(conn: asyncpg.Pool | asyncpg.Connection, project_id: uuid.UUID) -> shapes.Usage:
    """What the project holds now (the `usage` of its answer)."""
    row = await conn.fetchrow(_USAGE.format(project="$1"), project_id)
    return shapes.Usage(**dict(row))


async def quotas(conn: asyncpg.Pool | asyncpg.Connection, project_id: uuid.UUID) -> Quotas:
    return msgspec.convert(await conn.fetchval("SELECT quotas FROM projects WHERE id = $1", project_id), Quotas)


def project_filters(who: Principal, query: Any) -> Where:
    """The live projects `who` may see (all, for cloud admins), narrowed by `query`."""
    where = Where()
    where.add("NOT p.deleted")
    if not who.is_admin:
        where.add("p.id IN (SELECT project_id FROM memberships WHERE user_id = {})", who.user_id)
    tag_filters(where, query, "p")
    return where


async def project(pool: asyncpg.Pool, project_id: uuid.UUID) -> shapes.Project | None:
    """The live project (whoever asks: the caller's role is checked before)."""
    row = await pool.fetchrow(f"{_PROJECTS} WHERE p.id = $1 AND NOT p.deleted", project_id)
    return None if row is None else project_shape(row)


async def projects(pool: asyncpg.Pool, who: Principal, query: Any) -> shapes.Page:
    return await page_of(pool, _PROJECTS, project_filters(who, query), query, "p", project_shape)


# --- members ---------------------------------------------------------------------------

_MEMBERS = "SELECT m.user_id, m.role FROM memberships m"


def member_shape(row: asyncpg.Record) -> shapes.Member:
    return shapes.Member(user_id=row["user_id"], role=row["role"])


async def members(pool: asyncpg.Pool, project_id: uuid.UUID) -> shapes.Page:
    rows = await pool.fetch(f"{_MEMBERS} WHERE m.project_id = $1 ORDER BY m.since, m.user_id", project_id)
    return shapes.Page(items=[member_shape(r) for r in rows], next=None)


# --- instances -------------------------------------------------------------------------

_INSTANCES = "SELECT i.* FROM instances i"


def instance_shape(row: asyncpg.Record) -> shapes.Instance:
    """A row of `_INSTANCES` as the API shows it."""
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
        addresses=msgspec.convert(row["addresses"], list[InstanceAddress]),
        version=row["version"],
    )


async def instance(pool: asyncpg.Pool, instance_id: uuid.UUID) -> asyncpg.Record | None:
    """The instance's row, deleted or not (its `project_id` decides who may see it)."""
    return await pool.fetchrow(f"{_INSTANCES} WHERE i.id = $1", instance_id)


def instance_filters(who: Principal, query: Any) -> Where:
    """The instances `who` may see (all, for cloud admins), narrowed by `query`: one
    `state` (else every one not deleted), `region`, `project_id`, `node_id` (cloud
    admins only) and `tag`s."""
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
    if (region := text_param(query, "region")) is not None:
        where.add("i.region = {}", region)
    if "project_id" in query:
        try:
            where.add("i.project_id = {}", uuid.UUID(query["project_id"]))
        except ValueError as err:
            raise Invalid("project_id must be a UUID", ["query:project_id"]) from err
    if (node_id := text_param(query, "node_id")) is not None and who.is_admin:
        where.add("i.node_id = {}", node_id)
    tag_filters(where, query, "i")
    return where


async def instances(pool: asyncpg.Pool, who: Principal, query: Any) -> shapes.Page:
    return await page_of(pool, _INSTANCES, instance_filters(who, query), query, "i", instance_shape)


# --- images ----------------------------------------------------------------------------

_IMAGES = "SELECT g.* FROM images g"


def image_shape(row: asyncpg.Record) -> shapes.Image:
    """A row of `_IMAGES` as the API shows it."""
    return shapes.Image(
        id=row["id"],
        name=row["name"],
        format=row["format"],
        source=row["source"],
        sha256=row["sha256"],
        size=row["size"],
        min_disk_gb=row["min_disk_gb"],
        default_user=row["default_user"],
        created_at=row["created_at"],
    )


async def image_row(pool: asyncpg.Pool, image_id: uuid.UUID) -> asyncpg.Record | None:
    """The image's row, deleted or not (None: not projected, or never registered)."""
    return await pool.fetchrow(f"{_IMAGES} WHERE g.id = $1", image_id)


async def image(pool: asyncpg.Pool, image_id: uuid.UUID) -> shapes.Image | None:
    row = await pool.fetchrow(f"{_IMAGES} WHERE g.id = $1 AND NOT g.deleted", image_id)
    return None if row is None else image_shape(row)


async def images(pool: asyncpg.Pool, query: Any) -> shapes.Page:
    where = Where()
    where.add("NOT g.deleted")
    return await page_of(pool, _IMAGES, where, query, "g", image_shape)


async def image_by_ref(pool: asyncpg.Pool, ref: str) -> asyncpg.Record | None:
    """An image by id, or by name (the newest of that name)."""
    try:
        return await pool.fetchrow(f"{_IMAGES} WHERE g.id = $1 AND NOT g.deleted", uuid.UUID(ref))
    except ValueError:
        return await pool.fetchrow(
            f"{_IMAGES} WHERE g.name = $1 AND NOT g.deleted ORDER BY g.created_at DESC LIMIT 1", ref
        )


# --- keypairs --------------------------------------------------------------------------

_KEYPAIRS = "SELECT k.* FROM keypairs k"


def keypair_shape(row: asyncpg.Record) -> shapes.Keypair:
    """A row of `_KEYPAIRS` as the API shows it."""
    return shapes.Keypair(
        id=row["id"],
        name=row["name"],
        public_key=row["public_key"],
        fingerprint=row["fingerprint"],
        created_at=row["created_at"],
    )


async def keypair(pool: asyncpg.Pool, owner: str, keypair_id: uuid.UUID) -> shapes.Keypair | None:
    """`owner`'s keypair (None: not theirs, deleted, or not projected yet)."""
    row = await pool.fetchrow(f"{_KEYPAIRS} WHERE k.id = $1 AND k.owner = $2 AND NOT k.deleted", keypair_id, owner)
    return None if row is None else keypair_shape(row)


async def keypairs(pool: asyncpg.Pool, owner: str, query: Any) -> shapes.Page:
    where = Where()
    where.add("k.owner = {}", owner)
    where.add("NOT k.deleted")
    return await page_of(pool, _KEYPAIRS, where, query, "k", keypair_shape)


async def keypairs_named(pool: asyncpg.Pool, owner: str, names: list[str]) -> dict[str, asyncpg.Record]:
    """`owner`'s keypairs among `names`, by name."""
    rows = await pool.fetch(f"{_KEYPAIRS} WHERE k.owner = $1 AND k.name = ANY($2) AND NOT k.deleted", owner, names)
    return {row["name"]: row for row in rows}


# --- users -----------------------------------------------------------------------------

#: Never the token's hash: that is for authentication only.
_USERS = "SELECT u.id, u.name, u.is_admin, u.disabled, u.created_at FROM users u"


def user_shape(row: asyncpg.Record) -> shapes.User:
    """A row of `_USERS` as the API shows it (no token: it is shown once, at creation or rotation)."""
    return shapes.User(
        id=row["id"], name=row["name"], is_admin=row["is_admin"], disabled=row["disabled"], created_at=row["created_at"]
    )


async def user(pool: asyncpg.Pool, user_id: uuid.UUID) -> shapes.User | None:
    row = await pool.fetchrow(f"{_USERS} WHERE u.id = $1", user_id)
    return None if row is None else user_shape(row)


async def users(pool: asyncpg.Pool, query: Any) -> shapes.Page:
    return await page_of(pool, _USERS, Where(), query, "u", user_shape)


# --- nodes -----------------------------------------------------------------------------

_NODES = "SELECT n.* FROM nodes n"


def node_shape(row: asyncpg.Record, beat: Heartbeat | None) -> shapes.Node:
    """A row of `_NODES` and the node's heartbeat (None: silent) as the API shows them."""
    return shapes.Node(
        id=row["id"],
        region=row["region"],
        capacity={"vcpus": row["vcpus"], "ram_mb": row["ram_mb"], "disk_gb": row["disk_gb"]},
        overcommit={"cpu": row["cpu_ratio"], "ram": row["ram_ratio"], "disk": row["disk_ratio"]},
        allocated={"vcpus": row["alloc_vcpus"], "ram_mb": row["alloc_ram_mb"], "disk_gb": row["alloc_disk_gb"]},
        instances=row["instances"],
        alive=beat is not None,
        down=row["down"],
        agent_version=row["agent_version"],
        last_heartbeat=beat.at if beat is not None else None,
    )


async def node_rows(pool: asyncpg.Pool, region: str | None = None) -> list[asyncpg.Record]:
    """Every node's row (of one region, if given), by id."""
    where = Where()
    if region is not None:
        where.add("n.region = {}", region)
    return list(await pool.fetch(f"{_NODES} WHERE {where.sql()} ORDER BY n.id", *where.args))
