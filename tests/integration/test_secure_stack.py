"""Against the secured native stack: credentials connect, wrong ones fail fast with a clear
message that never holds the password, and the broker's authorizer refuses a user without
ACLs."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from pydantic import SecretStr
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.services import SecureServices
from workers.client import Client
from workers.kafka.admin import TopicSpec, delete_topics_with_prefix, ensure_topics
from workers.ledger.connection import redis_client
from workers.names import Topics
from workers.service import ensure_pipeline_topics
from workers.settings import KafkaSettings, RedisSettings, load_settings
from workers.stack.secure import GUEST_USER

pytestmark = pytest.mark.integration

WRONG = "not-the-password-0xC0FFEE"


async def test_client_and_redis_connect_with_credentials(secure_services: SecureServices) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        kafka=secure_services.kafka(topic_prefix=prefix), redis=secure_services.redis()
    )
    await ensure_pipeline_topics(settings)
    try:
        async with Client(settings.kafka, Topics(prefix)) as client:
            assert client.results_topic == f"{prefix}.results"
        redis = redis_client(settings.redis)
        try:
            assert await redis.ping()
            assert await redis.acl_whoami() in ("conveyor", b"conveyor")
        finally:
            await redis.aclose()
    finally:
        await delete_topics_with_prefix(settings.kafka, prefix)


async def test_wrong_kafka_password_fails_fast_and_says_why(
    secure_services: SecureServices,
) -> None:
    options = {**secure_services.kafka(), "sasl_password_file": None}
    kafka = KafkaSettings(**options, sasl_password=SecretStr(WRONG))  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError) as caught:
        await ensure_topics(kafka, [TopicSpec("never.created", 1)])
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "SASL_PLAINTEXT, SCRAM-SHA-512 as user 'admin'" in message
    assert "credentials" in message
    assert WRONG not in message
    with pytest.raises(KafkaConnectionError, match="credentials"):
        async with Client(kafka):  # the client says the same
            pass


async def test_plaintext_client_on_the_secured_listener_fails_fast(
    secure_services: SecureServices,
) -> None:
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError, match="PLAINTEXT"):
        await ensure_topics(secure_services.kafka_bootstrap, [TopicSpec("never.created", 1)])
    assert time.monotonic() - started < 10


async def test_a_user_without_acls_is_refused(secure_services: SecureServices) -> None:
    guest = KafkaSettings(**secure_services.kafka(GUEST_USER))  # type: ignore[arg-type]
    with pytest.raises(TopicAuthorizationFailedError):
        await ensure_topics(guest, [TopicSpec(f"g{uuid.uuid4().hex[:8]}.requests", 1)])


async def test_wrong_redis_password_fails_with_a_clear_message(
    secure_services: SecureServices, tmp_path: Path
) -> None:
    wrong_file = tmp_path / "password"
    wrong_file.write_text(WRONG)
    options = secure_services.redis(password_file=wrong_file)
    settings = RedisSettings(**options)  # type: ignore[arg-type]
    redis = redis_client(settings)
    try:
        with pytest.raises(AuthenticationError) as caught:
            await redis.ping()
    finally:
        await redis.aclose()
    assert "invalid username-password pair" in str(caught.value)
    assert WRONG not in str(caught.value)
    assert WRONG not in repr(caught.value)


async def test_redis_refuses_plain_connections(secure_services: SecureServices) -> None:
    plain_url = secure_services.redis_url.replace("rediss://", "redis://")
    options = secure_services.redis(url=plain_url)
    redis = redis_client(RedisSettings(**options))  # type: ignore[arg-type]
    try:
        with pytest.raises(RedisConnectionError):
            await redis.ping()
    finally:
        await redis.aclose()
