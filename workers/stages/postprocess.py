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
    Status,
    arrays_of,
)
from schemas.frames import Frame, decode_frame
from workers.engine.identity import AnswersFailures
from workers.engine.work import DEFAULT_LANE, Finished, StageOutput, Work, internal_error
from workers.lanes.batcher import BatchWindow
from workers.ledger import Transition
from workers.models.repository import ModelRepository
from workers.names import Topics
from workers.observability import tracing
from workers.pipelines import postprocessor
from workers.pipelines.collate import split

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
            frame = decode_frame(record.value or b"", self.limits)
            work.message = frame
            work.tenant = frame.tenant
            work.rows = max(1, len(frame))
        except ContractError as error:
            work.error = error
        return work

    async def process(self, batch: list[Work]) -> StageOutput:
        output = StageOutput()
        seen: set[str] = set()
        for work in batch:
            frame = work.message
            if work.error is not None or not isinstance(frame, Frame):
                self._fail(output, work, work.error or internal_error(ValueError("no frame")))
                continue
            # A redelivered copy in the same batch: answer each task once.
            fresh = [i for i, task_id in enumerate(frame.task_ids) if task_id not in seen]
            seen.update(frame.task_ids)
            if len(fresh) < len(frame):
                frame = frame.take(fresh)
            if len(frame):
                self._postprocess_frame(output, work, frame)
        return output

    def _postprocess_frame(self, output: StageOutput, work: Work, frame: Frame) -> None:
        """The whole frame in one postprocess call where its tasks share their parameters;
        a frame that fails so is answered task by task, so one bad task fails alone."""
        first = frame.parameters[0]
        if all(p == first for p in frame.parameters):
            try:
                self._postprocess(output, work, frame)
                return
            except Exception:  # found out task by task below
                pass
        for i in range(len(frame)):
            row = frame.slice(i, i + 1)
            try:
                self._postprocess(output, work, row)
            except ContractError as error:
                self._fail_rows(output, work, row, [0], error)
            except Exception as exc:  # a bug in a plug-in fails its task, never the worker
                self._fail_rows(output, work, row, [0], internal_error(exc))

    def _postprocess(self, output: StageOutput, work: Work, frame: Frame) -> None:
        started = time.perf_counter()
        pipeline = self.repository.pipeline(frame.pipeline)
        if frame.model_name is None or frame.model_version is None:
            raise ContractError(ErrorCode.INTERNAL, "inferred frame names no model", "model_name")
        outputs = postprocessor(pipeline.postprocess)(
            arrays_of(frame.tensors), frame.parameters[0], pipeline
        )
        per_task = split(outputs, frame.row_counts)
        now_ms = int(time.time() * 1000)
        queue_ms = _queued_ms(work)
        postprocess_ms = (time.perf_counter() - started) * 1000 / max(1, len(frame))
        traceparents = tracing.active().forward_frame(self.name, frame.traceparents, frame.task_ids)
        timings = frame.timings_ms
        # Answers join `output` only once every task of the frame has one: a frame that fails
        # part way is answered task by task instead, never twice.
        answers = StageOutput()
        for i, task_outputs in enumerate(per_task):
            task_id = frame.task_ids[i]
            submitted_at_ms = frame.submitted_at_ms[i]
            result = InferenceResult.of_task(
                carried={
                    "task_id": task_id,
                    "tenant": frame.tenant,
                    "pipeline": frame.pipeline,
                    "submitted_at_ms": submitted_at_ms,
                    "model_name": frame.model_name,
                    "model_version": frame.model_version,
                },
                outputs=task_outputs,
                completed_at_ms=now_ms,
                timings_ms={
                    **{name: values[i] for name, values in timings.items()},
                    "postprocess_queue": queue_ms,
                    "postprocess": postprocess_ms,
                },
                traceparent=traceparents[i],
            )
            answers.forward(
                frame.reply_to[i] or self.topics.results, result, frame.content_types[i], "result"
            )
            answers.finished.append(
                Finished(
                    frame.pipeline,
                    frame.tenant,
                    frame.lane,
                    Status.DONE,
                    latency_s=max(0.0, (now_ms - submitted_at_ms) / 1000),
                )
            )
            answers.transitions.append(
                Transition(
                    task_id=task_id,
                    state=Status.DONE,
                    at_ms=now_ms,
                    tenant=frame.tenant,
                    pipeline=frame.pipeline,
                    stage=self.name,
                    # Also here: the INFERRED write may lose the race to this one and be ignored.
                    model_name=frame.model_name,
                    model_version=frame.model_version,
                    batch_id=frame.batch_id,
                )
            )
        output.merge(answers)


def _queued_ms(work: Work) -> float:
    """From intake to this batch's processing: the time the record waited in the worker."""
    return max(0.0, (time.monotonic() - work.received_at) * 1000)
