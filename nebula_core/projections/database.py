"""Connections to the read models' Postgres, each opened the one way.

Every pool and connection Nebula opens carries codecs for `json` and `jsonb`: a column of
either type reads back as Python values (objects as dicts) and a parameter of either type
is given as a Python value (a msgspec struct included) and written as msgspec JSON. So no
query or projection handler turns JSON into text or back by hand.

Every pool also bounds how long a caller waits for Postgres: connecting, getting a
connection from the pool and each statement have timeouts, so a Postgres that is away,
full or hung shows as an error within seconds (the API answers it with a 503), never as
a request that hangs."""

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


#: Defaults of every pool: opening one connection, waiting for a free connection of the
#: pool (connecting included), and one statement (a lock wait included).
CONNECT_TIMEOUT_S = 5.0
ACQUIRE_TIMEOUT_S = 10.0
STATEMENT_TIMEOUT_S = 30.0


class Pool(asyncpg.Pool):
    """An asyncpg pool whose `acquire` - and so its `fetch`, `execute`, … - waits at most
    its acquire timeout unless the caller gives one."""

    __slots__ = ("_acquire_timeout",)

    def __init__(self, *args: Any, acquire_timeout: float | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self._acquire_timeout if timeout is None else timeout)


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    acquire_timeout: float | None = ACQUIRE_TIMEOUT_S,
    statement_timeout: float | None = STATEMENT_TIMEOUT_S,
    **options: Any,
) -> asyncpg.Pool:
    """A pool whose every connection has the JSON codecs, with the timeouts above
    (`None`: no bound). It opens `min_size` connections before it returns; with
    `min_size=0` it opens none, so it can be made while Postgres is away and serves as
    soon as Postgres is back (each connection lost meanwhile is replaced when next used)."""
    options.setdefault("timeout", CONNECT_TIMEOUT_S)
    pool = Pool(
        dsn,
        acquire_timeout=acquire_timeout,
        command_timeout=statement_timeout,
        init=init_connection,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        **options,
    )
    return await pool


async def connect(dsn: str, **options: Any) -> asyncpg.Connection:
    """`asyncpg.connect`, the connection with the JSON codecs."""
    conn = await asyncpg.connect(dsn, **options)
    try:
        await init_connection(conn)
    except BaseException:
        await conn.close()
        raise
    return conn
