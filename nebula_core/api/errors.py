"""Errors → JSON, in one place: a stable `code`, a human `message`, and for 422 the fields."""

from __future__ import annotations

import logging

from aiohttp import web

from nebula_core.api.routing import respond
from nebula_core.contract.errors import Invalid, NebulaError
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
    except Exception:
        log.exception("unhandled error method=%s path=%s", request.method, request.path)
        return respond(Error(code="internal", message="internal error; the operator's logs have the details"), 500)


def _error(err: NebulaError) -> web.Response:
    fields = err.fields if isinstance(err, Invalid) else []
    return respond(Error(code=err.code, message=err.message, fields=fields), err.http_status)


def _allow(err: web.HTTPException) -> dict[str, str] | None:
    allow = err.headers.get("Allow")
    return {"Allow": allow} if allow else None
