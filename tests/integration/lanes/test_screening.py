"""Admission's screen against the real broker and Redis: a `reply_to` answers may not go to
is REJECTED before any work (UNDELIVERABLE, answered on the default results topic), and a
task id reused by another record is a DUPLICATE_ID, while a redelivered record is not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer, ConsumerRecord

from schemas import ErrorCode, InferenceRequest
from tests.conftest import Namespace
from tests.services import Services
from workers.engine.work import Work
from workers.kafka.admin import TopicSpec, ensure_topics
from workers.kafka.produce import TopicCheck
from workers.lanes.admission import Admission
from workers.lanes.quota import TenantQuota
from workers.lanes.rate import RateQuota
from workers.lanes.registry import TenantDirectory
from workers.lanes.replies import ReplyTopics
from workers.ledger.claims import TaskClaims
from workers.names import RedisKeys, Topics
from workers.settings import LaneSettings

pytestmark = pytest.mark.integration


def _work(offset: int, task_id: str = "", reply_to: str | None = None) -> Work:
    options: dict[str, object] = {"reply_to": reply_to}
    if task_id:
        options["task_id"] = task_id
    request = InferenceRequest.new(
        tenant="acme", pipeline="p", inputs={"x": np.zeros(1, np.float32)}, **options
    )
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        "requests", 0, offset, 0, 0, None, b"", None, 0, 0, []
    )
    return Work(record, message=request, tenant="acme")


@pytest.fixture
async def admission(
    services: Services, namespace: Namespace, redis_client: aioredis.Redis
) -> AsyncIterator[Admission]:
    keys = RedisKeys(namespace.key_prefix)
    settings = LaneSettings()
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap)
    await producer.start()
    try:
        async with TenantDirectory(redis_client, keys, settings) as directory:
            yield Admission(
                directory,
                RateQuota(redis_client, keys),
                TenantQuota(redis_client, keys, max_pending=0, ttl_s=60),
                settings,
                replies=ReplyTopics(TopicCheck(producer), Topics(namespace.topic_prefix)),
                claims=TaskClaims(redis_client, keys, ttl_s=60),
            )
    finally:
        await producer.stop()


async def test_reply_topics_that_cannot_be_answered_on_are_refused(
    services: Services, namespace: Namespace, admission: Admission
) -> None:
    topics = Topics(namespace.topic_prefix)
    theirs = f"{namespace.topic_prefix}-client-replies"  # not under the prefix: a client's
    await ensure_topics(services.kafka_bootstrap, [TopicSpec(theirs, 1)])
    cases = {
        None: None,
        theirs: None,
        topics.results: None,
        topics.results_of("acme"): None,  # its own tenant's results
        f"{namespace.topic_prefix}-missing": "does not exist",
        "__consumer_offsets": "internal",
        topics.requests: "Conveyor's own",
        topics.preprocessed_of("bulk"): "Conveyor's own",
        topics.dlq: "Conveyor's own",
        topics.results_of("other"): "Conveyor's own",
    }
    works = [_work(i, reply_to=topic) for i, topic in enumerate(cases)]
    await admission.screen(works)
    for work, (topic, expected) in zip(works, cases.items(), strict=True):
        if expected is None:
            assert work.error is None, topic
            continue
        assert work.error is not None, topic
        assert work.error.code is ErrorCode.UNDELIVERABLE, topic
        assert expected in work.error.message, topic
        assert work.message.reply_to is None  # its answer goes to the default results topic


async def test_a_reused_task_id_is_a_duplicate_and_a_redelivery_is_not(
    admission: Admission,
) -> None:
    first, again, other = _work(1, "same-id"), _work(1, "same-id"), _work(2, "same-id")
    await admission.screen([first])
    await admission.screen([again, other])  # `again` is the same record read again
    assert first.error is None
    assert again.error is None
    assert other.error is not None
    assert other.error.code is ErrorCode.DUPLICATE_ID
    assert "same-id" in other.error.message
    # Two records with one id in one batch: the first wins.
    a, b = _work(3, "twice"), _work(4, "twice")
    await admission.screen([a, b])
    assert a.error is None
    assert b.error is not None
    assert b.error.code is ErrorCode.DUPLICATE_ID
