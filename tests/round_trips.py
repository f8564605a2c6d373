"""Counting round trips to Redis: a client whose every packet sent is counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis


class CountingConnection(aioredis.Connection):
    """Counts the packets sent to Redis: one per round trip (a pipeline or one script call is
    one send; a loop of calls is one send each)."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        await super().send_packed_command(command, check_health)


@asynccontextmanager
async def counting_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on one connection, already connected (the handshake is not counted)."""
    pool = aioredis.ConnectionPool.from_url(
        redis_url, connection_class=CountingConnection, max_connections=1
    )
    client = aioredis.Redis(connection_pool=pool)
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()
        await pool.disconnect()
