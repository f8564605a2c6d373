"""Worker announcements against the real Redis: found through their index in two round
trips however many other keys Redis holds, gone at stop, pruned once expired."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.conftest import Namespace
from tests.round_trips import CountingConnection
from workers.names import RedisKeys
from workers.observability.registry import WorkerAnnouncement, announced_workers

pytestmark = pytest.mark.integration


async def test_announced_workers_are_read_in_two_round_trips(
    redis_client: aioredis.Redis, counted_redis: aioredis.Redis, namespace: Namespace
) -> None:
    keys = RedisKeys(namespace.key_prefix)
    async with redis_client.pipeline(transaction=False) as pipe:  # a ledger's worth of keys
        for i in range(20_000):
            pipe.set(keys.task(f"t{i}"), "x", ex=60)
        await pipe.execute()
    async with (
        WorkerAnnouncement(redis_client, keys, "pre-1", {"stage": "preprocess"}),
        WorkerAnnouncement(redis_client, keys, "inf-1", {"stage": "inference"}),
    ):
        CountingConnection.sends = 0
        workers = await announced_workers(counted_redis, keys)

        assert sorted(w["stage"] for w in workers) == ["inference", "preprocess"]
        assert CountingConnection.sends == 2

    assert await announced_workers(redis_client, keys) == []
    assert await redis_client.exists(keys.workers()) == 0


async def test_an_expired_announcement_leaves_the_index(
    redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    keys = RedisKeys(namespace.key_prefix)
    live = WorkerAnnouncement(redis_client, keys, "post-1", {"stage": "postprocess"})
    killed = WorkerAnnouncement(redis_client, keys, "pre-9", {"stage": "preprocess"})
    async with live:
        await killed.start()
        await redis_client.delete(keys.worker("pre-9"))  # as its TTL would after a SIGKILL

        assert [w["stage"] for w in await announced_workers(redis_client, keys)] == ["postprocess"]
        assert await redis_client.smembers(keys.workers()) == {b"post-1"}
        await killed.stop()
