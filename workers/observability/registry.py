"""Workers announce themselves in Redis, so `conveyor top` finds every metrics endpoint and the
gateway knows which stages have a live worker.

An announcement is a hash that expires unless its worker refreshes it, listed in an index set
(`RedisKeys.workers`): a reader takes the set and the hashes in two round trips, whatever else
Redis holds. A SCAN for the hashes instead walks the whole keyspace, millions of ledger keys
in a busy deployment, every time it looks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from workers.component import Component
from workers.ledger.records import text
from workers.names import RedisKeys

log = logging.getLogger(__name__)


class WorkerAnnouncement(Component):
    """Keeps `RedisKeys.worker(instance_id)` alive while the worker runs; removes it at stop."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        instance_id: str,
        fields: Mapping[str, str],
        ttl_s: int = 15,
    ) -> None:
        self._redis = redis
        self._index = keys.workers()
        self._instance_id = instance_id
        self._key = keys.worker(instance_id)
        self._fields = dict(fields)
        self._ttl_s = ttl_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("announcement already started")
        await self._announce()
        self._task = asyncio.create_task(self._refresh(), name="worker-announcement")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(RedisError):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key)
                pipe.srem(self._index, self._instance_id)
                await pipe.execute()

    async def _announce(self) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key, mapping=self._fields)  # type: ignore[arg-type]
            pipe.expire(self._key, self._ttl_s)
            pipe.sadd(self._index, self._instance_id)
            await pipe.execute()

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                await self._announce()
            except RedisError as exc:  # an outage only hides this worker from `top` meanwhile
                log.warning("cannot refresh worker announcement: %s", exc)


async def announced_workers(redis: aioredis.Redis, keys: RedisKeys) -> list[dict[str, str]]:
    """The fields of every live worker's announcement, in instance id order. Ids whose
    announcement expired (a worker killed before its stop) leave the index here."""
    members = sorted(text(m) for m in await redis.smembers(keys.workers()))
    if not members:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.hgetall(keys.worker(member))
        found: list[dict[bytes | str, bytes | str]] = await pipe.execute()
    if gone := [m for m, fields in zip(members, found, strict=True) if not fields]:
        await redis.srem(keys.workers(), *gone)
    return [{text(k): text(v) for k, v in fields.items()} for fields in found if fields]
