"""ExactlyOnce's retry loop against a revoke: the transaction logic with a recording stand-in
for the transactional producer (the broker path itself is covered by tests/chaos)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from workers.engine.delivery import ExactlyOnce, FatalDelivery
from workers.kafka.offsets import OffsetTracker
from workers.ledger import Ledger

T = TypeVar("T")


class FlakyTransactions:
    """Fails the first `failures` transactions before their commit (sending the offsets), as
    a restarting broker would; records the rest."""

    def __init__(self, failures: int, on_failure: Callable[[], None] = lambda: None) -> None:
        self.failures = failures
        self.on_failure = on_failure
        self.calls: list[str] = []

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        if self.failures:
            self.failures -= 1
            self.on_failure()
            raise KafkaConnectionError("broker restarting")
        self.calls.append("offsets")

    async def commit_transaction(self) -> None:
        self.calls.append("commit")

    async def abort_transaction(self) -> None:
        self.calls.append("abort")


async def _retry(action: Callable[[], Awaitable[T]], what: str, /) -> T:
    while True:
        try:
            return await action()
        except KafkaConnectionError:
            await asyncio.sleep(0)


def _delivery(producer: FlakyTransactions) -> ExactlyOnce:
    offsets = OffsetTracker()
    tp = TopicPartition("t", 0)
    offsets.taken(tp, 0)
    offsets.finished(tp, 0)  # an offset to send, as a delivered batch leaves
    return ExactlyOnce(
        cast(AIOKafkaProducer, producer), cast(Ledger, None), offsets, _retry, "group"
    )


async def test_a_transaction_retried_after_a_revoke_gives_up_instead_of_committing() -> None:
    ours = True

    def revoke() -> None:
        nonlocal ours
        ours = False  # the partitions moved on while the broker was away

    producer = FlakyTransactions(failures=1, on_failure=revoke)
    delivered = await _delivery(producer).deliver([], [], [], still_ours=lambda: ours)
    assert delivered is False
    assert producer.calls == ["begin", "abort"]


async def test_a_transaction_retried_while_still_ours_commits_once() -> None:
    producer = FlakyTransactions(failures=2)
    delivered = await _delivery(producer).deliver([], [], [], still_ours=lambda: True)
    assert delivered is True
    assert producer.calls == ["begin", "abort", "begin", "abort", "begin", "offsets", "commit"]


async def test_a_commit_whose_outcome_is_unknown_is_not_tried_again() -> None:
    class LostCommit(FlakyTransactions):
        async def commit_transaction(self) -> None:
            self.calls.append("commit")
            raise KafkaConnectionError("broker gone after the commit was sent")

    producer = LostCommit(failures=0)
    with pytest.raises(FatalDelivery, match="outcome unknown"):
        await _delivery(producer).deliver([], [], [], still_ours=lambda: True)
    # Not aborted and not begun again: had it committed, a second try would commit twice.
    assert producer.calls == ["begin", "offsets", "commit"]


async def test_settle_waits_for_the_transaction_in_progress() -> None:
    release = asyncio.Event()

    class Slow(FlakyTransactions):
        async def commit_transaction(self) -> None:
            await release.wait()
            self.calls.append("commit")

    producer = Slow(failures=0)
    delivery = _delivery(producer)
    running = asyncio.create_task(delivery.deliver([], [], []))
    await asyncio.sleep(0)
    settled = asyncio.create_task(delivery.settle())
    await asyncio.sleep(0)
    assert not settled.done()
    release.set()
    await asyncio.wait_for(settled, 1)
    assert await running is True
    assert producer.calls[-1] == "commit"
