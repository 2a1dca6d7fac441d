"""Which errors say a dependency is away (a 503 with Retry-After), and which are bugs (a 500)."""

from __future__ import annotations

import asyncpg
import nats.errors
import nats.js.errors
import pytest

from nebula_core.api.errors import unavailable

AWAY = [
    (ConnectionRefusedError(111, "Connection refused"), "Postgres"),
    (FileNotFoundError(2, "No such file or directory"), "Postgres"),  # its Unix socket is gone
    (TimeoutError(), "Postgres"),  # a pool's acquire or a statement
    (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"), "Postgres"),
    (asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"), "Postgres"),
    (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), "Postgres"),
    (asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"), "Postgres"),
    (nats.errors.TimeoutError(), "NATS"),
    (nats.errors.NoServersError(), "NATS"),
    (nats.errors.ConnectionClosedError(), "NATS"),
    (nats.errors.ConnectionReconnectingError(), "NATS"),
    (nats.js.errors.NoStreamResponseError(), "NATS"),
    (nats.js.errors.ServiceUnavailableError(), "NATS"),
]


@pytest.mark.parametrize(("err", "what"), AWAY, ids=[type(e).__name__ for e, _ in AWAY])
def test_a_dependency_away_is_a_503_that_names_it(err: Exception, what: str) -> None:
    answer = unavailable(err)
    assert answer is not None and answer.http_status == 503 and answer.code == "unavailable"
    assert what in answer.message and answer.retry_after >= 1


@pytest.mark.parametrize(
    "err",
    [
        ValueError("a bug"),
        KeyError("a bug"),
        asyncpg.exceptions.UndefinedColumnError("column x does not exist"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        nats.js.errors.NotFoundError(),
        nats.errors.BadSubjectError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_anything_else_is_not_a_dependency_away(err: Exception) -> None:
    assert unavailable(err) is None
