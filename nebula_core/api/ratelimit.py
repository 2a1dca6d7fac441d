"""Per-token limits: how fast a caller may make requests, and how many event streams it
may hold open. Beyond either it gets a 429 with `Retry-After`; nothing it asked is done.

The rate is a token bucket per caller: `rate` requests a second on average, up to `burst`
at once after a quiet spell. Limits are kept by each API process, so behind N replicas a
caller may reach N times them. The bootstrap admin (`NEBULA_ADMIN_TOKEN`) is the
operator's own credential, used by provisioning, tools and the fleet simulator: it is not
limited. Every user is, cloud admins included.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiohttp import web

from nebula_core.api.auth import PRINCIPAL, Principal
from nebula_core.contract.errors import RateLimited

#: Past this many callers remembered, those whose bucket has refilled are forgotten.
_PRUNE_ABOVE = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class Limits:
    """The limits of one API process (`rate` 0: no request rate limit)."""

    def __init__(self, *, rate: float, burst: int, streams: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.streams = streams
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._open: Counter[str] = Counter()

    def take(self, who: Principal) -> None:
        """Count one request of `who`; `RateLimited` if its bucket is empty."""
        if self.rate <= 0 or _exempt(who):
            return
        now = self._clock()
        bucket = self._buckets.get(who.key)
        if bucket is None:
            if len(self._buckets) > _PRUNE_ABOVE:
                self._prune(now)
            bucket = self._buckets[who.key] = _Bucket(tokens=self.burst, at=now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self.rate
            raise RateLimited(
                f"over {self.rate:g} requests a second (bursts of {self.burst}); retry shortly",
                retry_after=max(1, math.ceil(wait)),
            )
        bucket.tokens -= 1

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst]:
            del self._buckets[key]

    @contextlib.contextmanager
    def stream(self, who: Principal) -> Iterator[None]:
        """Hold one of `who`'s event streams for the block; `RateLimited` if all are held."""
        if _exempt(who):
            yield
            return
        if self._open[who.key] >= self.streams:
            raise RateLimited(f"at most {self.streams} event streams may be open per token; close one", retry_after=5)
        self._open[who.key] += 1
        try:
            yield
        finally:
            self._open[who.key] -= 1
            if not self._open[who.key]:
                del self._open[who.key]


def _exempt(who: Principal) -> bool:
    return who.user_id is None  # the bootstrap admin


LIMITS = web.AppKey("limits", Limits)


@web.middleware
async def limit_rate(request: web.Request, handler):
    """After authentication: every authenticated request counts against its caller's rate."""
    if PRINCIPAL in request:
        request.app[LIMITS].take(request[PRINCIPAL])
    return await handler(request)
