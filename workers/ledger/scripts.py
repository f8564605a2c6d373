"""Several Lua script calls in one round trip to Redis.

redis-py's pipelines ask Redis whether every script they hold is loaded (SCRIPT EXISTS)
before each execute: a second round trip per batch, and a second command on Redis's one
thread, which is the ceiling of a busy host. Here the calls go as plain EVALSHA in one
pipeline; a call that finds its script missing (Redis restarted or its scripts were
flushed) did nothing, so it is run again through the script object, which loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, KeyT

ScriptCall = tuple[AsyncScript, Sequence[KeyT], Sequence[EncodableT]]
"""A registered script, its keys and its arguments."""
RedisStep = Callable[[Pipeline], None]
"""Commands another component adds to a round trip (`run_scripts`' `also`)."""


async def run_scripts(
    redis: aioredis.Redis, calls: Sequence[ScriptCall], also: Sequence[RedisStep] = ()
) -> list[Any]:
    """Each call's reply, in order: one round trip while the scripts are loaded. `also`:
    plain commands sent after the calls in the same round trip (their replies are checked
    for errors, not returned)."""
    if not calls:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        for step in also:
            step(pipe)
        everything: list[Any] = await pipe.execute(raise_on_error=False)
    replies = everything[: len(calls)]
    if error := next((r for r in everything[len(calls) :] if isinstance(r, Exception)), None):
        raise error
    for i, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            script, keys, args = calls[i]
            replies[i] = await script(keys=keys, args=args)
        elif isinstance(reply, Exception):
            raise reply
    return replies
