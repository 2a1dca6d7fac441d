"""Connections to the read models' Postgres, each opened the one way.

Every pool and connection Nebula opens carries codecs for `json` and `jsonb`: a column of
either type reads back as Python values (objects as dicts) and a parameter of either type
is given as a Python value (a msgspec struct included) and written as msgspec JSON. So no
query or projection handler turns JSON into text or back by hand."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

_encoder = msgspec.json.Encoder()


def _encode(value: Any) -> str:
    return _encoder.encode(value).decode()


def _decode(text: str) -> Any:
    return msgspec.json.decode(text)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Register the JSON codecs on `conn` (a pool's `init=`, or right after `asyncpg.connect`)."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, schema="pg_catalog", encoder=_encode, decoder=_decode, format="text")


async def create_pool(dsn: str, **options: Any) -> asyncpg.Pool:
    """`asyncpg.create_pool` whose every connection has the JSON codecs."""
    return await asyncpg.create_pool(dsn, init=init_connection, **options)


async def connect(dsn: str, **options: Any) -> asyncpg.Connection:
    """`asyncpg.connect`, the connection with the JSON codecs."""
    conn = await asyncpg.connect(dsn, **options)
    try:
        await init_connection(conn)
    except BaseException:
        await conn.close()
        raise
    return conn
