"""A stage worker process: its components composed in one AsyncExitStack, run until SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Literal

import onnxruntime as ort
import redis.asyncio as aioredis

from schemas import ClaimCheck
from workers.control import ControlListener
from workers.engine.runner import Stage, StageRunner
from workers.engine.telemetry import StageTelemetry
from workers.eventloop import running_loop_name
from workers.gc_tuning import tune_garbage_collection
from workers.kafka.admin import TopicSpec, ensure_topics
from workers.kafka.clients import (
    batch_bytes,
    client_id,
    make_consumer,
    make_producer,
    start_client,
    stop_client,
)
from workers.kafka.produce import TopicCheck
from workers.lanes.admission import Admission
from workers.lanes.quota import TenantQuota
from workers.lanes.rate import RateQuota
from workers.lanes.registry import TenantDirectory
from workers.lanes.replies import ReplyTopics
from workers.ledger import Ledger
from workers.ledger.claims import TaskClaims
from workers.ledger.connection import redis_client as connect_redis
from workers.models.events import ModelEvents
from workers.models.lifecycle import ModelLifecycle
from workers.models.repository import ModelRepository
from workers.models.runtime import ModelRuntime, choose_providers
from workers.models.shadow import ShadowRunner
from workers.models.watcher import RepositoryWatcher
from workers.names import RedisKeys, Topics
from workers.observability import tracing
from workers.observability.http import ObservabilityServer
from workers.observability.metrics import WorkerMetrics
from workers.observability.registry import WorkerAnnouncement
from workers.settings import DEFAULT_METRICS_PORT, Settings
from workers.signals import on_stop_signals
from workers.stages.fused import FusedStage
from workers.stages.inference import InferenceStage
from workers.stages.postprocess import PostprocessStage
from workers.stages.preprocess import PreprocessStage

log = logging.getLogger(__name__)

StageName = Literal["preprocess", "inference", "postprocess", "fused"]


def _lower_cpu_priority(nice: int, sched_idle: bool) -> None:
    """`worker.nice` and `worker.sched_idle` for every thread of the process: Linux keeps both
    per thread, threads started later inherit them, and some start at import already."""
    if not nice and not sched_idle:
        return
    if sched_idle:
        _idle_autogroup()
    tasks = Path("/proc/self/task")  # without /proc (not Linux): the calling thread only
    for thread in [int(name) for name in os.listdir(tasks)] if tasks.exists() else [0]:
        if nice:
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + nice)
        if sched_idle:
            os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))


def _idle_autogroup() -> None:
    """Where the kernel groups tasks by session (`sched_autogroup_enabled`), it shares the CPU
    between sessions first and honours SCHED_IDLE only within one: a broker or Redis started
    in a session of its own would wait out an idle worker's slice. A session of the worker's
    own at autogroup nice 19 makes it idle against them too."""
    autogroup = Path("/proc/self/autogroup")
    if not autogroup.exists():
        return
    with contextlib.suppress(PermissionError):  # already a session (or group) leader
        os.setsid()
    try:
        autogroup.write_text("19")
    except OSError as exc:
        log.warning("worker.sched_idle: autogroup nice not set (%s)", exc)


def redis_client(settings: Settings) -> aioredis.Redis:
    """A client that rides through a Redis restart: stale pooled connections are retried."""
    return connect_redis(settings.redis, resilient=True)


async def ensure_pipeline_topics(settings: Settings) -> None:
    topics = Topics(settings.kafka.topic_prefix)
    k = settings.kafka
    await ensure_topics(
        k, [TopicSpec(name, k.partitions, k.replication_factor) for name in topics.all()]
    )


def tokenizer_threads(stage_name: StageName, providers: tuple[str, ...]) -> None:
    """A fused worker whose model runs on the CPU tokenizes on its own thread: the model's
    intra-op threads take the process's cores already, and the tokenizer's pool (a thread a
    core, at the event loop's priority) only preempts them at every batch. MiniLM on 2
    cores: the pool's threads took 55 us of CPU a task, the one thread 40 us more; the
    throughput difference is within this machine's noise (BENCHMARKS). What the user set
    stays theirs."""
    if (
        stage_name == "fused"
        and len(choose_providers(providers, ort.get_available_providers())) == 1
    ):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


async def run_worker(stage_name: StageName, settings: Settings) -> None:
    """Run one stage until SIGTERM/SIGINT; a second SIGINT exits at once."""
    w = settings.worker
    _lower_cpu_priority(w.nice, w.sched_idle)
    tokenizer_threads(stage_name, settings.runtime.providers)
    topics = Topics(settings.kafka.topic_prefix)
    repository = ModelRepository(settings.model_repository)
    limits = settings.limits.decode_limits()
    o = settings.observability
    keys = RedisKeys(settings.redis.key_prefix)
    metrics = WorkerMetrics(stage_name, o.tenant_label_cap)
    telemetry = StageTelemetry(metrics, stage_name, o.stuck_after_s)
    tracer = tracing.configure(o.otel_enabled, o.otel_exporter, o.otel_endpoint)
    async with AsyncExitStack() as stack:
        stack.callback(tracer.shutdown)  # last out: after the runner finished its batches
        # First, so a taken port fails at once; an unset port is only a default, and the
        # second worker on a host takes a free one (announced below with the real port).
        server = await stack.enter_async_context(
            ObservabilityServer(
                metrics.registry,
                telemetry.health,
                o.metrics_host,
                DEFAULT_METRICS_PORT if o.metrics_port is None else o.metrics_port,
                fallback_to_free=o.metrics_port is None,
            )
        )
        await ensure_pipeline_topics(settings)
        redis = redis_client(settings)
        stack.push_async_callback(redis.aclose)
        ledger = await stack.enter_async_context(Ledger(redis, keys, settings.redis.task_ttl_s))
        # Every stage shares fairly by the tenants' weights; preprocess also admits by them.
        directory = await stack.enter_async_context(TenantDirectory(redis, keys, settings.lanes))
        instance = client_id(settings.kafka, stage_name)
        await stack.enter_async_context(
            WorkerAnnouncement(
                redis,
                keys,
                instance,
                {
                    "stage": stage_name,
                    "metrics_url": f"http://{_advertised_host(o.metrics_host)}:{server.port}/metrics",
                    "pid": str(os.getpid()),
                    "started_at_ms": str(int(time.time() * 1000)),
                },
            )
        )
        quota = TenantQuota(
            redis, keys, settings.limits.max_pending_tasks_per_tenant, settings.limits.pending_ttl_s
        )
        stage: Stage
        admission = None
        # A fused worker reads requests in preprocess's group: beside preprocess workers it
        # takes a share of the partitions instead of doing every request a second time.
        group = topics.group_of("preprocess" if stage_name == "fused" else stage_name, w.lanes)
        transactional_id = None
        if w.delivery == "exactly_once":
            transactional_id = f"{group}.{w.instance_id or instance}"
        producer = make_producer(
            settings.kafka, stage_name, transactional_id, w.transaction_timeout_ms
        )
        await start_client(producer, settings.kafka)
        stack.push_async_callback(stop_client, producer)
        if stage_name in ("preprocess", "fused"):
            admission = Admission(
                directory,
                RateQuota(redis, keys),
                quota,
                settings.lanes,
                replies=ReplyTopics(
                    TopicCheck(producer, settings.limits.reply_topic_check_ttl_s), topics
                ),
                claims=TaskClaims(redis, keys, settings.redis.task_ttl_s),
            )
            preprocess = PreprocessStage(
                topics,
                repository,
                settings.limits,
                w.max_batch_size,
                w.max_wait_ms,
                tenant_topics=settings.kafka.tenant_topics,
                partitions_per_tenant=settings.lanes.partitions_per_tenant,
                lane_of_tenant=directory.lane,
                lanes=w.lanes,
            )
            stage = preprocess
        if stage_name == "fused":
            stage = FusedStage(
                preprocess,
                await _inference_stage(
                    stack, settings, topics, repository, metrics, redis, keys, instance
                ),
                PostprocessStage(topics, repository, limits),
            )
        elif stage_name == "inference":
            stage = await _inference_stage(
                stack, settings, topics, repository, metrics, redis, keys, instance
            )
        elif stage_name == "postprocess":
            stage = PostprocessStage(
                topics, repository, limits, w.max_batch_size, w.max_wait_ms, w.lanes
            )
        consumer = make_consumer(settings.kafka, stage_name, group, w.instance_id)
        await start_client(consumer, settings.kafka)
        stack.push_async_callback(stop_client, consumer)
        claims = ClaimCheck(
            redis,
            settings.redis.key_prefix,
            w.claim_check_threshold_bytes,
            settings.redis.claim_ttl_s,
        )
        runner = await stack.enter_async_context(
            StageRunner(
                stage,
                w,
                consumer,
                producer,
                ledger,
                telemetry,
                claims,
                group,
                admission,
                quota,
                settings.lanes,
                directory.weight,
                # Within a record batch any broker takes, with headroom for the
                # record's key, headers and batch framing: a frame splits, never bounces.
                max_record_bytes=batch_bytes(settings.kafka) - (64 << 10),
                every_state=settings.redis.ledger_states == "every",
            )
        )
        _install_signals(runner)
        tune_garbage_collection(w.gc_threshold)
        log.info(
            "%s worker ready: %s -> pipeline topics under %r (event loop %s)",
            stage_name,
            ", ".join(stage.input_topics),
            topics.prefix,
            running_loop_name(),
        )
        await runner.wait()
        log.info(
            "%s worker stopping (processed %d, skipped %d)",
            stage_name,
            runner.processed,
            runner.skipped,
        )


async def _inference_stage(
    stack: AsyncExitStack,
    settings: Settings,
    topics: Topics,
    repository: ModelRepository,
    metrics: WorkerMetrics,
    redis: aioredis.Redis,
    keys: RedisKeys,
    instance: str,
) -> InferenceStage:
    """The inference stage with its model lifecycle: versions loaded and checked before the
    runner takes a record, the folder watched, control commands applied, shadows compared."""
    m = settings.models
    runtime = await stack.enter_async_context(ModelRuntime.from_settings(settings.runtime))
    events = ModelEvents(metrics, instance, redis, keys.model_events())
    lifecycle = await stack.enter_async_context(ModelLifecycle(repository, runtime, m, events))
    shadow = await stack.enter_async_context(ShadowRunner(lifecycle, runtime, metrics))
    await stack.enter_async_context(
        RepositoryWatcher(lifecycle, m.poll_interval_s, m.canary_fraction)
    )
    await stack.enter_async_context(ControlListener(lifecycle, settings.kafka, topics.control))
    w = settings.worker
    return InferenceStage(
        topics,
        repository,
        runtime,
        settings.limits.decode_limits(),
        w.max_batch_size,
        w.max_wait_ms,
        metrics,
        lifecycle=lifecycle,
        shadow=shadow,
        partitions_per_tenant=settings.lanes.partitions_per_tenant,
        lanes=settings.worker.lanes,
    )


def _advertised_host(bind_host: str) -> str:
    """The host others reach the endpoint at: this machine's name when bound to all."""
    return socket.gethostname() if bind_host in ("0.0.0.0", "::") else bind_host


def _install_signals(runner: StageRunner) -> None:
    def stop(name: str) -> None:
        log.info("signal %s: stopping intake, finishing in-flight work", name)
        runner.request_stop()

    on_stop_signals(stop)
