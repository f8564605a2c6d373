"""Offsets across forced rebalances: tasks complete out of order (lanes, fair sharing, batches
in flight), yet when workers join and leave mid-stream every task is answered exactly once in
the ledger and the group's committed offsets end at the end of every input partition."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import Status
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import results_per_task, settled_states, tiny_request
from tests.offsets import committed_offsets
from workers.client import Client
from workers.kafka.admin import partitions_of
from workers.ledger import Ledger

pytestmark = pytest.mark.e2e

TASKS = 2000


async def _end_offsets(bootstrap: str, topics: tuple[str, ...]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in await partitions_of(bootstrap, topic)
        ]
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def test_offsets_stay_right_across_forced_rebalances(
    pipeline: Pipeline, client: Client, ledger: Ledger
) -> None:
    bootstrap = pipeline.settings.kafka.bootstrap
    pipeline.fleet.start("preprocess")
    pipeline.fleet.start("postprocess")
    (first,) = pipeline.fleet.start(
        "inference", extra_env={"CONVEYOR_WORKER__MAX_BATCH_SIZE": "16"}
    )
    pipeline.fleet.wait_ready()
    tenants = ("a", "b", "c")
    requests = [tiny_request(tenants[i % 3]) for i in range(TASKS)]
    await client.submit_many(requests)
    ids = [r.task_id for r in requests]

    async def until_done(count: int) -> None:
        async with asyncio.timeout(120):
            while True:
                states = await ledger.states(ids)
                if sum(1 for s in states.values() if s == Status.DONE) >= count:
                    return
                await asyncio.sleep(0.05)

    await until_done(TASKS // 4)
    # A second inference worker joins (rebalance), then the first leaves (rebalance again),
    # each while batches are in flight.
    pipeline.fleet.start("inference", extra_env={"CONVEYOR_WORKER__MAX_BATCH_SIZE": "16"})
    await until_done(TASKS // 2)
    assert pipeline.fleet.stop(first) == 0

    states = await settled_states(ledger, ids, timeout_s=180)
    assert states == {Status.DONE: TASKS}
    answered = await results_per_task(bootstrap, pipeline.topics.results)
    assert set(answered) == set(ids)  # nothing lost; at least once may answer twice
    ends = await _end_offsets(bootstrap, pipeline.topics.preprocessed)
    group = pipeline.topics.group_of("inference")
    async with asyncio.timeout(30):
        while True:  # the remaining worker commits on its next beat
            committed = await committed_offsets(bootstrap, group)
            if all(committed.get(tp, 0) == end for tp, end in ends.items() if end > 0):
                break
            await asyncio.sleep(0.2)
