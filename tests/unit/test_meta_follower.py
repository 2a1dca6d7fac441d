"""`Follower` keeps a follower of the metadata service running: a failure is recorded
and the follower started again after a growing backoff, until a run catches up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nebula_meta.model import Follower


class Script:
    """A follower that fails `failures` times, then catches up and runs until stopped;
    records when each run started."""

    def __init__(self, failures: int, *, return_instead: bool = False) -> None:
        self.failures = failures
        self.return_instead = return_instead
        self.starts: list[float] = []
        self.caught_up = asyncio.Event()

    async def __call__(self, stop: asyncio.Event, caught_up: Callable[[], None]) -> None:
        self.starts.append(asyncio.get_running_loop().time())
        if len(self.starts) <= self.failures:
            if self.return_instead:
                return
            raise ConnectionError(f"run {len(self.starts)} lost its stream")
        caught_up()
        self.caught_up.set()
        await stop.wait()


async def test_a_failing_follower_is_restarted_with_a_growing_backoff_and_is_well_once_caught_up() -> None:
    script = Script(failures=3)
    follower = Follower("seeds", script, first_delay=0.02, max_delay=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    seen: list[str | None] = []
    while not script.caught_up.is_set():
        seen.append(follower.failure)
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(task, 1)

    assert len(script.starts) == 4 and follower.failures == 3
    assert "ConnectionError: run 1 lost its stream" in seen
    assert follower.failure is None  # caught up again
    gaps = [later - earlier for earlier, later in zip(script.starts, script.starts[1:], strict=False)]
    assert gaps[0] >= 0.015 and gaps[1] >= 0.035 and 0.045 <= gaps[2] < 0.5  # doubling, up to the most


async def test_a_follower_that_returns_before_it_is_stopped_is_a_failure_too() -> None:
    script = Script(failures=1, return_instead=True)
    follower = Follower("events", script, first_delay=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    await asyncio.wait_for(script.caught_up.wait(), 1)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert follower.failures == 1 and follower.failure is None and len(script.starts) == 2


async def test_a_stopped_follower_is_not_restarted() -> None:
    script = Script(failures=0)
    follower = Follower("events", script)
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    await asyncio.wait_for(script.caught_up.wait(), 1)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert len(script.starts) == 1 and follower.failures == 0
