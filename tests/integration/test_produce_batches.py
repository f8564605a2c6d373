"""How many record batches one delivery becomes (`workers.kafka.clients.batch_bytes`), against
the real broker: a stage's batch of results is one record batch per partition (an
idempotent producer sends a partition's batches one round trip after another), and the
largest batch is one a broker with Kafka's default record limit takes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import Namespace
from tests.e2e.helpers import read_topic
from tests.services import Services
from workers.client import Client
from workers.kafka.admin import TopicSpec, ensure_topics
from workers.kafka.clients import (
    BROKER_DEFAULT_RECORD_BYTES,
    batch_bytes,
    make_producer,
    start_client,
    stop_client,
)
from workers.kafka.produce import Record, _batches, produce_each
from workers.settings import KafkaSettings

pytestmark = pytest.mark.integration

RESULT_BYTES = 2_000
"""About one MiniLM result (384 float32 and the envelope)."""


@pytest.fixture
async def producer(services: Services) -> AsyncIterator[AIOKafkaProducer]:
    settings = KafkaSettings(bootstrap=services.kafka_bootstrap)
    p = make_producer(settings, "test")
    await start_client(p, settings)
    yield p
    await stop_client(p)


def _records(topic: str, count: int, size: int) -> list[Record]:
    return [(topic, f"k{i}".encode(), bytes([i % 251]) * size, []) for i in range(count)]


def test_the_batch_limit_is_what_any_broker_takes() -> None:
    assert batch_bytes("127.0.0.1:9092") == BROKER_DEFAULT_RECORD_BYTES
    assert batch_bytes(KafkaSettings()) == BROKER_DEFAULT_RECORD_BYTES
    small = KafkaSettings(max_message_bytes=256 * 1024)
    assert batch_bytes(small) == 256 * 1024


async def test_a_stages_batch_of_results_is_one_record_batch(
    producer: AIOKafkaProducer,
) -> None:
    records = _records("t", 32, RESULT_BYTES)
    # aiokafka's default (16 KiB) made five batches of these, five round trips in a row.
    assert len(_batches(producer, records, list(range(32)))) == 1
    # A delivery larger than the limit still splits, each batch within it.
    many = _records("t", 1_000, RESULT_BYTES)
    groups = _batches(producer, many, list(range(1_000)))
    assert len(groups) == 2
    assert sum(len(indices) for indices, _ in groups) == 1_000


async def test_the_largest_batch_goes_to_a_topic_at_kafkas_default_limit(
    services: Services, namespace: Namespace, producer: AIOKafkaProducer
) -> None:
    topic = namespace.topic("default-limit")
    limit = {"max.message.bytes": "1048588"}  # Kafka's default, whatever the broker says
    await ensure_topics(services.kafka_bootstrap, [TopicSpec(topic, 1, configs=limit)])
    records = _records(topic, 600, RESULT_BYTES)  # 1.2 MB: one full batch and the rest
    assert await produce_each(producer, records) == []
    read = await read_topic(services.kafka_bootstrap, topic)
    assert [r.key for r in read] == [key for _, key, _, _ in records]


async def test_the_clients_submissions_are_batched_the_same_way(services: Services) -> None:
    async with Client(services.kafka_bootstrap, reads_results=False) as client:
        assert client._producer is not None
        requests = _records("t", 400, 300)  # a `submit_many` of small requests
        assert len(_batches(client._producer, requests, list(range(400)))) == 1
