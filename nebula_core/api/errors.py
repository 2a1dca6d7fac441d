"""Errors → JSON, in one place: a stable `code`, a human `message`, and for 422 the fields.

A dependency that fails - Postgres or NATS away, refusing, dropping the connection or not
answering in time - is a 503 `Unavailable` with `Retry-After`, never a 500; so is any
other `Unavailable`, and a `RateLimited` is a 429 with `Retry-After`."""

from __future__ import annotations

import logging

import asyncpg
import nats.errors
import nats.js.errors
from aiohttp import web

from nebula_core.api.routing import respond
from nebula_core.contract.errors import Invalid, NebulaError, RateLimited, Unavailable
from nebula_core.contract.http import Error
from nebula_core.contract.limits import API_BODY_MAX_BYTES

log = logging.getLogger("nebula.api")

#: The largest request body the API reads: 64 KiB of user-data can take six times that
#: as escaped JSON (`\u0001`).

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
}


@web.middleware
async def errors(request: web.Request, handler):
    try:
        return await handler(request)
    except NebulaError as err:
        return _error(err)
    except web.HTTPRequestEntityTooLarge:
        # Only user-data can make a valid body this large: name it, as for any bad field.
        field = "$.user_data" if request.path == "/v1/instances" else "$"
        return _error(Invalid(f"the request body is over {API_BODY_MAX_BYTES} bytes", [field]))
    except web.HTTPException as err:
        if err.status < 400:
            raise
        code = _HTTP_CODES.get(err.status, "error")
        message = err.reason if err.text in (None, "", f"{err.status}: {err.reason}") else err.text
        return respond(Error(code=code, message=str(message)), err.status, headers=_allow(err))
    except Exception as err:
        away = unavailable(err)
        if away is not None:
            log.warning("dependency unavailable method=%s path=%s error=%r", request.method, request.path, err)
            return _error(away)
        log.exception("unhandled error method=%s path=%s", request.method, request.path)
        return respond(Error(code="internal", message="internal error; the operator's logs have the details"), 500)


#: NATS away: no server to talk to, or the connection closed, stale or still reconnecting
#: (its timeouts are `TimeoutError`s, below); JetStream not answering for its stream.
_NATS_AWAY = (
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
#: Postgres away: the connection refused, lost or never made (`OSError`, below), the
#: server shutting down or starting up, a statement cancelled, no connection slot free.
_POSTGRES_AWAY = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


def unavailable(err: BaseException) -> Unavailable | None:
    """The 503 that `err` is when it says a dependency is away; None for any other error."""
    if isinstance(err, nats.errors.TimeoutError):
        return Unavailable("NATS did not answer in time; retry shortly")
    if isinstance(err, _NATS_AWAY):
        return Unavailable(f"NATS is unavailable ({type(err).__name__}); retry shortly")
    if isinstance(err, TimeoutError):  # a pool's acquire or a statement (NATS' timeouts are its own, above)
        return Unavailable("Postgres did not answer in time, or no connection to it was free; retry shortly")
    if isinstance(err, (OSError, *_POSTGRES_AWAY)):  # only the pool connects while serving
        return Unavailable(f"Postgres is unavailable ({type(err).__name__}); retry shortly")
    return None


def _error(err: NebulaError) -> web.Response:
    fields = err.fields if isinstance(err, Invalid) else []
    headers = {"Retry-After": str(err.retry_after)} if isinstance(err, (Unavailable, RateLimited)) else None
    return respond(Error(code=err.code, message=err.message, fields=fields), err.http_status, headers=headers)


def _allow(err: web.HTTPException) -> dict[str, str] | None:
    allow = err.headers.get("Allow")
    return {"Allow": allow} if allow else None
