"""Inference: dynamic batches per (model, version) run on ONNX Runtime."""

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
from workers.ledger import Transition
from workers.models.repository import ModelRepository, ModelVersion
from workers.models.runtime import ModelRuntime
from workers.names import Topics
from workers.observability import tracing
from workers.observability.metrics import WorkerMetrics
from workers.pipelines.base import Array
from workers.pipelines.collate import collate, rows_of, split
from workers.stages.stage_messages import identify_stage_message
from workers.stages.work import StageOutput, Work, fail, internal_error


class InferenceStage:
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
    ) -> None:
        self.metrics = metrics or WorkerMetrics("inference")
        self._announced: set[tuple[str, int]] = set()
        self.topics = topics
        self.input_topic = topics.preprocessed
        self.repository = repository
        self.runtime = runtime
        self.limits = limits
        self._max_batch_size = max_batch_size
        self._max_wait_ms = max_wait_ms

    def batching(self, batch_key: Hashable) -> tuple[int, float]:
        """The model's own window from its config, unless the worker settings override it."""
        model = self.repository.models.get(batch_key[0]) if isinstance(batch_key, tuple) else None
        size = self._max_batch_size or (model.batching.max_batch_size if model else 1)
        wait = self._max_wait_ms
        if wait is None:
            wait = model.batching.max_wait_ms if model else 0.0
        return size, wait

    def decode(self, record: ConsumerRecord[bytes, bytes]) -> Work:
        work = Work(record)
        try:
            message = decode_stage(record.value or b"", record.headers, limits=self.limits)
            work.message = message
            work.rows = max(1, rows_of(message.tensors))
            work.batch_key = (message.model_name, message.model_version)
        except ContractError as error:
            work.error = error
        return work

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
            await self._infer(output, live)
        return output

    async def _infer(self, output: StageOutput, batch: list[Work]) -> None:
        first: StageMessage = batch[0].message
        try:
            if first.model_name is None or first.model_version is None:
                raise ContractError(
                    ErrorCode.UNKNOWN_MODEL_VERSION, "stage message names no model", "model_name"
                )
            model = self._model(first.model_name, first.model_version)
            names = [spec.name for spec in model.config.inputs]
            per_task = [arrays_of(w.message.tensors) for w in batch]
            feeds = collate([{n: t[n] for n in names} for t in per_task])
            started = time.perf_counter()
            outputs = await self.runtime.infer(model, feeds)
            inference_ms = (time.perf_counter() - started) * 1000
            self._observe(model, inference_ms / 1000)
            rows = split(outputs, [w.rows for w in batch])
        except ContractError as error:
            for work in batch:
                self._fail(output, work, error)
            return
        except Exception as exc:  # the model failed the batch: every task in it fails
            for work in batch:
                self._fail(
                    output,
                    work,
                    ContractError(ErrorCode.INFERENCE_FAILED, f"{type(exc).__name__}: {exc}"),
                )
            return
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
        pipeline = self.repository.pipelines.get(batch[0].message.pipeline)
        forwarded = pipeline.parameters.get("forward_inputs", []) if pipeline else []
        batch_id = f"{model.name}-{model.version}-{uuid.uuid4().hex[:12]}"
        for work, task_outputs, inputs in zip(batch, rows, per_task, strict=True):
            message: StageMessage = work.message
            queue_ms = max(0.0, (time.monotonic() - work.received_at) * 1000 - inference_ms)
            tensors = {
                **task_outputs,
                **{name: inputs[name] for name in forwarded if name in inputs},
            }
            inferred = message.evolve(
                tensors=tensors,
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
            output.forward(self.topics.inferred, inferred)
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

    def _observe(self, model: ModelVersion, seconds: float) -> None:
        self.metrics.inference.labels(model.name, str(model.version)).observe(seconds)
        key = (model.name, model.version)
        if key not in self._announced:
            self._announced.add(key)
            loaded = next((m for m in self.runtime.loaded() if m.version == model), None)
            providers = ",".join(loaded.providers) if loaded else "unknown"
            self.metrics.model.labels(model.name, str(model.version)).info({"providers": providers})

    def _model(self, name: str, version: int) -> ModelVersion:
        config = self.repository.models.get(name)
        if config is None or version not in config.served_versions:
            raise ContractError(
                ErrorCode.UNKNOWN_MODEL_VERSION,
                f"model {name!r} version {version} is not served here",
                "model_version",
            )
        return ModelVersion(config, version)

    def _fail(
        self, output: StageOutput, work: Work, error: ContractError, status: Status = Status.FAILED
    ) -> None:
        fail(
            output,
            work,
            identify_stage_message(work),
            error,
            stage=self.name,
            results_topic=self.topics.results,
            dlq_topic=self.topics.dlq,
            status=status,
        )
