"""Prometheus metrics of one API process (its own registry: no module globals)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class StoredCounter(Collector):
    """A counter another process keeps in Postgres (the projector parks events, and serves
    no HTTP): the value read at the last scrape, left out until one was read."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.value: int | None = None
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        if self.value is not None:
            yield CounterMetricFamily(self.name, self.documentation, value=self.value)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nebula_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nebula_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.projection_lag = Gauge(
            "nebula_projection_lag_events", "Events in the stream not yet in the read models", registry=self.registry
        )
        self.stream_head = Gauge("nebula_events_last_seq", "Last sequence of NEBULA_EVENTS", registry=self.registry)
        self.parked_now = Gauge(
            "nebula_parked_events",
            "Events the projector could not decode or apply, parked now (the read models lack them)",
            registry=self.registry,
        )
        self.parked_total = StoredCounter(
            "nebula_events_parked",
            "Events parked by the projector, a replay's parkings included",
            self.registry,
        )


def middleware(metrics: Metrics):
    @web.middleware
    async def measure(request: web.Request, handler):
        route = request.match_info.route
        name = route.resource.canonical if route.resource is not None else "unmatched"
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as err:
            status = err.status
            raise
        finally:
            metrics.requests.labels(request.method, name, str(status)).inc()
            metrics.latency.labels(request.method, name).observe(time.perf_counter() - started)

    return measure
