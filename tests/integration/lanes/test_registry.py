"""The tenant registry and the workers' directory against the real Redis: merges, validation,
refresh of a running directory, unknown tenants, bad entries and a Redis outage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.conftest import Namespace
from tests.services import Services
from workers.lanes.registry import PolicyError, TenantDirectory, TenantPolicy, TenantRegistry
from workers.names import RedisKeys
from workers.settings import LaneSettings

FAST = LaneSettings(refresh_interval_s=0.1)


async def _eventually(check: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not true within {timeout_s}s"
        await asyncio.sleep(0.02)


@pytest.fixture
def keys(namespace: Namespace) -> RedisKeys:
    return RedisKeys(namespace.key_prefix)


@pytest.fixture
def registry(redis_client: aioredis.Redis, keys: RedisKeys) -> TenantRegistry:
    return TenantRegistry(redis_client, keys)


async def test_set_merges_onto_the_stored_policy(registry: TenantRegistry) -> None:
    first = await registry.set("acme", lane="realtime", weight=2)
    assert first == TenantPolicy(lane="realtime", weight=2.0)
    second = await registry.set("acme", rate_per_s=5, burst=10)
    assert second == TenantPolicy(lane="realtime", weight=2.0, rate_per_s=5.0, burst=10)
    assert await registry.get("acme") == second
    assert await registry.get("globex") is None


async def test_a_first_set_starts_from_the_given_defaults(
    redis_client: aioredis.Redis, keys: RedisKeys
) -> None:
    registry = TenantRegistry(redis_client, keys, TenantPolicy(lane="bulk", weight=0.5))
    assert await registry.set("acme", deadline_ms=250) == TenantPolicy(
        lane="bulk", weight=0.5, deadline_ms=250
    )


async def test_an_invalid_change_stores_nothing(registry: TenantRegistry) -> None:
    await registry.set("acme", weight=2)
    with pytest.raises(PolicyError, match="weight"):
        await registry.set("acme", weight=-1)
    with pytest.raises(PolicyError, match="unknown policy fields"):
        await registry.set("acme", priority=9)
    with pytest.raises(PolicyError, match="not a valid name"):
        await registry.set("ac.me", weight=1)
    assert await registry.all() == {"acme": TenantPolicy(weight=2.0)}


async def test_a_merge_keeps_fields_of_a_newer_writer(
    registry: TenantRegistry, redis_client: aioredis.Redis, keys: RedisKeys
) -> None:
    await redis_client.hset(keys.tenants(), "acme", orjson.dumps({"weight": 3, "region": "eu"}))
    assert await registry.set("acme", lane="bulk") == TenantPolicy(lane="bulk", weight=3.0)
    stored = await redis_client.hget(keys.tenants(), "acme")
    assert stored is not None
    assert orjson.loads(stored)["region"] == "eu"


async def test_an_unreadable_entry_must_be_deleted_before_a_set(
    registry: TenantRegistry, redis_client: aioredis.Redis, keys: RedisKeys
) -> None:
    await redis_client.hset(keys.tenants(), "acme", b"{not json")
    with pytest.raises(PolicyError, match="conveyor tenants delete acme"):
        await registry.set("acme", weight=2)
    assert await registry.delete("acme")
    assert await registry.set("acme", weight=2) == TenantPolicy(weight=2.0)


async def test_concurrent_sets_on_one_tenant_all_land(registry: TenantRegistry) -> None:
    await asyncio.gather(
        registry.set("acme", lane="realtime"),
        registry.set("acme", weight=4),
        registry.set("acme", rate_per_s=9),
        registry.set("acme", deadline_ms=100),
    )
    assert await registry.get("acme") == TenantPolicy(
        lane="realtime", weight=4.0, rate_per_s=9.0, deadline_ms=100
    )


async def test_all_and_delete(registry: TenantRegistry) -> None:
    await registry.set("acme", lane="realtime")
    await registry.set("globex", weight=3)
    assert await registry.all() == {
        "acme": TenantPolicy(lane="realtime"),
        "globex": TenantPolicy(weight=3.0),
    }
    assert await registry.delete("acme") is True
    assert await registry.delete("acme") is False
    assert list(await registry.all()) == ["globex"]


async def test_a_running_directory_picks_up_changes(
    redis_client: aioredis.Redis, keys: RedisKeys, registry: TenantRegistry
) -> None:
    await registry.set("acme", lane="realtime", weight=2)
    async with TenantDirectory(redis_client, keys, FAST) as directory:
        # The first load happened in start(): no waiting for the first interval.
        assert directory.policy("acme") == TenantPolicy(lane="realtime", weight=2.0)
        await registry.set("acme", weight=5)
        await registry.set("globex", lane="bulk")
        await _eventually(lambda: directory.weight("acme") == 5.0)
        await _eventually(lambda: directory.lane("globex") == "bulk")
        await registry.delete("globex")
        await _eventually(lambda: directory.lane("globex") == "standard")
        assert directory.age_s is not None
        assert directory.age_s < 1.0


async def test_unknown_tenants_get_the_default_policy_or_none(
    redis_client: aioredis.Redis, keys: RedisKeys
) -> None:
    lenient = LaneSettings(default_class="bulk", default_weight=0.5)
    async with TenantDirectory(redis_client, keys, lenient) as directory:
        assert directory.policy("stranger") == TenantPolicy(lane="bulk", weight=0.5)
        assert (directory.lane("stranger"), directory.weight("stranger")) == ("bulk", 0.5)

    strict = LaneSettings(unknown_tenants="reject")
    async with TenantDirectory(redis_client, keys, strict) as directory:
        assert directory.policy("stranger") is None
        assert directory.weight("stranger") == 1.0


async def test_a_bad_entry_is_logged_and_skipped_not_fatal(
    redis_client: aioredis.Redis,
    keys: RedisKeys,
    registry: TenantRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await registry.set("acme", lane="realtime")
    await registry.set("globex", lane="bulk", weight=3)
    await redis_client.hset(keys.tenants(), "broken", b"{not json")
    caplog.set_level(logging.ERROR, logger="workers.lanes.registry")

    async with TenantDirectory(redis_client, keys, FAST) as directory:
        assert directory.lane("acme") == "realtime"
        assert directory.policy("broken") == directory.default_policy
        assert any("'broken'" in r.getMessage() for r in caplog.records)

        # A bad write over a good policy keeps the tenant on its last good one.
        await redis_client.hset(keys.tenants(), "globex", orjson.dumps({"weight": -1}))
        await _eventually(lambda: any("'globex'" in r.getMessage() for r in caplog.records))
        await registry.set("acme", weight=7)
        await _eventually(lambda: directory.weight("acme") == 7.0)
        assert directory.tenants["globex"] == TenantPolicy(lane="bulk", weight=3.0)
        # Logged once per bad value, not once per refresh.
        assert sum("'globex'" in r.getMessage() for r in caplog.records) == 1


async def test_start_fails_loudly_when_redis_is_unreachable(keys: RedisKeys) -> None:
    no_retries = Retry(NoBackoff(), retries=0)
    client = aioredis.Redis(host="127.0.0.1", port=_closed_port(), retry=no_retries)
    try:
        directory = TenantDirectory(client, keys, FAST)
        with pytest.raises(aioredis.ConnectionError):
            await directory.start()
        await directory.stop()  # harmless after a failed start
    finally:
        await client.aclose()


async def test_double_start_is_an_error(redis_client: aioredis.Redis, keys: RedisKeys) -> None:
    async with TenantDirectory(redis_client, keys, FAST) as directory:
        with pytest.raises(RuntimeError, match="already started"):
            await directory.start()
    await directory.stop()  # idempotent


async def test_a_redis_outage_keeps_the_last_view(
    services: Services, keys: RedisKeys, registry: TenantRegistry
) -> None:
    await registry.set("acme", lane="realtime", weight=2)
    async with _Proxy(services.redis_url) as proxy:
        client = aioredis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=1)
        try:
            async with TenantDirectory(client, keys, FAST) as directory:
                await proxy.close()
                await registry.set("acme", weight=9)  # not visible while Redis is cut off
                await _eventually(lambda: (directory.age_s or 0) > 0.5)
                assert directory.policy("acme") == TenantPolicy(lane="realtime", weight=2.0)

                await proxy.open()
                await _eventually(lambda: directory.weight("acme") == 9.0, timeout_s=5)
                assert directory.lane("acme") == "realtime"
        finally:
            await client.aclose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Proxy:
    """A TCP relay to Redis that the test can cut and restore on the same port."""

    def __init__(self, redis_url: str) -> None:
        address = redis_url.split("://", 1)[1].split("/", 1)[0]
        self._host, port = address.rsplit(":", 1)
        self._port = int(port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._links:
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> _Proxy:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        self._links |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._links -= {writer, up_writer}
            for w in (writer, up_writer):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
