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
    Status,
    arrays_of,
)
from schemas.frames import Frame, decode_frame
from workers.engine.identity import AnswersFailures
from workers.engine.work import DEFAULT_LANE, BatchFailed, StageOutput, Work, internal_error
from workers.lanes.affinity import lane_record_key
from workers.lanes.batcher import BatchWindow
from workers.ledger import Transition
from workers.models.lifecycle import LoadedVersion, ModelLifecycle
from workers.models.repository import BatchingConfig, ModelRepository, ModelVersion
from workers.models.runtime import ModelRuntime
from workers.models.shadow import ShadowRunner
from workers.names import LANES, Topics
from workers.observability import tracing
from workers.observability.metrics import WorkerMetrics
from workers.pipelines.base import Array
from workers.pipelines.collate import collate, split

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
            frame = decode_frame(record.value or b"", self.limits)
            work.message = frame
            work.tenant = frame.tenant
            work.rows = max(1, frame.rows)
            work.lane = self.topics.lane_of(record.topic) or DEFAULT_LANE
            self.place(work, frame)
        except ContractError as error:
            work.error = error
        return work

    def place(self, work: Work, frame: Frame) -> None:
        """The batch key (model, version pin, shape bucket) and the fair-share cost of a frame."""
        model = self.repository.models.get(frame.model_name or "")
        config = model.batching if model else BatchingConfig()
        first = model.inputs[0].name if model and model.inputs else None
        tensor = frame.tensors.get(first) if first else None
        shape: tuple[int, ...] = tuple(getattr(tensor, "shape", ()))
        length = int(shape[1]) if len(shape) >= 2 else 1
        work.batch_key = (frame.model_name, frame.model_version, config.bucket_of(length))
        work.cost = work.rows * max(1, length) if config.cost == "tokens" else work.rows

    async def process(self, batch: list[Work]) -> StageOutput:
        output = StageOutput()
        live: list[tuple[Work, Frame]] = []
        now_ms = int(time.time() * 1000)
        for work in batch:
            frame = work.message
            if work.error is not None or not isinstance(frame, Frame):
                self._fail(output, work, work.error or internal_error(ValueError("no frame")))
                continue
            expired = [
                i for i, ms in enumerate(frame.deadline_ms) if ms is not None and ms <= now_ms
            ]
            if expired:
                error = ContractError(
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"deadline_ms passed before inference (now {now_ms})",
                    "deadline_ms",
                )
                self._fail_rows(output, work, frame, expired, error, Status.EXPIRED)
                gone = set(expired)
                frame = frame.take([i for i in range(len(frame)) if i not in gone])
            if len(frame):
                live.append((work, frame))
        if live:
            await self.lifecycle.wait_open()  # a budget swap pauses intake here, briefly
            routed = self._route(output, live)
            try:
                for lease, parts in routed:
                    await self._infer(output, parts, lease)
            finally:
                # Every lease goes back, also those of groups a failed group kept from running.
                for lease, _ in routed:
                    self.lifecycle.release(lease)
        return output

    def _route(
        self, output: StageOutput, live: list[tuple[Work, Frame]]
    ) -> list[tuple[LoadedVersion, list[tuple[Work, Frame]]]]:
        """Group tasks by the version each routes to and lease those versions, in one step
        without awaiting, so no swap can fall between a task's routing and its lease. A frame
        whose tasks route to several versions (a canary split) is cut into one part each."""
        groups: dict[tuple[str, int], list[tuple[Work, Frame]]] = {}
        for work, frame in live:
            name = frame.model_name
            if name is None:
                error = ContractError(
                    ErrorCode.UNKNOWN_MODEL_VERSION, "frame names no model", "model_name"
                )
                self._fail_rows(output, work, frame, list(range(len(frame))), error)
                continue
            by_version: dict[int, list[int]] = {}
            if frame.model_version is not None:  # one pin for the whole frame: route it once
                try:
                    pinned = self.lifecycle.route(name, frame.task_ids[0], frame.model_version)
                except ContractError as error:
                    self._fail_rows(output, work, frame, list(range(len(frame))), error)
                    continue
                groups.setdefault((name, pinned), []).append((work, frame))
                continue
            for i, task_id in enumerate(frame.task_ids):
                try:
                    version = self.lifecycle.route(name, task_id, frame.model_version)
                except ContractError as error:
                    self._fail_rows(output, work, frame, [i], error)
                    continue
                by_version.setdefault(version, []).append(i)
            for version, rows in by_version.items():
                part = frame if len(rows) == len(frame) else frame.take(rows)
                groups.setdefault((name, version), []).append((work, part))
        routed: list[tuple[LoadedVersion, list[tuple[Work, Frame]]]] = []
        try:
            for key, group in groups.items():
                routed.append((self.lifecycle.acquire(*key), group))
        except BaseException:
            for lease, _ in routed:
                self.lifecycle.release(lease)
            raise
        return routed

    async def _infer(
        self, output: StageOutput, parts: list[tuple[Work, Frame]], lease: LoadedVersion
    ) -> None:
        model = lease.version
        names = [spec.name for spec in model.config.inputs]
        try:
            feeds = collate([_inputs(frame, names) for _, frame in parts])
        except ContractError as error:
            for work, frame in parts:
                self._fail_rows(output, work, frame, list(range(len(frame))), error)
            return
        assert lease.model is not None, "a leased version keeps its session"
        # The highest lane in the group decides its place in the queue for the model.
        priority = min(_LANE_RANK.get(work.lane, len(LANES)) for work, _ in parts)
        try:
            outputs, run_s = await self.runtime.timed_run(lease.model, feeds, priority=priority)
            per_part = split(outputs, [frame.rows for _, frame in parts])
        except Exception as exc:  # the runner splits the batch to find the culprit
            raise BatchFailed(exc, transient=_out_of_memory(exc)) from exc
        output.model_s += run_s
        self._observe(model, run_s)
        self.lifecycle.remember(model.name, feeds)
        if self.shadow is not None:
            self.shadow.offer(model.name, model.version, feeds, outputs)
        batch_id = f"{model.name}-{model.version}-{uuid.uuid4().hex[:12]}"
        for (work, frame), part_outputs in zip(parts, per_part, strict=True):
            self._forward(output, work, frame, part_outputs, model, batch_id, run_s * 1000)

    def _forward(
        self,
        output: StageOutput,
        work: Work,
        frame: Frame,
        outputs: dict[str, Array],
        model: ModelVersion,
        batch_id: str,
        inference_ms: float,
    ) -> None:
        now_ms = int(time.time() * 1000)
        count = len(frame)
        queue_ms = max(0.0, (time.monotonic() - work.received_at) * 1000 - inference_ms)
        forwarded = {
            name: frame.tensors[name]
            for name in self._forwarded(frame.pipeline)
            if name in frame.tensors
        }
        inferred = frame.evolve(
            tensors={**outputs, **forwarded},
            model_version=model.version,  # the version that ran, not the one requested
            model_name=model.name,
            batch_id=batch_id,
            traceparents=tracing.active().forward_frame(
                self.name, frame.traceparents, frame.task_ids
            ),
            timings_ms={
                **frame.timings_ms,
                "inference_queue": [queue_ms] * count,
                "inference": [inference_ms] * count,
            },
        )
        output.forward(
            self.topics.inferred_of(work.lane),
            inferred,
            key=lane_record_key(frame.tenant, frame.task_ids[0], self.partitions_per_tenant),
        )
        output.transitions.extend(
            Transition(
                task_id=task_id,
                state=Status.INFERRED,
                at_ms=now_ms,
                tenant=frame.tenant,
                pipeline=frame.pipeline,
                stage=self.name,
                model_name=model.name,
                model_version=model.version,
                batch_id=batch_id,
            )
            for task_id in frame.task_ids
        )

    def _forwarded(self, pipeline_name: str) -> list[str]:
        """Inputs the frame's pipeline hands on to postprocess (one batch may mix pipelines
        of one model)."""
        pipeline = self.repository.pipelines.get(pipeline_name)
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


def _inputs(frame: Frame, names: list[str]) -> dict[str, Array]:
    """The model's inputs out of a frame's tensors (claim checks are resolved by now)."""
    try:
        picked = {name: frame.tensors[name] for name in names}
    except KeyError as missing:
        raise ContractError(
            ErrorCode.SHAPE_MISMATCH, f"frame lacks the model input {missing}", "tensors"
        ) from None
    return arrays_of(picked)


def _out_of_memory(exc: BaseException) -> bool:
    """ONNX Runtime reports allocation failures as RuntimeException text, not a type."""
    text = str(exc).lower()
    marks = ("out of memory", "failed to allocate", "bad_alloc")
    return isinstance(exc, MemoryError) or any(mark in text for mark in marks)
