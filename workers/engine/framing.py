"""Task frames inside a stage: built from single tasks, failed a row at a time, cut to a batch.

A frame (`schemas.frames`) is what flows between the stages. Preprocess makes frames from
the requests one poll brought (`FrameBuilder`), grouped by what a frame shares (lane,
tenant, pipeline, model, version pin, shape bucket); inference and postprocess answer rows
of a frame that cannot be served without failing the rest of it (`fail_rows`); the runner
cuts a frame larger than a batch into parts that share its offset (`cut`).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import ContractError, ErrorCode, ErrorResult, Status
from schemas.frames import Frame, encode_frame, frame_headers
from schemas.tensors import Array
from workers.engine.work import Finished, Outgoing, StageOutput, Work, dead_letter_headers
from workers.ledger import Transition
from workers.pipelines.collate import collate


@dataclass
class _Column:
    """Tasks of one frame being built."""

    tenant: str
    pipeline: str
    lane: str
    model_name: str | None
    model_version: int | None
    task_ids: list[str] = field(default_factory=list)
    row_counts: list[int] = field(default_factory=list)
    submitted_at_ms: list[int] = field(default_factory=list)
    deadline_ms: list[int | None] = field(default_factory=list)
    reply_to: list[str | None] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    traceparents: list[str | None] = field(default_factory=list)
    parameters: list[dict[str, Any]] = field(default_factory=list)
    timings_ms: dict[str, list[float]] = field(default_factory=dict)
    tensors: list[Mapping[str, Array]] = field(default_factory=list)


class FrameBuilder:
    """Collects tasks into frames, one per distinct `key`; `frames()` stacks them."""

    def __init__(self) -> None:
        self._open: dict[Hashable, _Column] = {}

    def add(
        self,
        key: Hashable,
        *,
        task_id: str,
        tenant: str,
        pipeline: str,
        lane: str,
        model_name: str | None,
        model_version: int | None,
        submitted_at_ms: int,
        deadline_ms: int | None,
        reply_to: str | None,
        content_type: str,
        traceparent: str | None,
        parameters: dict[str, Any],
        timings_ms: Mapping[str, float],
        tensors: Mapping[str, Array],
    ) -> None:
        column = self._open.get(key)
        if column is None:
            column = self._open[key] = _Column(tenant, pipeline, lane, model_name, model_version)
        index = len(column.task_ids)
        column.task_ids.append(task_id)
        first = next(iter(tensors.values()), None)
        column.row_counts.append(max(1, int(first.shape[0])) if first is not None else 1)
        column.submitted_at_ms.append(submitted_at_ms)
        column.deadline_ms.append(deadline_ms)
        column.reply_to.append(reply_to)
        column.content_types.append(content_type)
        column.traceparents.append(traceparent)
        column.parameters.append(parameters)
        for name, value in timings_ms.items():
            # A timing some tasks lack reads 0 for them: columns stay one entry per task.
            column.timings_ms.setdefault(name, [0.0] * index).append(value)
        for values in column.timings_ms.values():
            if len(values) == index:
                values.append(0.0)
        column.tensors.append(tensors)

    def frames(self) -> list[Frame]:
        built = [_stacked(column) for column in self._open.values()]
        self._open.clear()
        return built


def _stacked(column: _Column) -> Frame:
    names = set(column.tensors[0])
    if any(set(tensors) != names for tensors in column.tensors):
        raise ContractError(ErrorCode.INTERNAL, "tasks of one frame must have the same tensors")
    return Frame(
        tenant=column.tenant,
        pipeline=column.pipeline,
        lane=column.lane,
        task_ids=column.task_ids,
        row_counts=column.row_counts,
        submitted_at_ms=column.submitted_at_ms,
        deadline_ms=column.deadline_ms,
        reply_to=column.reply_to,
        content_types=column.content_types,
        traceparents=column.traceparents,
        parameters=column.parameters,
        attempts=[0] * len(column.task_ids),
        timings_ms=column.timings_ms,
        tensors=collate(column.tensors),
        model_name=column.model_name,
        model_version=column.model_version,
    )


def fail_rows(
    output: StageOutput,
    work: Work,
    frame: Frame,
    indices: Iterable[int],
    error: ContractError,
    *,
    stage: str,
    results_topic: str,
    dlq_topic: str,
    status: Status = Status.FAILED,
    attempts: int = 1,
) -> None:
    """Answer the tasks at `indices` of `frame` as failed; the rest of it goes on. Each gets
    an error result, a dead letter (a one-task frame) and a ledger entry."""
    message = error.message.encode("utf-8", "replace").decode("utf-8")
    at_ms = int(time.time() * 1000)
    for i in indices:
        task_id = frame.task_ids[i]
        result = ErrorResult.new(
            task_id=task_id,
            tenant=frame.tenant,
            code=error.code,
            message=message,
            stage=stage,
            status=status,
            pipeline=frame.pipeline,
            traceparent=frame.traceparents[i],
        )
        output.forward(frame.reply_to[i] or results_topic, result, frame.content_types[i], "error")
        single = frame.take([i])
        output.outgoing.append(
            Outgoing(
                dlq_topic,
                task_id.encode("utf-8"),
                encode_frame(single),
                [
                    *frame_headers(single),
                    *dead_letter_headers(work, task_id, error, message, stage, attempts),
                ],
                "dead_letter",
            )
        )
        output.finished.append(
            Finished(frame.pipeline, frame.tenant, frame.lane, status, error.code.value)
        )
        output.transitions.append(
            Transition(
                task_id=task_id,
                state=status,
                at_ms=at_ms,
                tenant=frame.tenant,
                pipeline=frame.pipeline,
                stage=stage,
                error_code=error.code.value,
                error_message=message,
            )
        )


def cut(work: Work, max_rows: int) -> list[Work]:
    """A frame record's work cut into parts of at most `max_rows` rows (a task larger than
    that goes alone), views of the frame, sharing one count of unfinished parts: the record's
    offset is finished once every part is (`Work.finish_part`). One part: `work` itself."""
    frame = work.message
    if not isinstance(frame, Frame) or len(frame) < 2 or work.rows <= max_rows:
        return [work]
    cuts = [0]
    rows = 0
    for i, count in enumerate(frame.row_counts):
        if rows and rows + count > max_rows:
            cuts.append(i)
            rows = 0
        rows += count
    cuts.append(len(frame))
    shared = [len(cuts) - 1]
    parts = []
    for start, stop in itertools.pairwise(cuts):
        part = frame.slice(start, stop)
        share = part.rows / max(1, work.rows)
        parts.append(
            dataclasses.replace(
                work, message=part, rows=part.rows, cost=work.cost * share, parts=shared
            )
        )
    return parts
