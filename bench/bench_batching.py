"""The inference worker's batching gain, in process: the real batcher and stage, no Kafka.

Run with ``.venv/bin/python -m bench.bench_batching [--quick]``; prints a Markdown table and
writes it into BENCHMARKS.md between the ``bench:batching`` markers, or with ``--out PATH``
into that file between the ``bench:batching-gpu`` markers (the lent GPU machine:
``--providers CUDAExecutionProvider,CPUExecutionProvider``, see ``bench/gpu_run.sh``);
``--insert PATH`` then copies such a file into BENCHMARKS.md.

The GPU machine has no Kafka, Java or Redis, so this drives the inference worker's own
batching path the way ``StageRunner`` does, minus the broker and the ledger:
``InferenceStage.decode`` of a preprocessed record -> ``LaneBatcher.put``; a dispatcher that
forms a batch once a ``BatchSlots`` slot would take it (``next_batch(admit=...)``); per batch
``process_isolating(stage.process)`` -> ``StageOutput.records(None)`` (every outgoing
message encoded). The stage is built as ``workers.service`` builds it (``ModelRuntime``,
``ModelLifecycle`` with warm-up; no shadow, control listener or watcher). Left out: intake
from Kafka, redelivery checks and the ledger, claim checks, admission, produce and commit.

A closed loop keeps ``CONCURRENCY`` tasks outstanding: a task finishing (its batch
processed, its outputs encoded) lets one more in. Latency is a task's ``Work.received_at``
(its decode, right before the put) to its outputs being encoded; by Little's law its median
is about ``CONCURRENCY`` / throughput, so it shows what a full queue costs, not idle latency.
Raw ONNX Runtime runs the same batch back to back on a session with the same options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import ConsumerRecord

from bench import bench_model
from bench.report import BENCHMARKS, write_section
from schemas import InferenceRequest, encode, headers_for
from schemas.frames import decode_frame, encode_frame, frame_headers
from workers.engine.isolation import FailureTarget, RetryPolicy, process_isolating
from workers.engine.work import Work
from workers.lanes.batcher import Batch, BatchWindow, LaneBatcher
from workers.lanes.budget import LatencyBudget
from workers.lanes.slots import BatchSlots, SlotKind
from workers.models.builders.minilm import MODEL_NAME
from workers.models.events import ModelEvents
from workers.models.lifecycle import ModelLifecycle
from workers.models.repository import ModelRepository, ModelVersion
from workers.models.runtime import ModelRuntime, OnnxModel, RuntimeOptions
from workers.names import Topics
from workers.observability import tracing
from workers.observability.metrics import WorkerMetrics
from workers.settings import (
    LaneSettings,
    LimitsSettings,
    ModelSettings,
    RuntimeSettings,
    WorkerSettings,
)
from workers.stages.inference import InferenceStage
from workers.stages.preprocess import PreprocessStage

START, END = "<!-- bench:batching:start -->", "<!-- bench:batching:end -->"
GPU_START, GPU_END = "<!-- bench:batching-gpu:start -->", "<!-- bench:batching-gpu:end -->"
TITLE = "Inference worker batching gain (in process)"
GPU_TITLE = "Inference worker batching gain on a GPU (in process)"
BATCH_SIZES = (1, 8, 32, 128)
CONCURRENCY = 512
FRAME_TASKS = 128
"""Tasks per frame by default: what one poll of a busy tenant brings (cut to the batch)."""
SEQUENCE_TOKENS = 32
MAX_WAIT_MS = 2.0
"""Only a partial batch waits this long; with CONCURRENCY queued every batch fills at once."""
POOL = 1024
"""Distinct preprocessed records, cycled through (the stage keeps no per-task state)."""
TENANT = "bench"
PIPELINE = "text-embedding"
TOPIC_PREFIX = "bench"

ISO_START = "<!-- bench:isolation-inprocess:start -->"
ISO_END = "<!-- bench:isolation-inprocess:end -->"
ISO_GPU_START = "<!-- bench:isolation-inprocess-gpu:start -->"
ISO_GPU_END = "<!-- bench:isolation-inprocess-gpu:end -->"
ISO_TITLE = "Isolation in process (scheduler only)"
ISO_GPU_TITLE = "Isolation in process on a GPU (scheduler only)"
REALTIME_SHARE = 0.1
"""Realtime arrivals, as a fraction of capacity C (bench_lanes' mix)."""
BULK_OFFER = 3.0
"""Bulk offered, as a multiple of C: a flood, its backlog grows for as long as it lasts."""
BULK_QUEUE_S = 2.0
"""The bulk backlog held in the worker, in seconds of C (memory), at least
``CAPACITY_QUEUE_BATCHES`` max batches and at most ``worker.max_in_flight``."""
CAPACITY_QUEUE_BATCHES = 8
"""Max batches of bulk kept queued while C is measured: two run, the rest wait."""
CAPACITY_WARMUP_S = 2.0
"""Batches of 64 before C is measured: the first runs of a shape are slow."""
BULK_TICK_S = 0.005
TARGET_RATIO = 1.5
"""The product's isolation target: realtime P99 loaded / idle."""


@dataclass(frozen=True)
class Options:
    providers: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    threads: int
    concurrency: int
    frame_tasks: int
    """Tasks per frame the worker consumes (at most the batch size)."""
    duration_s: float
    raw_duration_s: float
    warmup_min_s: float
    runtime: tuple[str, ...] = ()
    """Runtime settings overridden, ``FIELD=VALUE``."""

    @property
    def on_device(self) -> bool:
        return any(p != "CPUExecutionProvider" for p in self.providers)


@dataclass(frozen=True)
class Row:
    max_batch_size: int
    tasks_per_s: float
    mean_batch: float
    p50_ms: float
    p99_ms: float
    raw_seq_per_s: float

    @property
    def efficiency(self) -> float:
        return self.tasks_per_s / self.raw_seq_per_s


# ---- records as preprocess makes them ----------------------------------------------------


async def preprocessed_records(
    repository: ModelRepository, topics: Topics, texts: Sequence[str], frame_tasks: int = 1
) -> list[ConsumerRecord[bytes, bytes]]:
    """Frames of ``frame_tasks`` texts each, made by the real preprocess stage from one-text
    requests, as the inference worker would consume them from
    ``<prefix>.preprocessed.standard`` (preprocess makes one frame of what a poll brought;
    here the poll's frames are cut to ``frame_tasks``)."""
    preprocess = PreprocessStage(topics, repository, LimitsSettings())
    works = []
    for offset, text in enumerate(texts):
        inputs = {"text": np.array([text], dtype=object)}
        request = InferenceRequest.new(tenant=TENANT, pipeline=PIPELINE, inputs=inputs)
        record = _record(topics.requests, offset, encode(request), None, headers_for(request))
        works.append(preprocess.decode(record))
    output = await preprocess.process(works)
    outgoing = await output.records(None, max_record_bytes=1 << 30)
    wanted = topics.preprocessed_of("standard")
    frames = [decode_frame(o.value) for o in outgoing if o.topic == wanted]
    if sum(len(frame) for frame in frames) != len(texts):
        raise RuntimeError(f"preprocess did not forward every text to {wanted}: {outgoing[:1]}")
    records: list[ConsumerRecord[bytes, bytes]] = []
    for frame in frames:
        for start in range(0, len(frame), frame_tasks):
            part = frame.slice(start, min(start + frame_tasks, len(frame)))
            value = encode_frame(part)
            key = part.task_ids[0].encode()
            records.append(_record(wanted, len(records), value, key, frame_headers(part)))
    return records


def _record(
    topic: str,
    offset: int,
    value: bytes,
    key: bytes | None,
    headers: Sequence[tuple[str, bytes]],
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=int(time.time() * 1000),
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key) if key else -1,
        serialized_value_size=len(value),
        headers=tuple(headers),
    )


