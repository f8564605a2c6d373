"""Inference: dynamic batches per model run on ONNX Runtime, on the version each task routes to.

Each task routes through the model lifecycle (its pin, else the canary split or the current
version), and each routed group runs on a lease of that version, so a swap in the middle of
a batch lets the batch finish on the session it started on. The version that ran is the one
forwarded and recorded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Hashable

from aiokafka import ConsumerRecord

from schemas import (
    ContractError,
    DecodeLimits,
    ErrorCode,
    StageMessage,
    Status,
    arrays_of,
    decode_stage,
)
from workers.lanes.affinity import lane_record_key
from workers.lanes.scheduler import BatchWindow
from workers.ledger import Transition
from workers.models.lifecycle import LoadedVersion, ModelLifecycle
from workers.models.repository import BatchingConfig, ModelRepository, ModelVersion
from workers.models.runtime import ModelRuntime
from workers.models.shadow import ShadowRunner
from workers.names import LANES, Topics
from workers.observability import tracing
from workers.observability.metrics import WorkerMetrics
from workers.pipelines.base import Array
from workers.pipelines.collate import collate, rows_of, split
from workers.stages.identity import AnswersFailures
from workers.stages.work import DEFAULT_LANE, BatchFailed, StageOutput, Work, internal_error

_LANE_RANK = {lane: rank for rank, lane in enumerate(LANES)}


class InferenceStage(AnswersFailures):
    name = "inference"
    reaches = Status.INFERRED

    def __init__(
        self,
        topics: Topics,
        repository: ModelRepository,
        runtime: ModelRuntime,
        limits: DecodeLimits,
        max_batch_size: int | None = None,
        max_wait_ms: float | None = None,
        metrics: WorkerMetrics | None = None,
        *,
        lifecycle: ModelLifecycle,
        shadow: ShadowRunner | None = None,
        partitions_per_tenant: int = 2,
        lanes: tuple[str, ...] = (),
    ) -> None:
        self.metrics = metrics or WorkerMetrics("inference")
        self._announced: set[tuple[str, int]] = set()
        self.topics = topics
        self.input_topics = topics.inputs_of(self.name, lanes)
        self.repository = repository
        self.runtime = runtime
        self.limits = limits
        self._max_batch_size = max_batch_size
        self._max_wait_ms = max_wait_ms
        self.lifecycle = lifecycle
        self.shadow = shadow
        self.partitions_per_tenant = partitions_per_tenant

    def batching(self, batch_key: Hashable) -> BatchWindow:
        """The model's own window from its config, unless the worker settings override it."""
        model = self.repository.models.get(batch_key[0]) if isinstance(batch_key, tuple) else None
        config = model.batching if model else BatchingConfig(max_batch_size=1, max_wait_ms=0)
        size = self._max_batch_size or config.max_batch_size
        wait = self._max_wait_ms if self._max_wait_ms is not None else config.max_wait_ms
        return BatchWindow(size, wait, tuple(n for n in config.preferred_batch_sizes if n <= size))

    def decode(self, record: ConsumerRecord[bytes, bytes]) -> Work:
        work = Work(record)
        try:
            message = decode_stage(record.value or b"", record.headers, limits=self.limits)
            work.message = message
            work.tenant = message.tenant
            work.rows = max(1, rows_of(message.tensors))
            work.lane = self.topics.lane_of(record.topic) or DEFAULT_LANE
            self._place(work, message)
        except ContractError as error:
            work.error = error
        return work

    def _place(self, work: Work, message: StageMessage) -> None:
        """The batch key (model, version, shape bucket) and the fair-share cost of a task."""
        model = self.repository.models.get(message.model_name or "")
        config = model.batching if model else BatchingConfig()
        length = _sequence_length(message, model.inputs[0].name if model and model.inputs else None)
        work.batch_key = (message.model_name, message.model_version, config.bucket_of(length))
        work.cost = work.rows * max(1, length) if config.cost == "tokens" else work.rows

    async def process(self, batch: list[Work]) -> StageOutput:
        output = StageOutput()
        live: list[Work] = []
        now_ms = int(time.time() * 1000)
        for work in batch:
            message: StageMessage | None = work.message
            if work.error is not None or message is None:
                self._fail(output, work, work.error or internal_error(ValueError("no message")))
            elif message.deadline_ms is not None and message.deadline_ms <= now_ms:
                error = ContractError(
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"deadline_ms {message.deadline_ms} passed before inference (now {now_ms})",
                    "deadline_ms",
                )
                self._fail(output, work, error, Status.EXPIRED)
            else:
                live.append(work)
        if live:
            await self.lifecycle.wait_open()  # a budget swap pauses intake here, briefly
            routed = self._route(output, live)
            try:
                for lease, group in routed:
                    await self._infer(output, group, lease)
            finally:
                # Every lease goes back, also those of groups a failed group kept from running.
                for lease, _ in routed:
                    self.lifecycle.release(lease)
        return output

    def _route(
        self, output: StageOutput, batch: list[Work]
    ) -> list[tuple[LoadedVersion, list[Work]]]:
        """Group tasks by the version each routes to and lease those versions, in one step
        without awaiting, so no swap can fall between a task's routing and its lease."""
        groups: dict[tuple[str, int], list[Work]] = {}
        for work in batch:
            message: StageMessage = work.message
            try:
                if message.model_name is None:
                    raise ContractError(
                        ErrorCode.UNKNOWN_MODEL_VERSION,
                        "stage message names no model",
                        "model_name",
                    )
                version = self.lifecycle.route(
                    message.model_name, message.task_id, message.model_version
                )
            except ContractError as error:
                self._fail(output, work, error)
                continue
            groups.setdefault((message.model_name, version), []).append(work)
        routed: list[tuple[LoadedVersion, list[Work]]] = []
        try:
            for key, group in groups.items():
                routed.append((self.lifecycle.acquire(*key), group))
        except BaseException:
            for lease, _ in routed:
                self.lifecycle.release(lease)
            raise
        return routed

    async def _infer(self, output: StageOutput, batch: list[Work], lease: LoadedVersion) -> None:
        model = lease.version
        try:
            names = [spec.name for spec in model.config.inputs]
            per_task = [arrays_of(w.message.tensors) for w in batch]
            feeds = collate([{n: t[n] for n in names} for t in per_task])
        except ContractError as error:
            for work in batch:
                self._fail(output, work, error)
            return
        assert lease.model is not None, "a leased version keeps its session"
        # The highest lane in the group decides its place in the queue for the model.
        priority = min(_LANE_RANK.get(w.lane, len(LANES)) for w in batch)
        try:
            outputs, run_s = await self.runtime.timed_run(lease.model, feeds, priority=priority)
            rows = split(outputs, [w.rows for w in batch])
        except Exception as exc:  # the runner splits the batch to find the culprit
            raise BatchFailed(exc, transient=_out_of_memory(exc)) from exc
        output.model_s += run_s
        inference_ms = run_s * 1000
        self._observe(model, run_s)
        self.lifecycle.remember(model.name, feeds)
        if self.shadow is not None:
            self.shadow.offer(model.name, model.version, feeds, outputs)
        self._forward(output, batch, rows, per_task, model, inference_ms)

    def _forward(
        self,
        output: StageOutput,
        batch: list[Work],
        rows: list[dict[str, Array]],
        per_task: list[dict[str, Array]],
        model: ModelVersion,
        inference_ms: float,
    ) -> None:
        now_ms = int(time.time() * 1000)
        batch_id = f"{model.name}-{model.version}-{uuid.uuid4().hex[:12]}"
        for work, task_outputs, inputs in zip(batch, rows, per_task, strict=True):
            message: StageMessage = work.message
            queue_ms = max(0.0, (time.monotonic() - work.received_at) * 1000 - inference_ms)
            tensors = {
                **task_outputs,
                **{name: inputs[name] for name in self._forwarded(message) if name in inputs},
            }
            inferred = message.evolve(
                tensors=tensors,
                model_name=model.name,
                model_version=model.version,  # the version that ran, not the one requested
                batch_id=batch_id,
                traceparent=tracing.active().forward(
                    self.name, message.traceparent, message.task_id
                ),
                timings_ms={
                    **message.timings_ms,
                    "inference_queue": queue_ms,
                    "inference": inference_ms,
                },
            )
            output.forward(
                self.topics.inferred_of(work.lane),
                inferred,
                key=lane_record_key(message.tenant, message.task_id, self.partitions_per_tenant),
            )
            output.transitions.append(
                Transition(
                    task_id=message.task_id,
                    state=Status.INFERRED,
                    at_ms=now_ms,
                    tenant=message.tenant,
                    pipeline=message.pipeline,
                    stage=self.name,
                    model_name=model.name,
                    model_version=model.version,
                    batch_id=batch_id,
                )
            )

    def _forwarded(self, message: StageMessage) -> list[str]:
        """Inputs the task's pipeline hands on to postprocess (one batch may mix pipelines
        of one model)."""
        pipeline = self.repository.pipelines.get(message.pipeline or "")
        forwarded: list[str] = pipeline.parameters.get("forward_inputs", []) if pipeline else []
        return forwarded

    def _observe(self, model: ModelVersion, seconds: float) -> None:
        self.metrics.inference.labels(model.name, str(model.version)).observe(seconds)
        key = (model.name, model.version)
        if key not in self._announced:
            self._announced.add(key)
            loaded = next((m for m in self.runtime.loaded() if m.version == model), None)
            providers = ",".join(loaded.providers) if loaded else "unknown"
            self.metrics.model.labels(model.name, str(model.version)).info({"providers": providers})


def _sequence_length(message: StageMessage, input_name: str | None) -> int:
    """The second dimension of the model's first input (tokens per row); 1 without one."""
    tensor = message.tensors.get(input_name) if input_name else None
    shape: tuple[int, ...] = tuple(getattr(tensor, "shape", ()))
    return int(shape[1]) if len(shape) >= 2 else 1


def _out_of_memory(exc: BaseException) -> bool:
    """ONNX Runtime reports allocation failures as RuntimeException text, not a type."""
    text = str(exc).lower()
    marks = ("out of memory", "failed to allocate", "bad_alloc")
    return isinstance(exc, MemoryError) or any(mark in text for mark in marks)
