"""Schemathesis hooks for the fuzz run (loaded by the `schemathesis` process it starts).

Schemas cannot say everything the API checks: that an image named in a body exists, that a
cursor is one the API gave out, that an Idempotency-Key was not used for another request.
The OpenAPI document lists those checks per operation, field by field, in its 422's
`x-also-checked`; a schema-valid request refused with a 422 naming only such fields is the
API doing what it documents, not a failure. Every other refusal of valid input still is.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData

IDEMPOTENCY_KEY = "header:Idempotency-Key"

#: Idempotency-Key → the requests (method, path and body digest) sent with it and answered
#: with something other than a 4xx (a 4xx frees the key): a key already used for another
#: request is refused, as documented.
_keys_used: dict[str, set[str]] = {}


def _request_digest(response: schemathesis.Response) -> str:
    request = response.request
    raw = request.body or b""
    body = raw.encode() if isinstance(raw, str) else raw
    return hashlib.sha256(f"{request.method} {request.path_url.split('?')[0]}\n".encode() + body).hexdigest()


@schemathesis.hook
def after_call(context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response) -> None:
    key = response.request.headers.get("Idempotency-Key")
    if key is not None and not 400 <= response.status_code < 500:
        _keys_used.setdefault(key, set()).add(_request_digest(response))


def _also_checked(case: schemathesis.Case) -> dict[str, str]:
    refusal = case.operation.definition.raw.get("responses", {}).get("422", {})
    checked: dict[str, str] = refusal.get("x-also-checked", {})
    return checked


def _fields(response: schemathesis.Response) -> list[str]:
    try:
        answer: Any = json.loads(response.content)
    except ValueError:
        return []
    fields = answer.get("fields") if isinstance(answer, dict) else None
    return [str(field) for field in fields] if isinstance(fields, list) else []


def _documented_refusal(field: str, case: schemathesis.Case, response: schemathesis.Response) -> bool:
    field = re.sub(r"\[\d+\]$", "", field)  # an item of a documented list (`$.keypairs[0]`)
    if field not in _also_checked(case):
        return False
    if field == IDEMPOTENCY_KEY:
        key = response.request.headers.get("Idempotency-Key")
        return key is not None and bool(_keys_used.get(key, set()) - {_request_digest(response)})
    return True


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext, failure: Any, case: schemathesis.Case, response: schemathesis.Response
) -> bool:
    """Keep every failure but a 422 for valid input that names only documented checks."""
    if not isinstance(failure, RejectedPositiveData) or response.status_code != 422:
        return True
    fields = _fields(response)
    return not (fields and all(_documented_refusal(field, case, response) for field in fields))
