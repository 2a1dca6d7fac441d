"""Parked events: what the projector could not decode or apply, kept aside with the error.

An event is parked when its own content is at fault (`parkable`): JSON that does not
decode, a type this version does not know, a value Postgres refuses (a NUL byte in a text
column, a number out of range, a broken constraint), a handler that raised. Its raw
payload, its subject and the error go to `parked_events` in the same transaction that
moves the checkpoint past it, and projection goes on. A failure of the database or of the
connection is never parked: the batch fails whole and is retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from nebula_core.projections.checkpoint import PROJECTION

#: The longest error text kept: the start of a message says what went wrong.
ERROR_MAX_CHARS = 2000


class UnknownEventType(Exception):
    """An event of a type this version does not know (written by a newer Nebula?)."""


def parkable(err: Exception) -> bool:
    """Whether `err` comes from the event itself rather than from the database or the network."""
    if isinstance(err, asyncpg.PostgresError):
        # Class 22 (data exception: NUL in text, out of range, bad encoding) and class 23
        # (integrity: NOT NULL, CHECK, UNIQUE). Anything else (connection, serialization,
        # cancelled statement, missing table, full disk) is the database's, not the event's.
        return isinstance(err, (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError))
    if isinstance(err, asyncpg.InterfaceError):
        # asyncpg's own DataError (a value it cannot encode for its column) is also a
        # ValueError; every other interface error is about the connection.
        return isinstance(err, ValueError)
    return not isinstance(err, OSError)  # OSError: a connection or a timeout


def describe(err: Exception) -> str:
    """The error as Postgres can store it: no NUL, no lone surrogate, bounded."""
    text = f"{type(err).__name__}: {err}"
    return storable(text)[:ERROR_MAX_CHARS]


def storable(text: str) -> str:
    """`text` with what a Postgres text column refuses written out as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


async def park(conn: asyncpg.Connection, seq: int, subject: str, payload: bytes, error: str) -> None:
    """Keep the event at `seq` aside, in the caller's transaction (which holds the checkpoint's lock)."""
    await conn.execute(
        """INSERT INTO parked_events (seq, subject, payload, error) VALUES ($1, $2, $3, $4)
           ON CONFLICT (seq) DO UPDATE SET subject = EXCLUDED.subject, payload = EXCLUDED.payload,
                                           error = EXCLUDED.error, parked_at = now()""",
        seq,
        storable(subject),
        payload,
        error,
    )
    await conn.execute(
        "UPDATE projection_checkpoints SET parked_total = parked_total + 1 WHERE projection = $1", PROJECTION
    )


async def clear(conn: asyncpg.Connection) -> None:
    """Forget every parked event (a replay tries them all again)."""
    await conn.execute("DELETE FROM parked_events")


@dataclass(frozen=True)
class Parked:
    #: Events parked now: what the read models lack.
    now: int
    #: Every parking so far, a replay's included: only grows.
    total: int


async def parked(pool: asyncpg.Pool | asyncpg.Connection) -> Parked:
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM parked_events) AS now,
                  coalesce((SELECT parked_total FROM projection_checkpoints WHERE projection = $1), 0) AS total""",
        PROJECTION,
    )
    assert row is not None
    return Parked(now=int(row["now"]), total=int(row["total"]))