# ---- the inference worker's batching path --------------------------------------------------


@dataclass
class _Meter:
    """Counts finished tasks: warm-up first, then a window of ``duration_s``."""

    warmup_tasks: int
    warmup_min_s: float
    duration_s: float
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    window_start: float | None = None
    window_end: float | None = None
    tasks: int = 0
    batches: int = 0
    latencies_s: list[float] = field(default_factory=list)
    over: asyncio.Event = field(default_factory=asyncio.Event)

    def finished(self, items: Sequence[Work], now: float) -> None:
        tasks = sum(work.tasks for work in items)
        self.done += tasks
        if self.window_start is None:
            warm = self.done >= self.warmup_tasks and now - self.started >= self.warmup_min_s
            if warm:
                self.window_start = now
            return
        if self.window_end is not None:
            return  # draining after the window
        self.tasks += tasks
        self.batches += 1
        for work in items:
            self.latencies_s.extend([now - work.received_at] * work.tasks)
        if now - self.window_start >= self.duration_s:
            self.window_end = now
            self.over.set()


class ClosedLoop:
    """Keeps ``concurrency`` tasks in the stage's batching path, as ``StageRunner`` runs it."""

    def __init__(
        self,
        stage: InferenceStage,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        concurrency: int,
        worker: WorkerSettings,
        lanes: LaneSettings,
    ) -> None:
        self.stage = stage
        self.records = records
        self.concurrency = concurrency
        # Built as StageRunner builds it, with the runner's accessors of a Work.
        self.batcher: LaneBatcher[Work] = LaneBatcher(
            key=_key_of,
            lane_of=lambda work: work.lane,
            tenant_of=lambda work: work.tenant,
            size_of=lambda work: work.rows,
            cost_of=lambda work: work.cost,
            window_of=stage.batching,
            min_share=lanes.min_shares(),
        )
        self.slots = BatchSlots(worker.batches_in_flight, lanes.express_batches)
        self.policy = RetryPolicy(worker.max_attempts, worker.retry_backoff_ms / 1000)
        self.target = FailureTarget(stage.name, stage.topics.results, stage.topics.dlq)
        self._free = concurrency
        self._room = asyncio.Event()
        self._room.set()
        self._next = 0

    async def run(self, meter: _Meter) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._intake(meter))
            group.create_task(self._dispatch(group, meter))
            await meter.over.wait()
            # Queued work is dropped (nothing measures it any more); running batches finish.
            self.batcher.remove_if(lambda _: True)
            self.batcher.close()
            self._room.set()

    async def _intake(self, meter: _Meter) -> None:
        """Decode and put as many records as tasks finished (the runner's ``_take``)."""
        while not meter.over.is_set():
            await self._room.wait()
            self._room.clear()
            if meter.over.is_set():
                return
            while self._free > 0:  # whole frames: the last may take it a little below 0
                record = self.records[self._next % len(self.records)]
                self._next += 1
                work = self.stage.decode(record)
                self._free -= work.tasks
                self.batcher.put(work)

    async def _dispatch(self, group: asyncio.TaskGroup, meter: _Meter) -> None:
        """The runner's ``_dispatch``: a batch forms once a slot would take it."""
        while True:
            batch = await self.batcher.next_batch(admit=self.slots.admit)
            if batch is None:
                return
            slot = self.slots.take(batch.lane)
            group.create_task(self._run_batch(batch, slot, meter))

    async def _run_batch(self, batch: Batch[Work], slot: SlotKind, meter: _Meter) -> None:
        try:
            await run_batch(self.stage, batch, self.policy, self.target)
            meter.finished(batch.items, time.monotonic())
        finally:
            self.slots.give_back(slot)
            self.batcher.tick()
            self._free += sum(work.tasks for work in batch.items)
            self._room.set()


