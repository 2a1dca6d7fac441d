"""Benchmark: the event store on a real nats-server — append and load, by history length.

    .venv/bin/python -m nebula_core.devtools.bench.eventstore [--rounds 30]

Prints medians and ratios (this machine is shared and noisy: compare ratios, not times).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

from nebula_core.allinone import init
from nebula_core.allinone.embedded import NatsServer
from nebula_core.contract import topology
from nebula_core.contract.types import Quotas
from nebula_core.domain import AGGREGATES, Project
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore


async def _timed(fn: Callable[[], Awaitable[object]], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp)).start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await init.apply(js, topology.declare())
            store = EventStore(js, Codec(*AGGREGATES))

            async def create() -> None:
                await store.save(Project(name="p", description="", tags={}, quotas=Quotas()))

            append_new = await _timed(create, rounds)
            project = Project(name="p", description="", tags={}, quotas=Quotas())
            await store.save(project)
            lengths = {}
            for length in (1, 10, 100, 1000):
                while project.version < length:
                    project.update(description=str(project.version))
                    await store.save(project)
                fresh = EventStore(js, Codec(*AGGREGATES))
                lengths[length] = await _timed(functools.partial(fresh.load, Project, project.id), rounds)

            async def append_existing() -> None:
                project.update(description=str(time.time()))
                await store.save(project)

            append_cached = await _timed(append_existing, rounds)
            await nc.close()
        finally:
            server.stop()
    print(f"append, new aggregate:            median {append_new * 1e3:.2f} ms")
    print(f"append, known position (cached):  median {append_cached * 1e3:.2f} ms")
    for length, median in lengths.items():
        print(
            f"load, {length:>4} events:               median {median * 1e3:.2f} ms"
            f"  ({median / lengths[1]:.1f}x one event)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    asyncio.run(main(parser.parse_args().rounds))
