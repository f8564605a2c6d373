"""A new owner's starting offsets against the real broker (`workers.kafka.committed`): offsets a
transaction is still committing are waited for, never read stale."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from tests.conftest import Namespace
from tests.services import Services
from workers.kafka.admin import TopicSpec, ensure_topics
from workers.kafka.committed import stable_committed

pytestmark = pytest.mark.integration


@pytest.fixture
async def owner(services: Services, namespace: Namespace) -> AsyncIterator[AIOKafkaConsumer]:
    """A group member holding the one partition of a fresh topic."""
    topic = namespace.topic("input")
    await ensure_topics(services.kafka_bootstrap, [TopicSpec(topic, partitions=1)])
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=services.kafka_bootstrap,
        group_id=f"{namespace.topic_prefix}-group",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        yield consumer
    finally:
        await consumer.stop()


@pytest.fixture
async def transactions(services: Services, namespace: Namespace) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=services.kafka_bootstrap,
        transactional_id=f"{namespace.topic_prefix}-txn",
    )
    await producer.start()
    yield producer
    await producer.stop()


async def _open_transaction(
    producer: AIOKafkaProducer, owner: AIOKafkaConsumer, commit: OffsetAndMetadata
) -> asyncio.Task[dict[TopicPartition, OffsetAndMetadata]]:
    """A transaction holding `commit` for the owner's partition, left open, and a reader of
    the partition's stable offsets started meanwhile (checked to be still waiting)."""
    tp = next(iter(owner.assignment()))
    await producer.begin_transaction()
    await producer.send_offsets_to_transaction({tp: commit}, owner._coordinator.group_id)
    reader = asyncio.create_task(stable_committed(owner, [tp]))
    await asyncio.sleep(1.0)
    assert not reader.done(), "offsets of an open transaction were read before it ended"
    return reader


async def test_offsets_of_an_open_transaction_are_waited_for_then_read(
    owner: AIOKafkaConsumer, transactions: AIOKafkaProducer
) -> None:
    tp = next(iter(owner.assignment()))
    assert await stable_committed(owner, [tp]) == {}  # nothing committed yet
    reader = await _open_transaction(transactions, owner, OffsetAndMetadata(42, "cv1:2"))
    await transactions.commit_transaction()
    assert await asyncio.wait_for(reader, timeout=10) == {tp: OffsetAndMetadata(42, "cv1:2")}


async def test_an_aborted_transaction_leaves_the_older_offset(
    owner: AIOKafkaConsumer, transactions: AIOKafkaProducer
) -> None:
    tp = next(iter(owner.assignment()))
    await owner.commit({tp: OffsetAndMetadata(7, "")})
    reader = await _open_transaction(transactions, owner, OffsetAndMetadata(99, ""))
    await transactions.abort_transaction()
    assert await asyncio.wait_for(reader, timeout=10) == {tp: OffsetAndMetadata(7, "")}


async def test_a_partition_of_another_topic_without_offsets_is_left_out(
    owner: AIOKafkaConsumer,
) -> None:
    tp = next(iter(owner.assignment()))
    await owner.commit({tp: OffsetAndMetadata(3, "meta")})
    elsewhere = TopicPartition(tp.topic, 5)  # no such partition: nothing to start from
    assert await stable_committed(owner, [tp, elsewhere]) == {tp: OffsetAndMetadata(3, "meta")}
