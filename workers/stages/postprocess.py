"""Postprocess: pooling, normalization, softmax, top-k; publishes the result."""

from __future__ import annotations

import time
from collections.abc import Hashable

from aiokafka import ConsumerRecord

from schemas import (
    ContractError,
    DecodeLimits,
    ErrorCode,
    InferenceResult,
    StageMessage,
    Status,
    arrays_of,
    decode_stage,
)
from workers.lanes.scheduler import BatchWindow
from workers.ledger import Transition
from workers.models.repository import ModelRepository
from workers.names import Topics
from workers.observability import tracing
from workers.pipelines import postprocessor
from workers.stages.identity import AnswersFailures
from workers.stages.work import DEFAULT_LANE, Finished, StageOutput, Work, internal_error

BATCH_SIZE = 256


class PostprocessStage(AnswersFailures):
    name = "postprocess"
    reaches = Status.DONE

    def __init__(
        self,
        topics: Topics,
        repository: ModelRepository,
        limits: DecodeLimits,
        max_batch_size: int | None = None,
        max_wait_ms: float | None = None,
        lanes: tuple[str, ...] = (),
    ) -> None:
        self.topics = topics
        self.input_topics = topics.inputs_of(self.name, lanes)
        self.repository = repository
        self.limits = limits
        self._window = BatchWindow(
            max_batch_size or BATCH_SIZE, max_wait_ms if max_wait_ms is not None else 0
        )

    def batching(self, batch_key: Hashable) -> BatchWindow:
        return self._window

    def decode(self, record: ConsumerRecord[bytes, bytes]) -> Work:
        work = Work(record, lane=self.topics.lane_of(record.topic) or DEFAULT_LANE)
        try:
            work.message = decode_stage(record.value or b"", record.headers, limits=self.limits)
            work.tenant = work.message.tenant
        except ContractError as error:
            work.error = error
        return work

    async def process(self, batch: list[Work]) -> StageOutput:
        output = StageOutput()
        seen: set[str] = set()
        for work in batch:
            if work.error is not None:
                self._fail(output, work, work.error)
                continue
            message: StageMessage = work.message
            if message.task_id in seen:
                continue  # a redelivered copy in the same batch: answer once
            seen.add(message.task_id)
            try:
                self._postprocess(output, message, _queued_ms(work))
            except ContractError as error:
                self._fail(output, work, error)
            except Exception as exc:  # a bug in a plug-in fails its task, never the worker
                self._fail(output, work, internal_error(exc))
        return output

    def _postprocess(self, output: StageOutput, message: StageMessage, queue_ms: float) -> None:
        started = time.perf_counter()
        pipeline = self.repository.pipeline(message.pipeline)
        if message.model_name is None or message.model_version is None:
            raise ContractError(ErrorCode.INTERNAL, "inferred message names no model", "model_name")
        outputs = postprocessor(pipeline.postprocess)(
            arrays_of(message.tensors), message.parameters, pipeline
        )
        now_ms = int(time.time() * 1000)
        result = InferenceResult.from_stage(
            message,
            outputs,
            completed_at_ms=now_ms,
            timings_ms={
                **message.timings_ms,
                "postprocess_queue": queue_ms,
                "postprocess": (time.perf_counter() - started) * 1000,
            },
            traceparent=tracing.active().forward(self.name, message.traceparent, message.task_id),
        )
        output.forward(
            message.reply_to or self.topics.results, result, message.content_type, "result"
        )
        output.finished.append(
            Finished(
                message.pipeline,
                message.tenant,
                message.priority or DEFAULT_LANE,
                Status.DONE,
                latency_s=max(0.0, (now_ms - message.submitted_at_ms) / 1000),
            )
        )
        output.transitions.append(
            Transition(
                task_id=message.task_id,
                state=Status.DONE,
                at_ms=now_ms,
                tenant=message.tenant,
                pipeline=message.pipeline,
                stage=self.name,
                # Also here: the INFERRED write may lose the race to this one and be ignored.
                model_name=message.model_name,
                model_version=message.model_version,
                batch_id=message.batch_id,
            )
        )


def _queued_ms(work: Work) -> float:
    """From intake to this batch's processing: the time the record waited in the worker."""
    return max(0.0, (time.monotonic() - work.received_at) * 1000)
