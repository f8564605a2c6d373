"""Bisection finds exactly the poison records; transient failures are retried first."""

from __future__ import annotations

import numpy as np

from schemas import InferenceRequest, Status
from tests.records import consumer_record
from workers.engine.isolation import FailureTarget, RetryPolicy, process_isolating
from workers.engine.work import BatchFailed, StageOutput, Work

TARGET = FailureTarget("inference", "t.results", "t.dlq")


def _work(index: int) -> Work:
    request = InferenceRequest.new(
        tenant="acme",
        pipeline="p",
        inputs={"x": np.zeros((1, 2), np.float32)},
        task_id=f"task-{index}",
    )
    record = consumer_record("t.preprocessed", b"v%d" % index, offset=index)
    return Work(record, message=request)


class FakeStage:
    """Fails any batch holding a poison task; counts calls and batch sizes."""

    def __init__(self, poison: set[int], transient_failures: int = 0) -> None:
        self.poison = poison
        self.transient_failures = transient_failures
        self.sizes: list[int] = []

    async def process(self, batch: list[Work]) -> StageOutput:
        self.sizes.append(len(batch))
        if self.transient_failures:
            self.transient_failures -= 1
            raise BatchFailed(MemoryError("out of memory"), transient=True)
        if any(int(w.message.task_id.split("-")[1]) in self.poison for w in batch):
            raise BatchFailed(RuntimeError("model raised"))
        output = StageOutput()
        return output


async def _no_sleep(_: float) -> None:
    return None


async def test_only_the_poison_records_fail_and_the_rest_go_on() -> None:
    stage = FakeStage(poison={3, 11})
    items = [_work(i) for i in range(16)]
    output = await process_isolating(stage.process, items, RetryPolicy(), TARGET, _no_sleep)

    failed = sorted(t.task_id for t in output.transitions)
    assert failed == ["task-11", "task-3"]
    assert all(t.state == Status.FAILED for t in output.transitions)
    assert all(t.error_code == "INFERENCE_FAILED" for t in output.transitions)
    dead = [o for o in output.outgoing if o.kind == "dead_letter"]
    assert sorted(o.value for o in dead) == [b"v11", b"v3"]
    assert all(dict(o.headers)["conveyor-attempts"] == b"1" for o in dead)
    assert len(stage.sizes) < 16 * 2, "bisection, not one call per record"


async def test_transient_failure_of_one_record_is_retried_then_succeeds() -> None:
    stage = FakeStage(poison=set(), transient_failures=2)
    output = await process_isolating(
        stage.process, [_work(0)], RetryPolicy(max_attempts=3), TARGET, _no_sleep
    )
    assert output.transitions == []
    assert stage.sizes == [1, 1, 1]


async def test_out_of_memory_splits_a_batch_into_smaller_ones() -> None:
    stage = FakeStage(poison=set(), transient_failures=1)
    output = await process_isolating(
        stage.process, [_work(i) for i in range(8)], RetryPolicy(), TARGET, _no_sleep
    )
    assert output.transitions == []
    assert stage.sizes == [8, 4, 4]


async def test_a_record_that_keeps_failing_transiently_is_failed_with_its_attempts() -> None:
    stage = FakeStage(poison=set(), transient_failures=99)
    output = await process_isolating(
        stage.process, [_work(5)], RetryPolicy(max_attempts=3), TARGET, _no_sleep
    )
    (dead,) = [o for o in output.outgoing if o.kind == "dead_letter"]
    assert dict(dead.headers)["conveyor-attempts"] == b"3"
    assert stage.sizes == [1, 1, 1]
