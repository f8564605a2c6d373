"""Task ids are claimed by the first request that uses them.

Preprocess claims each request's task id for the Kafka record it came in (topic, partition,
offset) before any work, one Lua call per batch. A record read again (a redelivery after a
crash or rebalance) finds its own claim and goes on; a different record with a claimed id is
a duplicate: it is answered with `DUPLICATE_ID` and never touches the first request's ledger
record or result. A claim lives as long as a ledger record (`redis.task_ttl_s`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from workers.ledger.scripts import ScriptCall, run_scripts
from workers.names import RedisKeys

CLAIM_LUA = """
local call, ttl = redis.call, ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  local source = ARGV[i + 1]
  -- One command where GET then SET took two (Redis's one thread runs this for every task):
  -- it sets only where no claim is, and answers the claim found either way (NX with GET:
  -- Redis 7.0).
  local old = call('SET', key, source, 'NX', 'GET', 'EX', ttl)
  if not old or old == source then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""


class TaskClaims:
    """Claims task ids for the records that first used them (see the module's docstring)."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, ttl_s: int) -> None:
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1, got {ttl_s}")
        self.redis, self._keys, self._ttl_s = redis, keys, ttl_s
        self._script = redis.register_script(CLAIM_LUA)

    async def claim(self, claims: Sequence[tuple[str, str]]) -> list[bool]:
        """For each (task id, source record), whether the id is this record's (first use or
        the same record again); False for a duplicate."""
        if not claims:
            return []
        call, owned = self.claim_call(claims)
        (reply,) = await run_scripts(self.redis, [call])
        return owned(reply)

    def claim_call(
        self, claims: Sequence[tuple[str, str]]
    ) -> tuple[ScriptCall, Callable[[Any], list[bool]]]:
        """`claim` as a script call for a round trip shared with others (`run_scripts`), and
        what turns its reply into `claim`'s answer."""
        keys = [self._keys.id_owner(task_id) for task_id, _ in claims]
        call: ScriptCall = (self._script, keys, [self._ttl_s, *(s for _, s in claims)])
        return call, lambda reply: [bool(int(flag)) for flag in reply]