async def run_batch(
    stage: InferenceStage,
    batch: Batch[Work],
    policy: RetryPolicy,
    target: FailureTarget,
    budget: LatencyBudget | None = None,
) -> None:
    """The runner's ``_run_batch`` minus the ledger and delivery: process, tell the latency
    budget how long the run took (timed as the runner times it), encode every output."""
    items = batch.items
    traceparents = [w.header("traceparent") for w in items]
    started = time.perf_counter()
    with tracing.active().batch(stage.name, batch.batch_id, traceparents):
        output = await process_isolating(stage.process, items, policy, target)
    if budget is not None:
        run_s = output.model_s or time.perf_counter() - started
        budget.ran(batch.key, sum(w.rows for w in items), run_s)
    outgoing = await output.records(None)
    failed = [o for o in outgoing if o.kind != "forward"]
    if failed or len(outgoing) != len(items):
        raise RuntimeError(
            f"batch of {len(items)} gave {len(outgoing)} records, "
            f"{len(failed)} not forwarded: {failed[:1]}"
        )


def _key_of(work: Work) -> Hashable:
    return work.batch_key


# ---- measuring -----------------------------------------------------------------------------


def runtime_settings(
    providers: Sequence[str], threads: int, overrides: Sequence[str] = ()
) -> RuntimeSettings:
    """The workers' runtime settings with these providers and intra-op threads (0: the
    workers' default), and ``overrides`` as ``FIELD=VALUE`` (``--runtime allow_spinning=true``)."""
    fields = dict(item.split("=", 1) for item in overrides)
    return RuntimeSettings.model_validate(
        {**fields, "providers": tuple(providers), "intra_op_threads": threads}
    )


async def measure(
    repository_root: Path, version: ModelVersion, texts: Sequence[str], options: Options
) -> list[Row]:
    repository = ModelRepository(repository_root)
    topics = Topics(TOPIC_PREFIX)
    made = {
        size: await preprocessed_records(repository, topics, texts, min(options.frame_tasks, size))
        for size in options.batch_sizes
    }
    settings = runtime_settings(options.providers, options.threads, options.runtime)
    raw_model = OnnxModel(version, RuntimeOptions.from_settings(settings))  # the worker's options
    tokenizer = bench_model.tokenizer_of(version)
    worker, lanes = WorkerSettings(), LaneSettings()
    metrics = WorkerMetrics("inference")
    rows = []
    async with contextlib.AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(ModelRuntime.from_settings(settings))
        events = ModelEvents(metrics, "bench")
        lifecycle = await stack.enter_async_context(
            ModelLifecycle(repository, runtime, ModelSettings(), events)
        )
        for batch_size in options.batch_sizes:
            feeds = bench_model.feeds_for(tokenizer, texts[:batch_size])
            raw = bench_model.measure_raw(
                raw_model, feeds, options.raw_duration_s, concurrent=settings.concurrent_runs
            )
            stage = InferenceStage(
                topics,
                repository,
                runtime,
                LimitsSettings().decode_limits(),
                batch_size,
                MAX_WAIT_MS,
                metrics,
                lifecycle=lifecycle,
                partitions_per_tenant=lanes.partitions_per_tenant,
            )
            loop = ClosedLoop(stage, made[batch_size], options.concurrency, worker, lanes)
            # Two rounds of the loop before the window: every measured task entered a
            # queue already in its steady state, not the initial burst.
            meter = _Meter(2 * options.concurrency, options.warmup_min_s, options.duration_s)
            await loop.run(meter)
            rows.append(_row(batch_size, meter, raw.seq_per_s))
            print(
                f"max_batch_size {batch_size}: {rows[-1].tasks_per_s:,.0f} tasks/s "
                f"(raw {raw.seq_per_s:,.0f} seq/s), P50 {rows[-1].p50_ms:,.0f} ms",
                flush=True,
            )
    return rows


