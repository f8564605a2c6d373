from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.round_trips import counting_client
from tests.services import SecureServices, Services, secure_session_services, session_services
from workers.kafka.admin import delete_topics_with_prefix
from workers.models.builders import find_minilm_package_dir


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with session_services(tmp_path_factory.mktemp("stack")) as found:
        yield found


@pytest.fixture(scope="session")
def secure_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServices]:
    """A second, secured native stack, started only for the tests that ask for it."""
    with secure_session_services(tmp_path_factory.mktemp("secure-stack")) as found:
        yield found


@dataclass(frozen=True)
class Namespace:
    """Unique names for one test, so tests never see each other's topics or keys."""

    topic_prefix: str
    key_prefix: str

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}.{name}"


@pytest.fixture
async def namespace(services: Services) -> AsyncIterator[Namespace]:
    token = uuid.uuid4().hex[:10]
    ns = Namespace(topic_prefix=f"t{token}", key_prefix=f"t{token}:")
    yield ns
    await delete_topics_with_prefix(services.kafka_bootstrap, ns.topic_prefix)
    client = aioredis.Redis.from_url(services.redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{ns.key_prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_client(services: Services) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(services.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def counted_redis(services: Services) -> AsyncIterator[aioredis.Redis]:
    """A client whose packets sent are counted (`CountingConnection.sends`)."""
    async with counting_client(services.redis_url) as client:
        yield client


@pytest.fixture(scope="session")
def minilm_source() -> Path:
    """The MiniLM weights package's folder; tests that need it skip where it is missing."""
    try:
        return find_minilm_package_dir()
    except FileNotFoundError as exc:
        pytest.skip(f"MiniLM weights unavailable: {exc}")
