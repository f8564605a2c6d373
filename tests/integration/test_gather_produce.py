"""Concurrent callers' records produced together (`workers.kafka.gather`), against the real
broker: calls gather while a publication is in flight, each caller gets the answer for its
own records, and a stopped producer refuses new calls and fails the waiting ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import UnknownTopicOrPartitionError

from schemas import InferenceRequest, decode_request
from tests.conftest import Namespace
from tests.e2e.helpers import read_topic
from tests.services import Services
from workers.client import Client
from workers.kafka.admin import TopicSpec, ensure_topics
from workers.kafka.gather import GatheringProducer
from workers.kafka.produce import Record, RecordsRefused
from workers.names import Topics

pytestmark = pytest.mark.integration


@pytest.fixture
async def producer(services: Services) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(
        bootstrap_servers=services.kafka_bootstrap,
        enable_idempotence=True,
        acks="all",
        max_request_size=64 * 1024,
    )
    await p.start()
    yield p
    await p.stop()


async def _topic(services: Services, namespace: Namespace, partitions: int = 2) -> str:
    topic = namespace.topic("gather")
    await ensure_topics(services.kafka_bootstrap, [TopicSpec(topic, partitions)])
    return topic


def _record(topic: str, key: str, value: bytes = b"v") -> Record:
    return (topic, key.encode(), value, [])


async def test_concurrent_callers_share_publications_and_every_record_arrives(
    services: Services, namespace: Namespace, producer: AIOKafkaProducer
) -> None:
    topic = await _topic(services, namespace)
    async with GatheringProducer(producer) as gathering:
        await asyncio.gather(*(gathering.produce([_record(topic, f"k{i}")]) for i in range(300)))
        # One publication at a time: whoever comes while one is in flight waits for the next.
        assert 1 <= gathering.publications <= 30
    keys = sorted(r.key for r in await read_topic(services.kafka_bootstrap, topic))
    assert keys == sorted(f"k{i}".encode() for i in range(300))


async def test_a_refusal_fails_only_the_caller_whose_record_it_names(
    services: Services, namespace: Namespace, producer: AIOKafkaProducer
) -> None:
    topic = await _topic(services, namespace, partitions=1)
    missing = namespace.topic("missing")
    async with GatheringProducer(producer) as gathering:
        # Held behind a first publication, the next three calls go out together.
        first = asyncio.create_task(gathering.produce([_record(topic, "first")]))
        await asyncio.sleep(0)
        outcomes = await asyncio.gather(
            gathering.produce([_record(topic, "a"), _record(topic, "b")]),
            gathering.produce([_record(topic, "ok"), _record(topic, "big", b"x" * 100_000)]),
            gathering.produce([_record(missing, "lost")]),
            return_exceptions=True,
        )
        await first
        assert gathering.publications == 2
    assert outcomes[0] is None
    assert isinstance(outcomes[1], RecordsRefused)
    assert [r.index for r in outcomes[1].refused] == [1]  # its own index, not the batch's
    assert isinstance(outcomes[2], UnknownTopicOrPartitionError)
    keys = [r.key for r in await read_topic(services.kafka_bootstrap, topic)]
    assert keys == [b"first", b"a", b"b", b"ok"]


async def test_a_stopped_producer_refuses_calls(producer: AIOKafkaProducer) -> None:
    gathering = GatheringProducer(producer)
    with pytest.raises(RuntimeError, match="not running"):
        await gathering.produce([("t", b"k", b"v", [])])  # not started yet
    await gathering.start()
    await gathering.stop()
    with pytest.raises(RuntimeError, match="not running"):
        await gathering.produce([("t", b"k", b"v", [])])
    await gathering.stop()  # idempotent


async def test_a_clients_concurrent_submits_share_publications(
    services: Services, namespace: Namespace
) -> None:
    topics = Topics(namespace.topic_prefix)
    await ensure_topics(
        services.kafka_bootstrap, [TopicSpec(topics.requests, 2), TopicSpec(topics.results, 1)]
    )
    requests = [
        InferenceRequest.new(
            tenant="acme", pipeline="tiny-classify", inputs={"x": np.full((1, 2), i, np.float32)}
        )
        for i in range(200)
    ]
    async with Client(services.kafka_bootstrap, topics) as client:
        ids = await asyncio.gather(*(client.submit(r) for r in requests))
        assert client.publications <= 20  # not one each
    assert ids == [r.task_id for r in requests]
    published = await read_topic(services.kafka_bootstrap, topics.requests)
    decoded = {decode_request(r.value or b"", r.headers).task_id for r in published}
    assert decoded == set(ids)


async def test_a_submit_only_client_publishes_without_a_results_topic(
    services: Services, namespace: Namespace
) -> None:
    # No results topic exists: a submit-only client never looks for one.
    topics = Topics(namespace.topic_prefix)
    await ensure_topics(services.kafka_bootstrap, [TopicSpec(topics.requests, 1)])
    request = InferenceRequest.new(
        tenant="acme", pipeline="tiny-classify", inputs={"x": np.zeros((1, 2), np.float32)}
    )
    async with Client(services.kafka_bootstrap, topics, reads_results=False) as client:
        assert await client.submit(request) == request.task_id
        with pytest.raises(RuntimeError, match="only submits"):
            await client.result(request.task_id, timeout_s=1)
        with pytest.raises(RuntimeError, match="only submits"):
            await anext(client.results())
    published = await read_topic(services.kafka_bootstrap, topics.requests)
    assert [decode_request(r.value or b"", r.headers).task_id for r in published] == [
        request.task_id
    ]
