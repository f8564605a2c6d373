"""What a stage runner reports: metrics per record and batch, samples, health."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Hashable, Mapping, Set
from typing import Any

from aiokafka import AIOKafkaConsumer

from workers.engine.work import StageOutput, Work
from workers.lanes.batcher import Batch
from workers.names import LANES
from workers.observability.gpu import GpuSampler
from workers.observability.http import Health
from workers.observability.metrics import WorkerMetrics

_CACHED_LABELS = 4096
"""Label children kept per counter: tenants beyond the label cap share `other` anyway."""


class StageTelemetry:
    """Counts for one stage; health from a loop heartbeat and the dependencies in trouble."""

    def __init__(self, metrics: WorkerMetrics, stage: str, stuck_after_s: float) -> None:
        self.metrics = metrics
        self.stage = stage
        self.stuck_after_s = stuck_after_s
        self.heartbeat_at = time.monotonic()
        self.unavailable: set[str] = set()
        """Dependencies whose last call failed ("kafka", "ledger"); cleared on success."""
        self.serving = False
        self.gpu = GpuSampler(metrics) if stage == "inference" else None
        self._taken: dict[tuple[str, str | None], Any] = {}

    def taken(self, work: Work) -> None:
        message = work.message
        tenant = getattr(message, "tenant", None) or work.header("conveyor-tenant")
        counter = self._taken.get((work.lane, tenant))
        if counter is None:  # a labels() lookup once per lane and tenant, not per record
            label = self.metrics.tenant(tenant)
            counter = self.metrics.messages_in.labels(self.stage, work.lane, label)
            if len(self._taken) < _CACHED_LABELS:
                self._taken[work.lane, tenant] = counter
        counter.inc(work.tasks)

    def batch_done(self, batch: Batch[Work], fresh: int, output: StageOutput) -> None:
        """Counts of a delivered batch, summed per label set first: one `labels()` lookup
        per distinct label set and batch, not one per task."""
        m = self.metrics
        model = _model_label(batch.key)
        m.batch_size.labels(self.stage, model).observe(batch.size)
        m.batch_wait.labels(self.stage).observe(batch.waited_s)
        served: dict[tuple[str, str], float] = {}
        for work in batch.items:
            served[work.lane, work.tenant] = served.get((work.lane, work.tenant), 0.0) + work.cost
        for (lane, tenant), cost in served.items():
            m.served_cost.labels(self.stage, lane, m.tenant(tenant)).inc(cost)
        if skipped := len(batch.items) - fresh:
            m.redelivered.labels(self.stage).inc(skipped)
        out: Counter[str] = Counter()
        for outgoing in output.outgoing:
            out[outgoing.kind] += outgoing.tasks
        for kind, count in out.items():
            m.messages_out.labels(self.stage, kind).inc(count)
        completed: Counter[tuple[str, str, str]] = Counter()
        errors: Counter[tuple[str, str, str]] = Counter()
        for done in output.finished:
            tenant = m.tenant(done.tenant)
            pipeline = done.pipeline or "unknown"
            completed[pipeline, done.status.value, tenant] += 1
            if done.code is not None:
                errors[done.code, done.lane, tenant] += 1
            if done.latency_s is not None:
                m.end_to_end.labels(pipeline, tenant).observe(done.latency_s)
        for labels, count in completed.items():
            m.tasks_completed.labels(*labels).inc(count)
        for (code, lane, tenant), count in errors.items():
            m.errors.labels(self.stage, code, lane, tenant).inc(count)

    async def sample(
        self,
        consumer: AIOKafkaConsumer,
        in_flight: int,
        queued: Mapping[tuple[str, str], int],
        paused_lanes: Set[str],
    ) -> None:
        """Gauges read on the commit loop's beat; also the liveness heartbeat. `queued`:
        records waiting in the batcher per (lane, tenant)."""
        self.heartbeat_at = time.monotonic()
        m = self.metrics
        m.in_flight.labels(self.stage).set(in_flight)
        depth: dict[tuple[str, str], int] = {}
        for (lane, tenant), count in queued.items():
            label = (lane, m.tenant(tenant))
            depth[label] = depth.get(label, 0) + count
        # Tenants whose queue emptied read 0 rather than their last depth.
        m.queue_depth.clear()
        for (lane, tenant), count in depth.items():
            m.queue_depth.labels(self.stage, lane, tenant).set(count)
        for lane in LANES:
            m.lane_paused.labels(self.stage, lane).set(1 if lane in paused_lanes else 0)
        if self.gpu is not None:
            self.gpu.sample()
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            position = await consumer.position(tp)
            m.consumer_lag.labels(self.stage, tp.topic, str(tp.partition)).set(
                max(0, end - position)
            )

    def health(self) -> Health:
        stuck_s = time.monotonic() - self.heartbeat_at
        live = stuck_s < self.stuck_after_s
        ready = live and self.serving and not self.unavailable
        return Health(
            live=live,
            ready=ready,
            detail={
                "stage": self.stage,
                "serving": self.serving,
                "unavailable": sorted(self.unavailable),
                "loop_stalled_s": round(stuck_s, 3),
            },
        )


def _model_label(key: Hashable) -> str:
    """Inference batch keys are (model, version, shape bucket); other stages have none."""
    if isinstance(key, tuple) and len(key) >= 2 and key[0] is not None:
        return f"{key[0]}:{key[1]}"
    return "-"
