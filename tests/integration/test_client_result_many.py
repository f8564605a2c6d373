"""`Client.result_many` against the real broker: results published to the results topic as a
worker publishes them (keyed, encoded, with their headers), awaited together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from schemas import MSGPACK, InferenceResult, encode, headers_for, key_for
from tests.conftest import Namespace
from tests.services import Services
from workers.client import Client
from workers.kafka.admin import TopicSpec, ensure_topics
from workers.kafka.clients import make_producer, start_client, stop_client
from workers.kafka.produce import produce_all
from workers.names import Topics
from workers.settings import KafkaSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(services: Services, namespace: Namespace) -> AsyncIterator[Client]:
    topics = Topics(namespace.topic_prefix)
    await ensure_topics(services.kafka_bootstrap, [TopicSpec(topics.results, 4)])
    async with Client(services.kafka_bootstrap, topics) as c:
        yield c


def _result(task_id: str) -> InferenceResult:
    return InferenceResult(
        task_id=task_id,
        tenant="acme",
        pipeline="p",
        outputs={"y": np.arange(3, dtype=np.float32)},
        model_name="m",
        model_version=1,
        submitted_at_ms=1,
    )


async def _answer(services: Services, client: Client, task_ids: list[str]) -> None:
    """Publish these tasks' results where the client reads them, as a worker does."""
    settings = KafkaSettings(bootstrap=services.kafka_bootstrap)
    producer = make_producer(settings, "test-worker")
    await start_client(producer, settings)
    try:
        results = [_result(t) for t in task_ids]
        await produce_all(
            producer,
            [
                (client.results_topic, key_for(r), encode(r, MSGPACK), headers_for(r, MSGPACK))
                for r in results
            ],
        )
    finally:
        await stop_client(producer)


async def test_results_come_in_the_order_asked_whenever_they_arrived(
    services: Services, client: Client
) -> None:
    ids = [f"task-{i}" for i in range(300)]
    await _answer(services, client, ids[:100])  # some arrive before anyone asks
    await client.result_many(ids[:100], timeout_s=30)
    waiting = asyncio.create_task(client.result_many(ids, timeout_s=30))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await _answer(services, client, ids[100:] + ids[150:160])  # and ten of them twice
    results = await waiting
    assert [r.task_id for r in results] == ids
    assert all(isinstance(r, InferenceResult) for r in results)
    assert client._awaited == {}


async def test_two_callers_may_wait_for_the_same_tasks(services: Services, client: Client) -> None:
    ids = [f"shared-{i}" for i in range(50)]
    first = asyncio.create_task(client.result_many(ids, timeout_s=30))
    second = asyncio.create_task(client.result_many(ids[10:20] + ids[10:20], timeout_s=30))
    await asyncio.sleep(0.1)
    await _answer(services, client, ids)
    assert [r.task_id for r in await first] == ids
    assert [r.task_id for r in await second] == ids[10:20] + ids[10:20]


async def test_a_timeout_leaves_nothing_waiting(services: Services, client: Client) -> None:
    with pytest.raises(TimeoutError):
        await client.result_many(["missing-1", "missing-2"], timeout_s=0.5)
    assert client._awaited == {}
    # A later answer to a task nobody waits for any more goes where single results go.
    await _answer(services, client, ["missing-1"])
    found = await client.result("missing-1", timeout_s=30)
    assert found.task_id == "missing-1"
