"""Every Prometheus metric a worker exports, declared in one place.

Names follow Prometheus conventions (`_total`, `_seconds`, base units). Labels stay low in
cardinality: tenants beyond `TenantLabels.cap` are reported as `other`.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

# `_created` series double every counter's cardinality and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class TenantLabels:
    """Maps tenants to label values: the first `cap` seen keep their name, the rest `other`."""

    OTHER = "other"

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._known: set[str] = set()

    def __call__(self, tenant: str | None) -> str:
        if tenant is None:
            return "unknown"
        if tenant in self._known:
            return tenant
        if len(self._known) < self.cap:
            self._known.add(tenant)
            return tenant
        return self.OTHER


class WorkerMetrics:
    """The metrics of one worker process, in a registry of its own."""

    def __init__(self, stage: str, tenant_label_cap: int = 50) -> None:
        self.stage = stage
        self.registry = CollectorRegistry()
        self.tenant = TenantLabels(tenant_label_cap)
        r = self.registry
        self.messages_in = Counter(
            "conveyor_messages_in",
            "Tasks consumed from the stage's input topic (a frame counts each of its tasks).",
            ["stage", "lane", "tenant"],
            registry=r,
        )
        self.messages_out = Counter(
            "conveyor_messages_out",
            "Tasks produced and acknowledged, by kind of output (a frame counts its tasks).",
            ["stage", "kind"],
            registry=r,
        )
        self.errors = Counter(
            "conveyor_errors",
            "Tasks failed, expired or rejected, by stable error code.",
            ["stage", "code", "lane", "tenant"],
            registry=r,
        )
        self.redelivered = Counter(
            "conveyor_redelivered",
            "Records skipped because the ledger shows their task is past "
            "this stage (redeliveries after a crash or rebalance).",
            ["stage"],
            registry=r,
        )
        self.tasks_completed = Counter(
            "conveyor_tasks_completed",
            "Tasks answered, by final state.",
            ["pipeline", "status", "tenant"],
            registry=r,
        )
        self.batch_size = Histogram(
            "conveyor_batch_size",
            "Rows per processed batch.",
            ["stage", "model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_wait = Histogram(
            "conveyor_batch_wait_seconds",
            "Time a batch's first item waited for the batch to close.",
            ["stage"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference = Histogram(
            "conveyor_inference_seconds",
            "Model run time per batch.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.end_to_end = Histogram(
            "conveyor_end_to_end_latency_seconds",
            "From the request's submitted_at to its result.",
            ["pipeline", "tenant"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge(
            "conveyor_queue_depth",
            "Records waiting in the stage's batcher, by lane and tenant.",
            ["stage", "lane", "tenant"],
            registry=r,
        )
        self.lane_paused = Gauge(
            "conveyor_lane_paused",
            "1 while the stage has stopped reading a lane's partitions (a higher lane has "
            "work, or the lane is at its in-flight bound).",
            ["stage", "lane"],
            registry=r,
        )
        self.served_cost = Counter(
            "conveyor_served_cost",
            "Cost served per tenant (rows, or tokens for models that count tokens): "
            "what weighted fair sharing divides.",
            ["stage", "lane", "tenant"],
            registry=r,
        )
        self.in_flight = Gauge(
            "conveyor_tasks_in_flight",
            "Records taken from Kafka and not yet finished.",
            ["stage"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "conveyor_consumer_lag",
            "Records between the consumer's position and the partition's end.",
            ["stage", "topic", "partition"],
            registry=r,
        )
        self.model = Info(
            "conveyor_model",
            "A model version loaded by this worker.",
            ["model", "version"],
            registry=r,
        )
        self.model_swaps = Counter(
            "conveyor_model_swaps",
            "Model versions switched into service, by what asked for it.",
            ["model", "source"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "conveyor_model_load_failures",
            "Model versions refused or failed while loading; the serving version kept serving.",
            ["model", "reason"],
            registry=r,
        )
        self.model_serving_version = Gauge(
            "conveyor_model_serving_version",
            "The version serving each role (current, canary, shadow); 0 when none.",
            ["model", "role"],
            registry=r,
        )
        self.model_swap_pause = Histogram(
            "conveyor_model_swap_pause_seconds",
            "Intake paused by a swap that had to unload before loading (memory budget).",
            ["model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.shadow_max_abs_diff = Histogram(
            "conveyor_shadow_max_abs_diff",
            "Per shadowed batch: largest absolute difference from the serving version's outputs.",
            ["model", "version"],
            buckets=(1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )
        self.shadow_cosine = Histogram(
            "conveyor_shadow_cosine_similarity",
            "Per shadowed batch: cosine similarity to the serving version's outputs.",
            ["model", "version"],
            buckets=(-1, 0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999, 1),
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "conveyor_gpu_memory_used_bytes",
            "GPU memory in use (NVML).",
            ["gpu"],
            registry=r,
        )
        self.gpu_utilization = Gauge(
            "conveyor_gpu_utilization_ratio",
            "GPU busy fraction over the last sample (NVML).",
            ["gpu"],
            registry=r,
        )


METRIC_NAMES = (
    "conveyor_messages_in_total",
    "conveyor_messages_out_total",
    "conveyor_errors_total",
    "conveyor_redelivered_total",
    "conveyor_tasks_completed_total",
    "conveyor_batch_size",
    "conveyor_batch_wait_seconds",
    "conveyor_inference_seconds",
    "conveyor_end_to_end_latency_seconds",
    "conveyor_queue_depth",
    "conveyor_lane_paused",
    "conveyor_served_cost_total",
    "conveyor_tasks_in_flight",
    "conveyor_consumer_lag",
    "conveyor_model_info",
    "conveyor_gpu_memory_used_bytes",
    "conveyor_gpu_utilization_ratio",
    "conveyor_model_swaps_total",
    "conveyor_model_load_failures_total",
    "conveyor_model_serving_version",
    "conveyor_model_swap_pause_seconds",
    "conveyor_shadow_max_abs_diff",
    "conveyor_shadow_cosine_similarity",
)
"""The exported series families, as dashboards and alerts name them."""
