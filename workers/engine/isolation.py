"""Poison isolation: when a batch fails as a whole, find the records to blame by bisection.

A failing batch is split in halves and each half processed again, down to single records;
only the records that fail alone are answered FAILED and dead-lettered, every other record
of the batch goes on. Transient failures (out of memory, a timeout inside the model) are
first retried with backoff, and a multi-record batch that ran out of memory is retried as
two smaller ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from schemas import ContractError, ErrorCode
from schemas.frames import Frame
from workers.engine.framing import fail_rows
from workers.engine.identity import identify_task
from workers.engine.work import BatchFailed, StageOutput, Work, fail

log = logging.getLogger(__name__)

Process = Callable[[list[Work]], Awaitable[StageOutput]]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    """Tries of one record on transient failures before it is failed."""
    backoff_s: float = 0.2
    """First wait between tries; doubles each time."""


@dataclass(frozen=True)
class FailureTarget:
    """Where a blamed record's answers go."""

    stage: str
    results_topic: str
    dlq_topic: str


async def process_isolating(
    process: Process,
    items: list[Work],
    policy: RetryPolicy,
    target: FailureTarget,
    sleep: Sleep = asyncio.sleep,
    attempt: int = 1,
) -> StageOutput:
    """`process(items)`, and when it raises `BatchFailed`, the bisection described above."""
    try:
        return await process(items)
    except Exception as exc:
        # A bug that escapes a stage for one record must not stop the worker for all: it is
        # isolated like a model failure.
        failure = exc if isinstance(exc, BatchFailed) else BatchFailed(exc)
        if failure.transient and len(items) == 1 and attempt < policy.max_attempts:
            await sleep(policy.backoff_s * 2 ** (attempt - 1))
            return await process_isolating(process, items, policy, target, sleep, attempt + 1)
        if len(items) == 1 and _tasks(items[0]) > 1:
            # A frame of many tasks is split by its rows: one bad task fails alone.
            items = _halves(items[0])
        elif len(items) == 1:
            log.warning(
                "%s: record %s/%s/%s failed alone after %d attempt(s): %s",
                target.stage,
                items[0].record.topic,
                items[0].record.partition,
                items[0].record.offset,
                attempt,
                failure,
            )
            return _blame(items[0], failure, attempt, target)
        middle = len(items) // 2
        # The halves start over: a transient failure of the whole may not touch either half.
        left = await process_isolating(process, items[:middle], policy, target, sleep)
        right = await process_isolating(process, items[middle:], policy, target, sleep)
        return left.merge(right)


def _tasks(work: Work) -> int:
    return len(work.message) if isinstance(work.message, Frame) else 1


def _halves(work: Work) -> list[Work]:
    frame: Frame = work.message
    middle = len(frame) // 2
    return [
        dataclasses.replace(work, message=part, rows=part.rows)
        for part in (frame.slice(0, middle), frame.slice(middle, len(frame)))
    ]


def _blame(work: Work, failure: BatchFailed, attempts: int, target: FailureTarget) -> StageOutput:
    output = StageOutput()
    error = ContractError(ErrorCode.INFERENCE_FAILED, str(failure)[:2000])
    if isinstance(work.message, Frame):
        fail_rows(
            output,
            work,
            work.message,
            range(len(work.message)),
            error,
            stage=target.stage,
            results_topic=target.results_topic,
            dlq_topic=target.dlq_topic,
            attempts=attempts,
        )
        return output
    fail(
        output,
        work,
        identify_task(work),
        error,
        stage=target.stage,
        results_topic=target.results_topic,
        dlq_topic=target.dlq_topic,
        attempts=attempts,
    )
    return output