def _row(batch_size: int, meter: _Meter, raw_seq_per_s: float) -> Row:
    assert meter.window_start is not None
    assert meter.window_end is not None
    window_s = meter.window_end - meter.window_start
    p50, p99 = np.percentile(np.asarray(meter.latencies_s) * 1000, [50, 99])
    return Row(
        max_batch_size=batch_size,
        tasks_per_s=meter.tasks / window_s,
        mean_batch=meter.tasks / meter.batches,
        p50_ms=float(p50),
        p99_ms=float(p99),
        raw_seq_per_s=raw_seq_per_s,
    )


# ---- isolation: realtime latency idle vs under a bulk flood --------------------------------


@dataclass(frozen=True)
class IsolationOptions:
    providers: tuple[str, ...]
    threads: int
    max_batch_size: int | None
    """None: the model's own window (MiniLM's config: 64 rows, 5 ms)."""
    capacity_s: float
    idle_s: float
    loaded_s: float
    settle_s: float
    """Leading seconds of each phase left out: the bulk backlog builds, the budget learns."""
    seed: int
    runtime: tuple[str, ...] = ()
    """Runtime settings overridden, ``FIELD=VALUE``."""

    @property
    def on_device(self) -> bool:
        return any(p != "CPUExecutionProvider" for p in self.providers)


@dataclass
class Tally:
    """What one phase measured inside its window (after ``settle_s``)."""

    realtime_ms: list[float] = field(default_factory=list)
    """Put -> batch processed and outputs encoded, for realtime tasks put in the window."""
    bulk_tasks: int = 0
    """Bulk tasks finished in the window."""
    batches: int = 0
    rows: int = 0
    min_bulk_queued: int | None = None
    """Fewest bulk tasks left queued as a batch formed in the window: >= max_batch_size means
    the worker never ran out of bulk work (saturated)."""
    window_s: float = 0.0

    @property
    def bulk_per_s(self) -> float:
        return self.bulk_tasks / self.window_s if self.window_s else 0.0

    @property
    def mean_batch(self) -> float:
        return self.rows / self.batches if self.batches else 0.0

    def percentiles(self) -> tuple[float, float, float]:
        if not self.realtime_ms:
            return (float("nan"),) * 3
        p50, p95, p99 = np.percentile(self.realtime_ms, [50, 95, 99])
        return float(p50), float(p95), float(p99)


