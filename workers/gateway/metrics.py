"""The gateway's Prometheus metrics (served on its HTTP port at /metrics).

Where several gateway processes share the port (`gateway.processes`), a scrape reaches any
one of them, so each writes its values where the others read them: prometheus_client's
multiprocess mode, in the directory `PROMETHEUS_MULTIPROC_DIR` names (the supervisor makes
it), and /metrics answers the sum over every process.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

_LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)

GATEWAY_METRIC_NAMES = (
    "conveyor_gateway_requests_total",
    "conveyor_gateway_request_seconds",
    "conveyor_gateway_in_flight",
    "conveyor_gateway_callbacks_total",
)


class GatewayMetrics:
    """Requests, latency and in-flight requests by protocol, route and status."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "conveyor_gateway_requests",
            "Requests answered, by protocol (http, grpc), route and status (HTTP status).",
            ["protocol", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "conveyor_gateway_request_seconds",
            "Time from a request's arrival to its answer.",
            ["protocol", "route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge(
            "conveyor_gateway_in_flight",
            "Inference requests held by this gateway (published, result not yet answered).",
            registry=r,
            multiprocess_mode="livesum",  # what the live processes hold together
        )
        self.callbacks = Counter(
            "conveyor_gateway_callbacks",
            "Callback POSTs of asynchronous results, by outcome (delivered, failed).",
            ["outcome"],
            registry=r,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def exposition(self) -> bytes:
        """The text /metrics answers: this process's metrics, or every gateway process's
        where they share a multiprocess directory."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return generate_latest(self.registry)
        shared = CollectorRegistry()
        MultiProcessCollector(shared, directory)  # type: ignore[no-untyped-call]
        return generate_latest(shared)

    def observe(self, protocol: str, route: str, status: int, seconds: float) -> None:
        children = self._children.get((protocol, route, status))
        if children is None:  # a few routes and statuses: looked up once each
            children = (
                self.requests.labels(protocol, route, str(status)),
                self.latency.labels(protocol, route),
            )
            self._children[protocol, route, status] = children
        children[0].inc()
        children[1].observe(seconds)
