"""Workers announce themselves in Redis, so `conveyor top` finds every metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from workers.names import RedisKeys

log = logging.getLogger(__name__)


class WorkerAnnouncement:
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
            await self._redis.delete(self._key)

    async def __aenter__(self) -> WorkerAnnouncement:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _announce(self) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key, mapping=self._fields)  # type: ignore[arg-type]
            pipe.expire(self._key, self._ttl_s)
            await pipe.execute()

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                await self._announce()
            except RedisError as exc:  # an outage only hides this worker from `top` meanwhile
                log.warning("cannot refresh worker announcement: %s", exc)
