"""Whole worker processes against the real broker and Redis, one pipeline per test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import Namespace
from tests.services import Services
from workers.client import Client
from workers.fleet import WorkerFleet
from workers.ledger import Ledger
from workers.models.builders import build_minilm, build_tiny_classifier, find_minilm_package_dir
from workers.names import RedisKeys, Topics
from workers.service import ensure_pipeline_topics
from workers.settings import Settings, load_settings

TINY_FEATURES = 16


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    with contextlib.suppress(FileNotFoundError):  # then the MiniLM tests skip
        build_minilm(find_minilm_package_dir(), root)
    build_tiny_classifier(root, version=1, seed=0)
    build_tiny_classifier(root, version=2, seed=1)
    config = root / "tiny-classifier" / "config.json"
    # Serve both versions so requests can pin either; unpinned requests get the latest.
    config.write_text(config.read_text().replace('"latest": 1', '"all": {}'))
    return root


@dataclass
class Pipeline:
    settings: Settings
    fleet: WorkerFleet
    topics: Topics
    keys: RedisKeys


@pytest.fixture
async def pipeline(
    services: Services, namespace: Namespace, model_repository: Path, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    env = {
        "KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "REDIS_URL": services.redis_url,
        "CONVEYOR_KAFKA__TOPIC_PREFIX": namespace.topic_prefix,
        "CONVEYOR_REDIS__KEY_PREFIX": namespace.key_prefix,
        "CONVEYOR_MODEL_REPOSITORY": str(model_repository),
        "CONVEYOR_WORKER__SHUTDOWN_GRACE_S": "15",
        "CONVEYOR_LOG_LEVEL": "INFO",
    }
    settings = load_settings(
        kafka={"bootstrap": services.kafka_bootstrap, "topic_prefix": namespace.topic_prefix},
        redis={"url": services.redis_url, "key_prefix": namespace.key_prefix},
        model_repository=model_repository,
    )
    await ensure_pipeline_topics(settings)
    fleet = WorkerFleet(env, tmp_path / "logs")
    try:
        yield Pipeline(
            settings, fleet, Topics(namespace.topic_prefix), RedisKeys(namespace.key_prefix)
        )
    finally:
        fleet.stop_all()


@pytest.fixture
async def client(pipeline: Pipeline) -> AsyncIterator[Client]:
    async with Client(pipeline.settings.kafka.bootstrap, pipeline.topics) as c:
        yield c


@pytest.fixture
async def ledger(services: Services, pipeline: Pipeline) -> AsyncIterator[Ledger]:
    redis = aioredis.Redis.from_url(
        services.redis_url,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=10),
        retry_on_error=[RedisConnectionError],
    )
    async with Ledger(redis, pipeline.keys, ttl_s=3600) as led:
        yield led
    await redis.aclose()
