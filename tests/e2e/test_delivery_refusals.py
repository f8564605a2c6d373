"""A refusal at delivery belongs to the tasks of the refused record: results a `reply_to`
topic refuses for their size (the topic's own `max.message.bytes`) fail those tasks alone,
answered on the default results topic and dead-lettered, and the rest of the batch is DONE
where it was to go."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaProducer

from schemas import (
    ErrorCode,
    ErrorResult,
    InferenceResult,
    Status,
    decode_result,
    encode,
    headers_for,
)
from tests.conftest import Namespace
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import read_topic, settled_states, tiny_request
from tests.services import Services
from workers.fleet import STAGES
from workers.kafka.admin import TopicSpec, ensure_topics
from workers.ledger import Ledger

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_results_a_reply_topic_refuses_fail_alone(
    services: Services,
    namespace: Namespace,
    pipeline: Pipeline,
    ledger: Ledger,
    delivery: str,
) -> None:
    tight, roomy = f"{namespace.topic_prefix}-tight", f"{namespace.topic_prefix}-roomy"
    await ensure_topics(
        services.kafka_bootstrap,
        [TopicSpec(tight, 1, configs={"max.message.bytes": "200"}), TopicSpec(roomy, 1)],
    )
    for stage in STAGES:
        pipeline.fleet.start(stage, 1, {"CONVEYOR_WORKER__DELIVERY": delivery})
    requests = {
        "tight": [tiny_request("acme", reply_to=tight) for _ in range(5)],
        "roomy": [tiny_request("acme", reply_to=roomy) for _ in range(5)],
        "default": [tiny_request("acme") for _ in range(5)],
    }
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap)
    await producer.start()
    try:
        for request in (r for batch in requests.values() for r in batch):
            await producer.send(
                pipeline.topics.requests,
                encode(request),
                key=request.task_id.encode(),
                headers=headers_for(request),
            )
        await producer.flush()
    finally:
        await producer.stop()
    ids = [r.task_id for batch in requests.values() for r in batch]
    await settled_states(ledger, ids, timeout_s=90)

    answers: dict[str, list[object]] = defaultdict(list)
    async with asyncio.timeout(30):
        while sum(len(v) for v in answers.values()) < len(ids):
            answers.clear()
            for topic in (pipeline.topics.results, tight, roomy):
                for record in await read_topic(services.kafka_bootstrap, topic):
                    answers[topic].append(decode_result(record.value or b"", record.headers))
            await asyncio.sleep(0.2)
    assert answers[tight] == []
    by_id = {r.task_id: (topic, r) for topic, rs in answers.items() for r in rs}  # type: ignore[attr-defined]
    assert len(by_id) == len(ids) == sum(len(v) for v in answers.values())  # one answer each
    for request in requests["tight"]:
        topic, answer = by_id[request.task_id]
        assert topic == pipeline.topics.results
        assert isinstance(answer, ErrorResult)
        assert (answer.code, answer.status) == (ErrorCode.PAYLOAD_TOO_LARGE, Status.FAILED)
        record = await ledger.get(request.task_id)
        assert record is not None
        assert (record.state, record.error_code) == (Status.FAILED, "PAYLOAD_TOO_LARGE")
    for name, topic_wanted in (("roomy", roomy), ("default", pipeline.topics.results)):
        for request in requests[name]:
            topic, answer = by_id[request.task_id]
            assert (topic, type(answer)) == (topic_wanted, InferenceResult), request.task_id
            assert (await ledger.states([request.task_id]))[request.task_id] is Status.DONE

    dead = await read_topic(services.kafka_bootstrap, pipeline.topics.dlq)
    lettered = [dict(r.headers)["conveyor-task-id"].decode() for r in dead]
    assert sorted(lettered) == sorted(r.task_id for r in requests["tight"])
    assert all(w.alive for w in pipeline.fleet.workers)
