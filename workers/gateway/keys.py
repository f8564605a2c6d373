"""API keys: each maps to one tenant, stored in Redis as the SHA-256 of the key.

Only digests are stored, so a copy of Redis gives no usable key. `ApiKeys` is the store
(`conveyor keys add|list|revoke`); `KeyDirectory` is the gateway's view: every digest is read
at start and every `gateway.keys_refresh_s`, and a key it has not seen is looked up at once,
so a new key works immediately and a revoked one stops within the refresh interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from workers.component import Component
from workers.lanes.registry import check_tenant
from workers.ledger.records import text
from workers.names import RedisKeys
from workers.tasks import TaskSet

log = logging.getLogger(__name__)

KEY_PREFIX = "cvy_"
"""Every generated key starts with it, so a leaked key is recognisable (secret scanners)."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """The key store: SHA-256(key) -> tenant, one Redis hash."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._hash = keys.api_keys()

    async def add(self, tenant: str) -> str:
        """A new key for `tenant`; the key itself is returned once and never stored."""
        check_tenant(tenant)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        await self._redis.hset(self._hash, digest(key), tenant)
        return key

    async def revoke(self, key_or_digest: str) -> bool:
        """Remove a key (given as the key, or as its digest from `list`)."""
        removed = await self._redis.hdel(self._hash, key_or_digest, digest(key_or_digest))
        return bool(removed)

    async def all(self) -> dict[str, str]:
        """digest -> tenant."""
        raw = await self._redis.hgetall(self._hash)
        return {text(k): text(v) for k, v in raw.items()}

    async def tenant_of(self, key: str) -> str | None:
        value = await self._redis.hget(self._hash, digest(key))
        return None if value is None else text(value)


class KeyDirectory(Component):
    """The gateway's cached view of the key store."""

    def __init__(self, store: ApiKeys, refresh_s: float) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._tenants: dict[str, str] = {}
        self._tasks = TaskSet(self._crashed)
        self._started = False

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("key directory already started")
        self._started = True
        self._tenants = await self._store.all()
        self._tasks.start(self._refresh_forever(), "gateway-keys-refresh")

    async def stop(self) -> None:
        await self._tasks.cancel()

    async def tenant_of(self, key: str) -> str | None:
        """The key's tenant; None for an unknown key. Raises RedisError only when the key
        is not cached and Redis cannot be asked."""
        found = self._tenants.get(digest(key))
        if found is not None:
            return found
        return await self._store.tenant_of(key)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                self._tenants = await self._store.all()
            except RedisError as exc:  # keep the last view while Redis is away
                log.warning("api keys not refreshed: %s", exc)

    def _crashed(self, error: BaseException) -> None:
        log.error("api key refresh stopped: %s", error)
