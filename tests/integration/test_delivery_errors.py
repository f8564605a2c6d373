"""Each class of delivery error against the real broker (`workers.kafka.produce`): a refusal
belongs to its record or topic and the rest of the call is delivered; a broker outage is
raised to be retried."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from tests.conftest import Namespace
from tests.e2e.helpers import read_topic
from tests.services import SecureServices, Services
from workers.kafka.admin import (
    Acl,
    TopicSpec,
    create_acls,
    delete_topics_with_prefix,
    ensure_topics,
)
from workers.kafka.clients import connection_options
from workers.kafka.produce import (
    Record,
    TopicCheck,
    _topic_refusal,
    produce_all,
    produce_each,
)
from workers.settings import KafkaSettings
from workers.stack.secure import TENANT_USERS

pytestmark = pytest.mark.integration


@pytest.fixture
async def producer(services: Services) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(
        bootstrap_servers=services.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await p.start()
    yield p
    await p.stop()


async def _good_topic(services: Services, namespace: Namespace) -> str:
    topic = namespace.topic("good")
    await ensure_topics(services.kafka_bootstrap, [TopicSpec(topic, 1)])
    return topic


def _record(topic: str, key: str, value: bytes = b"v") -> Record:
    return (topic, key.encode(), value, [("conveyor-task-id", key.encode())])


async def _keys(bootstrap: str, topic: str) -> list[bytes | None]:
    return [r.key for r in await read_topic(bootstrap, topic)]


async def test_a_missing_topic_is_refused_at_once_and_the_rest_delivered(
    services: Services, namespace: Namespace, producer: AIOKafkaProducer
) -> None:
    good = await _good_topic(services, namespace)
    started = time.monotonic()
    refused = await produce_each(
        producer,
        [_record(good, "a"), _record(namespace.topic("missing"), "b"), _record(good, "c")],
    )
    assert time.monotonic() - started < 5  # not the producer's 40 s metadata wait
    assert [(r.index, r.too_large) for r in refused] == [(1, False)]
    assert "does not exist" in refused[0].reason
    assert await _keys(services.kafka_bootstrap, good) == [b"a", b"c"]


@pytest.mark.parametrize("topic", ["__consumer_offsets", "__transaction_state", "__anything"])
async def test_an_internal_topic_is_refused(
    services: Services, namespace: Namespace, producer: AIOKafkaProducer, topic: str
) -> None:
    good = await _good_topic(services, namespace)
    refused = await produce_each(producer, [_record(topic, "x"), _record(good, "y")])
    assert [r.index for r in refused] == [0]
    assert "internal" in refused[0].reason
    assert await _keys(services.kafka_bootstrap, good) == [b"y"]


async def test_a_record_too_large_is_refused_alone_and_its_partition_keeps_working(
    services: Services, namespace: Namespace
) -> None:
    good = await _good_topic(services, namespace)
    # The producer allows more than the broker (8 MiB): the broker refuses the record, and
    # the partition's sequence numbers must stay usable for the records after it.
    p = AIOKafkaProducer(
        bootstrap_servers=services.kafka_bootstrap,
        enable_idempotence=True,
        max_request_size=16 << 20,
    )
    await p.start()
    try:
        big = b"x" * (9 << 20)
        records = [_record(good, "a"), _record(good, "big", big), _record(good, "c")]
        refused = await produce_each(p, records)
        assert [(r.index, r.too_large) for r in refused] == [(1, True)]
        assert await produce_each(p, [_record(good, "d")]) == []
    finally:
        await p.stop()
    assert await _keys(services.kafka_bootstrap, good) == [b"a", b"c", b"d"]


async def test_a_record_over_the_producers_limit_is_refused_before_sending(
    services: Services, namespace: Namespace, producer: AIOKafkaProducer
) -> None:
    good = await _good_topic(services, namespace)
    refused = await produce_each(producer, [_record(good, "big", b"x" * (2 << 20))])
    assert [(r.index, r.too_large) for r in refused] == [(0, True)]
    assert "kafka.max_message_bytes" in refused[0].reason


@pytest.mark.parametrize("error_code", [5, 6, 7])
def test_metadata_errors_that_say_nothing_about_the_topic_are_retried(error_code: int) -> None:
    # LEADER_NOT_AVAILABLE, NOT_LEADER, REQUEST_TIMED_OUT: raised, so the worker
    # retries (not ready) instead of failing a task.
    with pytest.raises(KafkaError) as caught:
        _topic_refusal("t", error_code, False, 0)
    assert caught.value.retriable


async def test_the_topic_check_answers_from_its_cache(
    services: Services, namespace: Namespace, producer: AIOKafkaProducer
) -> None:
    now = [0.0]
    check = TopicCheck(producer, ttl_s=10, clock=lambda: now[0])
    missing = namespace.topic("later")
    assert "does not exist" in (await check.refusal(missing) or "")
    await ensure_topics(services.kafka_bootstrap, [TopicSpec(missing, 1)])
    assert await check.refusal(missing) is not None  # cached
    now[0] = 11.0
    assert await check.refusal(missing) is None


async def test_a_topic_the_principal_may_not_write_is_refused(
    secure_services: SecureServices,
) -> None:
    prefix = f"a{uuid.uuid4().hex[:8]}"
    admin = KafkaSettings(**secure_services.kafka())  # type: ignore[arg-type]
    readable, hidden, writable = f"{prefix}.read-only", f"{prefix}.hidden", f"{prefix}.writable"
    await ensure_topics(admin, [TopicSpec(t, 1) for t in (readable, hidden, writable)])
    user = f"User:{TENANT_USERS[0]}"
    await create_acls(
        admin,
        [
            Acl(user, "describe", readable),
            Acl(user, "describe", writable),
            Acl(user, "write", writable),
        ],
    )
    tenant = KafkaSettings(**secure_services.kafka(TENANT_USERS[0]))  # type: ignore[arg-type]
    p = AIOKafkaProducer(**connection_options(tenant))
    await p.start()
    try:
        records = [_record(readable, "r"), _record(hidden, "h"), _record(writable, "w")]
        refused = await asyncio.wait_for(produce_each(p, records), 30)
        assert [r.index for r in refused] == [0, 1]
        assert "no WRITE" in refused[0].reason
        assert "not authorized" in refused[1].reason
    finally:
        await p.stop()
        await delete_topics_with_prefix(admin, prefix)


async def test_produce_all_says_which_topic_is_missing_at_once(
    services: Services, namespace: Namespace, producer: AIOKafkaProducer
) -> None:
    started = time.monotonic()
    with pytest.raises(UnknownTopicOrPartitionError, match="does not exist"):
        await produce_all(producer, [_record(namespace.topic("nowhere"), "a")])
    assert time.monotonic() - started < 5
