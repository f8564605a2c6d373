"""Several Lua script calls in one round trip to Redis.

redis-py's pipelines ask Redis whether every script they hold is loaded (SCRIPT EXISTS)
before each execute: a second round trip per batch, and a second command on Redis's one
thread, which is the ceiling of a busy host. Here the calls go as plain EVALSHA in one
pipeline; a call that finds its script missing (Redis restarted or its scripts were
flushed) did nothing, so it is run again through the script object, which loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, KeyT

ScriptCall = tuple[AsyncScript, Sequence[KeyT], Sequence[EncodableT]]
"""A registered script, its keys and its arguments."""


async def run_scripts(redis: aioredis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Each call's reply, in order: one round trip while the scripts are loaded."""
    if not calls:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    for i, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            script, keys, args = calls[i]
            replies[i] = await script(keys=keys, args=args)
        elif isinstance(reply, Exception):
            raise reply
    return replies
