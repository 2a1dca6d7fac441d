"""The error hierarchy. Raised where the fact is known; mapped to HTTP statuses and to
NATS error replies in one place each (the API's error middleware, `ErrorBody`)."""

from __future__ import annotations


class NebulaError(Exception):
    """Base class: `code` is stable for machines, the message is for people."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(NebulaError):
    code = "not_found"
    http_status = 404


class Conflict(NebulaError):
    code = "conflict"
    http_status = 409


class ConcurrencyConflict(Conflict):
    """Someone else appended to the aggregate since it was loaded: reload and retry."""

    code = "concurrent_modification"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class InsufficientCapacity(Conflict):
    """A node cannot hold what is asked of it (after overcommit)."""

    code = "insufficient_capacity"


class Invalid(NebulaError):
    """Bad input; `fields` names what was wrong (JSON paths such as `$.vcpus`)."""

    code = "invalid"
    http_status = 422

    def __init__(self, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or []


class Unauthorized(NebulaError):
    code = "unauthorized"
    http_status = 401


class Forbidden(NebulaError):
    code = "forbidden"
    http_status = 403


class QuotaExceeded(NebulaError):
    code = "quota_exceeded"
    http_status = 409


class Unavailable(NebulaError):
    """A dependency (Postgres, NATS, a node) is away or did not answer in time; the same
    request may succeed after `retry_after` seconds."""

    code = "unavailable"
    http_status = 503

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NodeUnavailable(Unavailable):
    code = "node_unavailable"


class RateLimited(NebulaError):
    """The caller is over one of its limits (requests per second, open event streams)."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TopologyConflict(NebulaError):
    """A stream or bucket exists on the server with a configuration we did not declare."""

    code = "topology_conflict"


ERRORS_BY_CODE: dict[str, type[NebulaError]] = {
    cls.code: cls
    for cls in (
        NebulaError,
        NotFound,
        Conflict,
        ConcurrencyConflict,
        IllegalTransition,
        InsufficientCapacity,
        Invalid,
        Unauthorized,
        Forbidden,
        QuotaExceeded,
        Unavailable,
        NodeUnavailable,
        RateLimited,
        TopologyConflict,
    )
}
