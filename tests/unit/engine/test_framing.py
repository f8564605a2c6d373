"""Frames inside a stage: building them from tasks, cutting one into batch-sized parts, and
isolating a poison task inside a frame (it fails alone, the rest of its frame goes on)."""

from __future__ import annotations

import numpy as np
from aiokafka import ConsumerRecord

from schemas import ContractError, ErrorCode, Status
from schemas.frames import Frame, decode_frame
from tests.records import consumer_record
from tests.unit.schemas.test_frames import make_frame
from workers.engine.framing import FrameBuilder, cut, fail_rows
from workers.engine.isolation import FailureTarget, RetryPolicy, process_isolating
from workers.engine.work import BatchFailed, StageOutput, Work

TARGET = FailureTarget("inference", "t.results", "t.dlq")


def _record(offset: int = 7) -> ConsumerRecord[bytes, bytes]:
    return consumer_record("t.preprocessed.standard", b"frame", partition=1, offset=offset)


def _work(frame: Frame) -> Work:
    return Work(_record(), message=frame, rows=frame.rows, tenant=frame.tenant, cost=frame.rows)


def _add(builder: FrameBuilder, key: str, task: str, length: int, **timings: float) -> None:
    builder.add(
        key,
        task_id=task,
        tenant="acme",
        pipeline="text-embedding",
        lane="standard",
        model_name="m",
        model_version=None,
        submitted_at_ms=1,
        deadline_ms=None,
        reply_to=None,
        content_type="application/msgpack",
        traceparent=None,
        parameters={},
        timings_ms=timings,
        tensors={"ids": np.ones((1, length), np.int64)},
    )


def test_the_builder_makes_one_frame_per_key_padding_and_aligning_columns() -> None:
    builder = FrameBuilder()
    _add(builder, "short", "a", 3, preprocess=1.0)
    _add(builder, "long", "b", 9, preprocess=2.0)
    _add(builder, "short", "c", 5, preprocess=3.0, extra=4.0)
    short, long = builder.frames()
    assert short.task_ids == ["a", "c"]
    assert long.task_ids == ["b"]
    ids = short.tensors["ids"]
    assert isinstance(ids, np.ndarray)
    assert ids.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert short.timings_ms == {"preprocess": [1.0, 3.0], "extra": [0.0, 4.0]}
    assert builder.frames() == []


def test_a_frame_larger_than_a_batch_is_cut_into_parts_sharing_its_offset() -> None:
    frame = make_frame(tasks=5, rows=[1, 1, 2, 1, 1])
    work = _work(frame)
    parts = cut(work, 2)
    assert [p.message.task_ids for p in parts] == [
        ["task-0", "task-1"],
        ["task-2"],
        ["task-3", "task-4"],
    ]
    assert [p.rows for p in parts] == [2, 2, 2]
    assert sum(p.cost for p in parts) == work.cost
    assert all(p.record is work.record for p in parts)
    # The record is finished once its last part is, in whatever order they finish.
    assert [parts[2].finish_part(), parts[0].finish_part(), parts[1].finish_part()] == [
        False,
        False,
        True,
    ]


def test_a_frame_that_fits_is_not_cut() -> None:
    work = _work(make_frame(tasks=3))
    assert cut(work, 3) == [work]
    assert work.finish_part()


class PoisonStage:
    """Forwards each task it is given; fails any batch holding the poison task."""

    def __init__(self, poison: str) -> None:
        self.poison = poison
        self.calls = 0

    async def process(self, batch: list[Work]) -> StageOutput:
        self.calls += 1
        if any(self.poison in w.message.task_ids for w in batch):
            raise BatchFailed(RuntimeError("model raised"))
        output = StageOutput()
        for work in batch:
            output.forward("t.inferred.standard", work.message, key=b"k")
        return output


async def _no_sleep(_: float) -> None:
    return None


async def test_a_poison_task_fails_alone_and_the_rest_of_its_frame_goes_on() -> None:
    frame = make_frame(tasks=8)
    stage = PoisonStage("task-5")
    output = await process_isolating(
        stage.process, [_work(frame)], RetryPolicy(3, 0.0), TARGET, _no_sleep
    )
    records = await output.records(None)
    forwarded = [t for o in records if o.kind == "forward" for t in decode_frame(o.value).task_ids]
    assert forwarded == [t for t in frame.task_ids if t != "task-5"]
    (dead,) = [o for o in records if o.kind == "dead_letter"]
    assert decode_frame(dead.value).task_ids == ["task-5"]
    assert dict(dead.headers)["conveyor-source"] == b"t.preprocessed.standard/1/7"
    (error,) = [o for o in records if o.kind == "error"]
    assert error.topic == "t.results"  # task-5 names no reply topic of its own
    assert [(t.task_id, t.state) for t in output.transitions] == [("task-5", Status.FAILED)]
    assert stage.calls <= 2 * 3 + 1  # bisection: a few calls, not one per task


async def test_failed_rows_get_an_error_result_a_dead_letter_and_a_ledger_entry() -> None:
    frame = make_frame(tasks=3)
    output = StageOutput()
    error = ContractError(ErrorCode.DEADLINE_EXCEEDED, "too late")
    fail_rows(
        output,
        _work(frame),
        frame,
        [1, 2],
        error,
        stage="inference",
        results_topic="t.results",
        dlq_topic="t.dlq",
        status=Status.EXPIRED,
    )
    records = await output.records(None)
    errors = [o for o in records if o.kind == "error"]
    assert [o.topic for o in errors] == ["t.results", "conveyor.results.acme"]
    assert [o.kind for o in records].count("dead_letter") == 2
    assert {t.state for t in output.transitions} == {Status.EXPIRED}
    assert [f.code for f in output.finished] == ["DEADLINE_EXCEEDED"] * 2
