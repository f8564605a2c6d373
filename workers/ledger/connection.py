"""The one place a Redis client is made: URL, ACL user and password, TLS, and retries.

Every component that talks to Redis (workers, `conveyor status`, `top`, `models list`) gets
its client here, so a secured Redis (``rediss://``, an ACL user) is configured once.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workers.settings import RedisSettings

RedisConnection = RedisSettings | str
"""Settings, or a bare URL (no credentials beyond what the URL holds)."""


def redis_options(connection: RedisConnection) -> dict[str, Any]:
    """Keyword arguments for `Redis.from_url(url, **options)`: credentials and TLS."""
    if isinstance(connection, str):
        return {}
    s = connection
    options: dict[str, Any] = {}
    if s.username is not None:
        options["username"] = s.username
    if (password := s.secret()) is not None:
        options["password"] = password
    if s.tls:
        options["ssl_check_hostname"] = s.ssl_check_hostname
        if s.ssl_ca_certs is not None:
            options["ssl_ca_certs"] = str(s.ssl_ca_certs)
        if s.ssl_certfile is not None:
            options["ssl_certfile"] = str(s.ssl_certfile)
            options["ssl_keyfile"] = str(s.ssl_keyfile)
    return options


def redis_client(
    connection: RedisConnection, *, resilient: bool = False, **extra: Any
) -> aioredis.Redis:
    """A client for `connection`. `resilient`: ride through a Redis restart, stale pooled
    connections retried (what a long-lived worker wants; a one-shot command does not)."""
    url = connection if isinstance(connection, str) else connection.url
    options = {**redis_options(connection), **extra}
    if resilient:
        options.update(
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=10,
        )
    return aioredis.Redis.from_url(url, **options)