class OpenLoopWorker:
    """The inference runner's scheduling path, fed by open-loop arrivals instead of Kafka.

    Built as ``StageRunner`` builds it: the same ``LaneBatcher`` accessors and min shares,
    ``row_cap_of`` from a ``LatencyBudget`` that sees every put's lane and every processed
    batch's rows and model time; a batch forms once a ``BatchSlots`` slot would take it.
    Left out besides Kafka and the ledger: ``FlowControl``, which pauses bulk partitions
    while realtime work is queued; here the bulk feeder bounds the backlog itself.
    """

    def __init__(
        self, stage: InferenceStage, worker: WorkerSettings, lanes: LaneSettings, budget_ms: float
    ) -> None:
        self.stage = stage
        self.budget = LatencyBudget(budget_ms, lanes.realtime_active_s)
        self.batcher: LaneBatcher[Work] = LaneBatcher(
            key=_key_of,
            lane_of=lambda work: work.lane,
            tenant_of=lambda work: work.tenant,
            size_of=lambda work: work.rows,
            cost_of=lambda work: work.cost,
            window_of=stage.batching,
            min_share=lanes.min_shares(),
            row_cap_of=self.budget.row_cap,
        )
        self.slots = BatchSlots(worker.batches_in_flight, lanes.express_batches)
        self.policy = RetryPolicy(worker.max_attempts, worker.retry_backoff_ms / 1000)
        self.target = FailureTarget(stage.name, stage.topics.results, stage.topics.dlq)
        self.window = (float("inf"), float("inf"))
        self.tally = Tally()

    def put(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """The runner's ``_take`` after its redelivery checks."""
        work = self.stage.decode(record)
        self.budget.saw(work.lane)
        self.batcher.put(work)

    def queued(self, lane: str) -> int:
        return self.batcher.queued_by_lane()[lane]

    async def dispatch(self, group: asyncio.TaskGroup) -> None:
        while True:
            batch = await self.batcher.next_batch(admit=self.slots.admit)
            if batch is None:
                return
            slot = self.slots.take(batch.lane)
            self._formed(batch)
            group.create_task(self._run(batch, slot))

    def _formed(self, batch: Batch[Work]) -> None:
        start, end = self.window
        if start <= time.monotonic() < end:
            left = self.queued("bulk")
            low = self.tally.min_bulk_queued
            self.tally.min_bulk_queued = left if low is None else min(low, left)

    async def _run(self, batch: Batch[Work], slot: SlotKind) -> None:
        try:
            await run_batch(self.stage, batch, self.policy, self.target, self.budget)
        finally:
            self.slots.give_back(slot)
            self.batcher.tick()
        now = time.monotonic()
        start, end = self.window
        tally = self.tally
        for work in batch.items:
            if work.lane == "realtime" and start <= work.received_at < end:
                tally.realtime_ms.append((now - work.received_at) * 1000)
            elif work.lane == "bulk" and start <= now < end:
                tally.bulk_tasks += work.tasks
        if start <= now < end:
            tally.batches += 1
            tally.rows += batch.size


async def _realtime_feed(
    worker: OpenLoopWorker,
    records: Sequence[ConsumerRecord[bytes, bytes]],
    per_s: float,
    rng: np.random.Generator,
) -> None:
    """Poisson arrivals at ``per_s``; a late wake-up puts every arrival already due."""
    next_at = time.monotonic()
    sent = 0
    while True:
        next_at += float(rng.exponential(1 / per_s))
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        worker.put(records[sent % len(records)])
        sent += 1


async def _bulk_feed(
    worker: OpenLoopWorker,
    records: Sequence[ConsumerRecord[bytes, bytes]],
    per_s: float,
    queue_cap: int,
) -> None:
    """A flood offered at ``per_s`` (inf: as fast as there is room) in ``BULK_TICK_S`` steps.

    It starts with ``queue_cap`` tasks already published, so the worker is saturated from the
    first batch rather than once the backlog has grown. What would push the backlog past
    ``queue_cap`` is held back, as it would wait in Kafka behind paused partitions, and put as
    soon as there is room: the worker never runs out of bulk work."""
    started = time.monotonic()
    sent = 0
    while True:
        elapsed_s = time.monotonic() - started
        offered = queue_cap + (int(per_s * elapsed_s) if per_s < float("inf") else sent)
        for _ in range(max(0, min(offered - sent, queue_cap - worker.queued("bulk")))):
            worker.put(records[sent % len(records)])
            sent += 1
        await asyncio.sleep(BULK_TICK_S)


async def run_phase(
    stage: InferenceStage,
    feeds: Sequence[Callable[[OpenLoopWorker], Coroutine[Any, Any, None]]],
    budget_ms: float,
    settle_s: float,
    window_s: float,
) -> Tally:
    """A fresh worker (batcher and budget) fed by ``feeds``; measures after ``settle_s``."""
    worker = OpenLoopWorker(stage, WorkerSettings(), LaneSettings(), budget_ms)
    async with asyncio.TaskGroup() as group:
        dispatcher = group.create_task(worker.dispatch(group))
        feeders = [group.create_task(feed(worker)) for feed in feeds]
        start = time.monotonic() + settle_s
        worker.window = (start, start + window_s)
        await asyncio.sleep(settle_s + window_s)
        for feeder in feeders:
            feeder.cancel()
        # Realtime work put in the window still finishes and counts; the bulk backlog goes.
        worker.batcher.remove_if(lambda work: work.lane == "bulk")
        worker.batcher.close()
        await dispatcher
    worker.tally.window_s = window_s
    return worker.tally


@dataclass(frozen=True)
class IsolationResult:
    capacity: Tally
    idle: Tally
    loaded: Tally
    loaded_no_budget: Tally
    realtime_per_s: float
    bulk_per_s: float
    bulk_queue_cap: int
    window: BatchWindow
    budget_ms: float


async def measure_isolation(
    repository_root: Path, texts: Sequence[str], options: IsolationOptions
) -> IsolationResult:
    repository = ModelRepository(repository_root)
    topics = Topics(TOPIC_PREFIX)
    made = await preprocessed_records(repository, topics, texts)
    # The realtime and bulk input topics: decode takes each task's lane from its topic.
    realtime = _on_topic(made, topics.preprocessed_of("realtime"))
    bulk = _on_topic(made, topics.preprocessed_of("bulk"))
    lanes = LaneSettings()
    metrics = WorkerMetrics("inference")
    rng = np.random.default_rng(options.seed)
    async with contextlib.AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(
            ModelRuntime.from_settings(
                runtime_settings(options.providers, options.threads, options.runtime)
            )
        )
        lifecycle = await stack.enter_async_context(
            ModelLifecycle(repository, runtime, ModelSettings(), ModelEvents(metrics, "bench"))
        )
        stage = InferenceStage(
            topics,
            repository,
            runtime,
            LimitsSettings().decode_limits(),
            options.max_batch_size,
            None,
            metrics,
            lifecycle=lifecycle,
            partitions_per_tenant=lanes.partitions_per_tenant,
        )
        window = stage.batching(stage.decode(bulk[0]).batch_key)
        # C: bulk alone, its backlog topped up to a few batches every tick.
        cap = CAPACITY_QUEUE_BATCHES * window.max_batch_size
        capacity = await run_phase(
            stage,
            [partial(_bulk_feed, records=bulk, per_s=float("inf"), queue_cap=cap)],
            lanes.latency_budget_ms,
            CAPACITY_WARMUP_S,
            options.capacity_s,
        )
        c = capacity.bulk_per_s
        print(f"capacity C: {c:,.0f} tasks/s, mean batch {capacity.mean_batch:.1f}", flush=True)
        realtime_per_s, bulk_per_s = REALTIME_SHARE * c, BULK_OFFER * c
        # As much as a worker holds: `max_in_flight` bounds what it takes from Kafka.
        bulk_cap = min(
            WorkerSettings().max_in_flight,
            max(CAPACITY_QUEUE_BATCHES * window.max_batch_size, int(BULK_QUEUE_S * c)),
        )

        def rt(worker: OpenLoopWorker) -> Coroutine[Any, Any, None]:
            return _realtime_feed(worker, realtime, realtime_per_s, rng)

        def flood(worker: OpenLoopWorker) -> Coroutine[Any, Any, None]:
            return _bulk_feed(worker, bulk, bulk_per_s, bulk_cap)

        budget_ms = lanes.latency_budget_ms
        tallies = []
        for label, feeds, phase_budget_ms, window_s in (
            ("idle", [rt], budget_ms, options.idle_s),
            ("loaded", [rt, flood], budget_ms, options.loaded_s),
            ("loaded, budget off", [rt, flood], 0.0, options.loaded_s),
        ):
            tally = await run_phase(stage, feeds, phase_budget_ms, options.settle_s, window_s)
            p50, p95, p99 = tally.percentiles()
            print(
                f"{label}: realtime P50 {p50:.1f} / P95 {p95:.1f} / P99 {p99:.1f} ms "
                f"({len(tally.realtime_ms)} tasks), bulk {tally.bulk_per_s:,.0f} tasks/s, "
                f"mean batch {tally.mean_batch:.1f}",
                flush=True,
            )
            tallies.append(tally)
    idle, loaded, loaded_no_budget = tallies
    return IsolationResult(
        capacity,
        idle,
        loaded,
        loaded_no_budget,
        realtime_per_s,
        bulk_per_s,
        bulk_cap,
        window,
        budget_ms,
    )


def _on_topic(
    records: Sequence[ConsumerRecord[bytes, bytes]], topic: str
) -> list[ConsumerRecord[bytes, bytes]]:
    return [_record(topic, r.offset, r.value or b"", r.key, r.headers) for r in records]


def isolation_table(result: IsolationResult, options: IsolationOptions, command: str) -> str:
    w = result.window
    idle_p99 = result.idle.percentiles()[2]
    lines = [
        f"`{MODEL_NAME}`, one {SEQUENCE_TOKENS}-token sentence per task; providers "
        f"`{','.join(options.providers)}`, {_threads(options)}. "
        "The inference runner's scheduling path in one process, no Kafka, no other process "
        "competing for the CPU: `LaneBatcher` built as `StageRunner` builds it (min shares "
        f"from `LaneSettings`, `row_cap_of` from a `LatencyBudget` of {result.budget_ms:g} ms "
        "told every put's lane and every batch's rows and model time), a batch formed once "
        f"a slot takes it (`batches_in_flight` {WorkerSettings().batches_in_flight} plus "
        f"{LaneSettings().express_batches} express for realtime; model runs on the general "
        "threads highest lane first, realtime ones also on the express thread), the model's "
        "window "
        f"(`max_batch_size` {w.max_batch_size}, `max_wait_ms` {w.max_wait_ms:g}).",
        f"Capacity C = {result.capacity.bulk_per_s:,.0f} tasks/s (bulk alone, saturated, "
        f"{options.capacity_s:g} s; mean batch {result.capacity.mean_batch:.1f}). Realtime: "
        f"Poisson arrivals at 0.1 C = {result.realtime_per_s:,.1f} tasks/s on "
        "`preprocessed.realtime`, alone (idle) and while bulk is offered at 3 C = "
        f"{result.bulk_per_s:,.0f} tasks/s on `preprocessed.bulk` (backlog held at "
        f"{result.bulk_queue_cap:,} tasks; the rest waits, as in Kafka). Latency: put -> "
        f"batch processed and outputs encoded. Windows: idle {options.idle_s:g} s, loaded "
        f"{options.loaded_s:g} s, each after {options.settle_s:g} s of settling.",
        f"Machine: {bench_model.machine_description(options.providers)}.",
        f"Command: `{command}`",
        "",
        "| phase | latency budget | realtime tasks | P50 ms | P95 ms | P99 ms "
        "| P99 / idle P99 | bulk tasks/s | mean batch | fewest bulk queued |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, tally, budget_ms in (
        ("idle", result.idle, result.budget_ms),
        ("loaded (bulk 3 C)", result.loaded, result.budget_ms),
        ("loaded (bulk 3 C)", result.loaded_no_budget, 0.0),
    ):
        p50, p95, p99 = tally.percentiles()
        low = "-" if tally is result.idle else f"{tally.min_bulk_queued or 0:,}"
        lines.append(
            f"| {label} | {f'{budget_ms:g} ms' if budget_ms else 'off'} "
            f"| {len(tally.realtime_ms):,} | {p50:,.1f} | {p95:,.1f} | {p99:,.1f} "
            f"| {p99 / idle_p99:.2f}x | {tally.bulk_per_s:,.0f} | {tally.mean_batch:.1f} "
            f"| {low} |"
        )
    lines += [
        "",
        f"Target: P99 loaded / P99 idle <= {TARGET_RATIO:g}x. Met with the budget: "
        f"{_verdict(result.loaded, idle_p99)}; without: "
        f"{_verdict(result.loaded_no_budget, idle_p99)}.",
    ]
    return "\n".join(lines)


def _verdict(tally: Tally, idle_p99: float) -> str:
    ratio = tally.percentiles()[2] / idle_p99
    return f"{'yes' if ratio <= TARGET_RATIO else 'no'} ({ratio:.2f}x)"


# ---- report --------------------------------------------------------------------------------


def _threads(options: Options | IsolationOptions) -> str:
    settings = runtime_settings(options.providers, options.threads, options.runtime)
    per_run = RuntimeOptions.from_settings(settings).intra_op_threads
    return (
        f"{settings.concurrent_runs} general model runs at once of {per_run} intra-op "
        f"thread(s) each, {settings.express_runs} express"
    )


def table(rows: Sequence[Row], options: Options, command: str) -> str:
    base = next((r.tasks_per_s for r in rows if r.max_batch_size == 1), None)
    lines = [
        f"`{MODEL_NAME}` (pooling in graph), one {SEQUENCE_TOKENS}-token sentence per task; "
        f"providers `{','.join(options.providers)}`, {_threads(options)}, "
        f"`batches_in_flight` {WorkerSettings().batches_in_flight}, "
        f"`max_wait_ms` {MAX_WAIT_MS:g}. Preprocessed frames of up to {options.frame_tasks} "
        f"tasks (at most the batch size). Closed loop of {options.concurrency} tasks "
        f"outstanding, {options.duration_s:g} s per size after warm-up; latency is decode + put "
        "to outputs encoded (P50 is about outstanding / throughput: a full queue, not idle "
        "latency). Raw: the same batch back to back on a session with the same options, on "
        "as many threads at once as the worker's general runs.",
        f"Machine: {bench_model.machine_description(options.providers)}.",
        f"Command: `{command}`",
        "",
        "| max_batch_size | mean batch | tasks/s | vs batch 1 | P50 ms | P99 ms "
        "| raw ORT seq/s | worker / raw |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        gain = f"{r.tasks_per_s / base:.1f}x" if base else "-"
        lines.append(
            f"| {r.max_batch_size} | {r.mean_batch:.1f} | {r.tasks_per_s:,.0f} | {gain} "
            f"| {r.p50_ms:,.1f} | {r.p99_ms:,.1f} | {r.raw_seq_per_s:,.0f} "
            f"| {r.efficiency:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[Row], name: str) -> str | None:
    """Throughput (worker and raw) and latency by batch size; None without matplotlib."""
    try:
        from bench.plots import figure, save
    except ImportError:  # matplotlib is the `bench` extra
        return None
    fig, (speed, latency) = figure(2)
    sizes = [r.max_batch_size for r in rows]
    speed.plot(sizes, [r.tasks_per_s for r in rows], marker="o", label="inference worker")
    speed.plot(sizes, [r.raw_seq_per_s for r in rows], marker="s", ls="--", label="raw ORT")
    speed.set(xscale="log", yscale="log", xlabel="max_batch_size", ylabel="tasks/s")
    speed.set_title("Throughput")
    speed.set_xticks(sizes, [str(s) for s in sizes])
    speed.legend()
    latency.plot(sizes, [r.p50_ms for r in rows], marker="o", label="P50")
    latency.plot(sizes, [r.p99_ms for r in rows], marker="o", label="P99")
    latency.set(xscale="log", yscale="log", xlabel="max_batch_size", ylabel="ms")
    latency.set_title("Latency (closed loop)")
    latency.set_xticks(sizes, [str(s) for s in sizes])
    latency.legend()
    path = save(fig, name)
    return f"![{path.stem}](bench/plots/{path.name})"


# ---- command line --------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--providers", default="CPUExecutionProvider")
    parser.add_argument("--batch-sizes", type=_ints, default=BATCH_SIZES)
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads per run; 0: cores / runs"
    )
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="tasks outstanding")
    parser.add_argument(
        "--frame-tasks",
        type=int,
        default=FRAME_TASKS,
        help="tasks per preprocessed frame (at most the batch size)",
    )
    parser.add_argument("--duration-s", type=float, default=10.0, help="window per size")
    parser.add_argument("--quick", action="store_true", help="short windows, for a smoke test")
    parser.add_argument("--source", type=Path, help="MiniLM source folder (bench.gpu_source)")
    parser.add_argument("--out", type=Path, help="write the GPU-marked table here instead")
    parser.add_argument("--insert", type=Path, help="copy an --out file into BENCHMARKS.md")
    parser.add_argument(
        "--runtime", action="append", default=[], help="a runtime setting, FIELD=VALUE"
    )
    isolation = parser.add_argument_group("--isolation: realtime latency idle vs under a flood")
    isolation.add_argument("--isolation", action="store_true", help="measure isolation instead")
    isolation.add_argument("--max-batch-size", type=int, help="default: the model's window")
    isolation.add_argument("--capacity-s", type=float, default=5.0, help="window for C")
    isolation.add_argument("--idle-s", type=float, default=30.0, help="realtime alone")
    isolation.add_argument("--loaded-s", type=float, default=40.0, help="per loaded phase")
    isolation.add_argument("--settle-s", type=float, default=4.0, help="left out per phase")
    isolation.add_argument("--seed", type=int, default=1, help="of the Poisson arrivals")
    return parser.parse_args(argv)


def options_of(args: argparse.Namespace) -> Options:
    return Options(
        providers=tuple(args.providers.split(",")),
        batch_sizes=tuple(args.batch_sizes),
        threads=args.threads,
        concurrency=args.concurrency,
        frame_tasks=args.frame_tasks,
        duration_s=1.5 if args.quick else args.duration_s,
        raw_duration_s=0.5 if args.quick else 3.0,
        warmup_min_s=0.5 if args.quick else 1.0,
        runtime=tuple(args.runtime),
    )


def isolation_options_of(args: argparse.Namespace) -> IsolationOptions:
    return IsolationOptions(
        providers=tuple(args.providers.split(",")),
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        capacity_s=2.0 if args.quick else args.capacity_s,
        idle_s=4.0 if args.quick else args.idle_s,
        loaded_s=4.0 if args.quick else args.loaded_s,
        settle_s=1.0 if args.quick else args.settle_s,
        seed=args.seed,
        runtime=tuple(args.runtime),
    )


def insert(path: Path) -> None:
    """Put a table written with ``--out`` (on the GPU machine) into its BENCHMARKS.md section:
    the batching or the isolation one, by the markers in the file."""
    text = path.read_text(encoding="utf-8")
    start, end, title = (
        (ISO_GPU_START, ISO_GPU_END, ISO_GPU_TITLE)
        if ISO_GPU_START in text
        else (GPU_START, GPU_END, GPU_TITLE)
    )
    block = text.split(start, 1)[1].split(end, 1)[0].strip("\n")
    write_section(block, BENCHMARKS, start, end, title)


def main_isolation(args: argparse.Namespace) -> None:
    options = isolation_options_of(args)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-isolation-") as root:
        version = bench_model.build_repository(Path(root), args.source)
        tokenizer = bench_model.tokenizer_of(version)
        texts = bench_model.sentences(tokenizer, SEQUENCE_TOKENS, POOL)
        result = asyncio.run(measure_isolation(Path(root), texts, options))
    python = "python3" if options.on_device else ".venv/bin/python"
    command = " ".join([f"{python} -m bench.bench_batching", *sys.argv[1:]])
    markdown = isolation_table(result, options, command)
    print(markdown)
    if args.out is not None:
        args.out.write_text(f"{ISO_GPU_START}\n{markdown}\n{ISO_GPU_END}\n", encoding="utf-8")
    else:
        write_section(markdown, BENCHMARKS, ISO_START, ISO_END, ISO_TITLE)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.insert is not None:
        insert(args.insert)
        return
    if args.isolation:
        main_isolation(args)
        return
    options = options_of(args)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-batching-") as root:
        version = bench_model.build_repository(Path(root), args.source)
        tokenizer = bench_model.tokenizer_of(version)
        texts = bench_model.sentences(tokenizer, SEQUENCE_TOKENS, POOL)
        rows = asyncio.run(measure(Path(root), version, texts, options))
    # On the GPU machine it is that image's python3 (bench/gpu_run.sh), not the project venv.
    python = "python3" if options.on_device else ".venv/bin/python"
    command = " ".join([f"{python} -m bench.bench_batching", *sys.argv[1:]])
    markdown = table(rows, options, command)
    picture = plot(rows, "batching_gpu" if options.on_device else "batching_cpu")
    if picture is not None:
        markdown += f"\n\n{picture}"
    print(markdown)
    if args.out is not None:
        args.out.write_text(f"{GPU_START}\n{markdown}\n{GPU_END}\n", encoding="utf-8")
    else:
        write_section(markdown, BENCHMARKS, START, END, TITLE)


if __name__ == "__main__":
    main()
