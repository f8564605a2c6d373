"""Reading what the pipeline wrote: every record of a topic, results by task id."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from schemas import InferenceRequest, InferenceResult, Status, decode_result
from workers.kafka.admin import partitions_of
from workers.ledger import Ledger, reached
from workers.service import ensure_pipeline_topics
from workers.settings import Settings, load_settings

if TYPE_CHECKING:
    from tests.services import SecureServices

FEATURES = 16


@dataclass(frozen=True)
class SecureNamespace:
    """A fresh prefix on the secured stack: the settings a client uses and the environment
    worker processes get, with the pipeline's topics created."""

    prefix: str
    settings: Settings
    env: dict[str, str]


async def secure_namespace(
    secure_services: SecureServices, model_repository: Path
) -> SecureNamespace:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        kafka=secure_services.kafka(topic_prefix=prefix),
        redis=secure_services.redis(key_prefix=f"{prefix}:"),
        model_repository=model_repository,
    )
    env = {
        **secure_services.env(),
        "CONVEYOR_KAFKA__TOPIC_PREFIX": prefix,
        "CONVEYOR_REDIS__KEY_PREFIX": f"{prefix}:",
        "CONVEYOR_MODEL_REPOSITORY": str(model_repository),
    }
    await ensure_pipeline_topics(settings)
    return SecureNamespace(prefix, settings, env)


def tiny_request(tenant: str, **options: object) -> InferenceRequest:
    rng = np.random.default_rng()
    features = rng.standard_normal((1, FEATURES)).astype(np.float32)
    return InferenceRequest.new(
        tenant=tenant, pipeline="tiny-classify", inputs={"features": features}, **options
    )


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now in `topic`, from the beginning to the current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(60):
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def results_per_task(bootstrap: str, topic: str) -> Counter[str]:
    records = await read_topic(bootstrap, topic)
    return Counter(decode_result(r.value or b"", r.headers).task_id for r in records)


async def settled_states(
    ledger: Ledger, task_ids: list[str], timeout_s: float = 30
) -> Counter[Status | None]:
    """The ledger states once every task is final. The ledger is written just after a
    stage's outputs are acknowledged, so it may trail the result a client sees."""
    async with asyncio.timeout(timeout_s):
        while True:
            states = await ledger.states(task_ids)
            if all(s is not None and reached(s, Status.DONE) for s in states.values()):
                return Counter(states.values())
            await asyncio.sleep(0.05)


async def answered_once(
    ledger: Ledger, bootstrap: str, results_topic: str, ids: list[str], results: list[Any]
) -> None:
    """Every task succeeded, is DONE in the ledger, and has exactly one result record."""
    assert all(isinstance(r, InferenceResult) for r in results), [
        r for r in results if not isinstance(r, InferenceResult)
    ][:3]
    assert await settled_states(ledger, ids) == {Status.DONE: len(ids)}
    per_task = await results_per_task(bootstrap, results_topic)
    assert set(per_task) == set(ids)
    assert max(per_task.values()) == 1, "a task was answered twice"
