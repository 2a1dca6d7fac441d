"""The API's per-token limits, on a clock the test turns: a bucket per caller, refilled at
its rate up to its burst; a cap on open event streams; the bootstrap admin unlimited."""

from __future__ import annotations

import uuid

import pytest

from nebula_core.api.auth import Principal
from nebula_core.api.ratelimit import Limits
from nebula_core.contract.errors import RateLimited

ALICE = Principal(user_id=uuid.uuid4(), name="alice", is_admin=False)
BOB = Principal(user_id=uuid.uuid4(), name="bob", is_admin=True)
BOOTSTRAP = Principal(user_id=None, name="admin", is_admin=True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limits(clock: Clock, rate: float = 2.0, burst: int = 3, streams: int = 2) -> Limits:
    return Limits(rate=rate, burst=burst, streams=streams, clock=clock)


def test_a_caller_may_burst_then_is_limited_with_the_wait_it_needs() -> None:
    clock = Clock()
    limit = limits(clock, rate=0.5)
    for _ in range(3):
        limit.take(ALICE)
    with pytest.raises(RateLimited) as refused:
        limit.take(ALICE)
    assert refused.value.http_status == 429 and refused.value.code == "rate_limited"
    assert refused.value.retry_after == 2  # one request's worth at half a request a second


def test_the_bucket_refills_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = Clock()
    limit = limits(clock)
    for _ in range(3):
        limit.take(ALICE)
    clock.now += 0.5  # one request's worth at two a second
    limit.take(ALICE)
    with pytest.raises(RateLimited):
        limit.take(ALICE)
    clock.now += 3600
    for _ in range(3):
        limit.take(ALICE)
    with pytest.raises(RateLimited):
        limit.take(ALICE)


def test_each_caller_has_its_own_bucket_cloud_admins_too_the_bootstrap_admin_none() -> None:
    clock = Clock()
    limit = limits(clock)
    for _ in range(3):
        limit.take(ALICE)
    with pytest.raises(RateLimited):
        limit.take(ALICE)
    for _ in range(3):
        limit.take(BOB)
    with pytest.raises(RateLimited):
        limit.take(BOB)
    for _ in range(1000):
        limit.take(BOOTSTRAP)


def test_a_rate_of_zero_limits_nothing() -> None:
    limit = limits(Clock(), rate=0)
    for _ in range(1000):
        limit.take(ALICE)


def test_event_streams_are_capped_per_caller_and_given_back_when_closed() -> None:
    limit = limits(Clock())
    with limit.stream(ALICE), limit.stream(ALICE):
        with pytest.raises(RateLimited) as refused, limit.stream(ALICE):
            pass
        assert refused.value.http_status == 429 and refused.value.retry_after >= 1
        with limit.stream(BOB):
            pass
    with limit.stream(ALICE), limit.stream(ALICE):
        pass


def test_a_stream_that_fails_gives_its_place_back() -> None:
    limit = limits(Clock(), streams=1)
    with pytest.raises(ValueError), limit.stream(ALICE):
        raise ValueError("the stream broke")
    with limit.stream(ALICE):
        pass


def test_the_bootstrap_admin_holds_any_number_of_streams() -> None:
    limit = limits(Clock(), streams=1)
    with limit.stream(BOOTSTRAP), limit.stream(BOOTSTRAP), limit.stream(BOOTSTRAP):
        pass
