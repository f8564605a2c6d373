"""The gateway's Prometheus metrics (served on its HTTP port at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        )
        self.callbacks = Counter(
            "conveyor_gateway_callbacks",
            "Callback POSTs of asynchronous results, by outcome (delivered, failed).",
            ["outcome"],
            registry=r,
        )

    def observe(self, protocol: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(protocol, route, str(status)).inc()
        self.latency.labels(protocol, route).observe(seconds)
