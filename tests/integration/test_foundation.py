"""The Foundation acceptance: the real broker and Redis behave as Conveyor relies on."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from tests.conftest import Namespace
from tests.offsets import committed_offsets
from tests.services import Services
from workers.kafka.admin import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration

MESSAGES = 1000
PARTITIONS = 4


async def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sends = [
            await producer.send(
                topic,
                key=f"key-{i % 37}".encode(),
                value=f"value-{i}".encode(),
                headers=[("index", str(i).encode()), ("origin", b"foundation-test")],
            )
            for i in range(count)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def _consume_and_commit(
    bootstrap: str, topic: str, group: str, count: int
) -> dict[int, bytes]:
    """Read `count` records with explicit per-partition commits; returns index -> key."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen: dict[int, bytes] = {}
    try:
        async with asyncio.timeout(60):
            while len(seen) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    for record in records:
                        headers = dict(record.headers)
                        assert headers["origin"] == b"foundation-test"
                        index = int(headers["index"])
                        assert record.value == f"value-{index}".encode()
                        assert record.key is not None
                        seen[index] = record.key
                    await consumer.commit({tp: records[-1].offset + 1})
    finally:
        await consumer.stop()
    return seen


async def _committed(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """The group's commits on `topic` by partition; empty while the coordinator loads them."""
    try:
        offsets = await committed_offsets(bootstrap, group)
    except KafkaError:
        # Right after a restart the coordinator answers "loading" (or "not coordinator")
        # until it has read the offsets topic back.
        return {}
    return {tp.partition: offset for tp, offset in offsets.items() if tp.topic == topic}


async def test_keyed_messages_with_headers_round_trip_through_a_group(
    services: Services, namespace: Namespace
) -> None:
    topic = namespace.topic("roundtrip")
    created = await ensure_topics(services.kafka_bootstrap, [TopicSpec(topic, PARTITIONS)])
    assert created == [topic]
    assert await ensure_topics(services.kafka_bootstrap, [TopicSpec(topic, PARTITIONS)]) == []

    await _produce(services.kafka_bootstrap, topic, MESSAGES)
    seen = await _consume_and_commit(
        services.kafka_bootstrap, topic, namespace.topic("g"), MESSAGES
    )

    assert sorted(seen) == list(range(MESSAGES))
    assert all(seen[i] == f"key-{i % 37}".encode() for i in seen)
    committed = await _committed(services.kafka_bootstrap, topic, namespace.topic("g"))
    assert sum(committed.values()) == MESSAGES
    assert len(committed) == PARTITIONS
    assert all(committed.values()), f"keys should spread over all partitions: {committed}"


async def test_broker_restart_keeps_data_and_committed_offsets(
    services: Services, namespace: Namespace
) -> None:
    if services.restart_kafka is None:
        pytest.skip(f"the {services.origin} stack is not ours to restart")
    topic, group = namespace.topic("durable"), namespace.topic("g")
    await ensure_topics(services.kafka_bootstrap, [TopicSpec(topic, PARTITIONS)])
    await _produce(services.kafka_bootstrap, topic, MESSAGES)
    await _consume_and_commit(services.kafka_bootstrap, topic, group, MESSAGES // 2)
    before = await _committed(services.kafka_bootstrap, topic, group)
    assert sum(before.values()) >= MESSAGES // 2, before

    await asyncio.to_thread(services.restart_kafka)

    # The broker answers metadata before its group coordinator has loaded the offsets topic;
    # until then it reports no commits. Wait for them, boundedly: they must come back whole.
    after = await _committed(services.kafka_bootstrap, topic, group)
    for _ in range(60):
        if after == before:
            break
        assert not after, f"partial or wrong commits: {after}"
        await asyncio.sleep(0.5)
        after = await _committed(services.kafka_bootstrap, topic, group)
    assert after == before
    replay = await _consume_and_commit(
        services.kafka_bootstrap, topic, namespace.topic("g2"), MESSAGES
    )
    assert sorted(replay) == list(range(MESSAGES))


async def test_redis_ttl_and_lua(redis_client: aioredis.Redis, namespace: Namespace) -> None:
    key = f"{namespace.key_prefix}counter"
    await redis_client.set(key, 41, ex=30)
    ttl = await redis_client.ttl(key)
    assert 0 < ttl <= 30

    increment_keep_ttl = redis_client.register_script(
        "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) return {v, redis.call('TTL', KEYS[1])}"
    )
    value, ttl_after = await increment_keep_ttl(keys=[key], args=[1])
    assert value == 42
    assert 0 < ttl_after <= 30

    await redis_client.pexpire(key, 50)
    for _ in range(250):  # Redis expires lazily or in its 10 Hz cycle: poll for up to 5 s
        if not await redis_client.exists(key):
            break
        await asyncio.sleep(0.02)
    assert not await redis_client.exists(key)
