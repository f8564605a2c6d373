"""Per-tenant topics on the secured stack (`kafka.tenant_topics`): the broker's ACLs keep
tenant A off tenant B's topics, and a request is served as the tenant of its topic, whatever
its payload claims."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError

from schemas import InferenceResult
from tests.e2e.helpers import tiny_request
from tests.services import SecureServices
from workers.client import Client
from workers.fleet import WorkerFleet
from workers.kafka.admin import delete_topics_with_prefix
from workers.kafka.clients import connection_options, start_client
from workers.names import Topics
from workers.service import ensure_pipeline_topics
from workers.settings import KafkaSettings, load_settings
from workers.tenants import add_tenant

pytestmark = pytest.mark.e2e

A, B = "tenant-a", "tenant-b"


async def test_tenants_are_isolated_by_topic_and_acl(
    secure_services: SecureServices, model_repository: Path, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix)
    settings = load_settings(
        kafka=secure_services.kafka(topic_prefix=prefix, tenant_topics=True),
        redis=secure_services.redis(key_prefix=f"{prefix}:"),
        model_repository=model_repository,
    )
    await ensure_pipeline_topics(settings)
    for tenant in (A, B):
        await add_tenant(settings, tenant, f"User:{tenant}", None, grant=True)
    as_a = KafkaSettings(**secure_services.kafka(A, topic_prefix=prefix))  # type: ignore[arg-type]
    env = {
        **secure_services.env(),
        "CONVEYOR_KAFKA__TOPIC_PREFIX": prefix,
        "CONVEYOR_KAFKA__TENANT_TOPICS": "true",
        "CONVEYOR_REDIS__KEY_PREFIX": f"{prefix}:",
        "CONVEYOR_MODEL_REPOSITORY": str(model_repository),
    }
    fleet = WorkerFleet(env, tmp_path / "logs")
    try:
        # A cannot submit as B: the broker refuses A's writes to B's requests topic.
        producer = AIOKafkaProducer(**connection_options(as_a), request_timeout_ms=10_000)
        await start_client(producer, as_a)
        try:
            with pytest.raises(TopicAuthorizationFailedError):
                await producer.send_and_wait(topics.requests_of(B), b"{}")
        finally:
            await producer.stop()
        # A cannot read B's results: the broker refuses even to describe B's results topic.
        with pytest.raises(TopicAuthorizationFailedError):
            async with Client(as_a, topics, tenant=B):
                pass
        # A's own topics work, and a payload claiming B (and a reply_to into B's results)
        # is served as A, answered on A's results topic.
        fleet.start_all()
        async with Client(as_a, topics, tenant=A) as client:
            claims_b = tiny_request(B, reply_to=topics.results_of(B))
            plain = tiny_request(A)
            ids = await client.submit_many([claims_b, plain])
            results = await asyncio.gather(*(client.result(i, timeout_s=90) for i in ids))
        for result in results:
            assert isinstance(result, InferenceResult), result
            assert result.tenant == A
    finally:
        fleet.stop_all()
        await delete_topics_with_prefix(settings.kafka, prefix)
