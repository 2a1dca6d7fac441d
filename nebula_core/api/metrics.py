"""Prometheus metrics of one API process (its own registry: no module globals)."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
