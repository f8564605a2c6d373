"""Pending tasks per tenant: admitted at preprocess, released when a task is final.

Each tenant has a sorted set of its admitted task ids scored by admission time. Admission
is one Lua script (drop members older than the TTL, re-admit a known id, refuse over the
cap, add), so it is atomic across preprocess replicas and idempotent under redelivery: a
replayed request is not counted twice. A task whose final transition never comes (a lost
record, a crashed worker) stops counting after `ttl_s`, so a tenant's quota cannot leak.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from schemas import Status
from schemas.messages import ERROR_STATUSES
from workers.ledger.records import Transition
from workers.ledger.scripts import RedisStep, ScriptCall, run_scripts
from workers.names import RedisKeys

FINAL_STATES = frozenset((Status.DONE, *ERROR_STATUSES))

_ADMIT_LUA = """
local call = redis.call
local key, now, ttl_ms, cap = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
call('ZREMRANGEBYSCORE', key, '-inf', now - ttl_ms)
local count = call('ZCARD', key)
-- Redis 7.0 turns a number argument into text with "%.17g", thousands of instructions a
-- call on its one thread; an integer's digits are the same text at a fraction of the cost.
local score = now
if now % 1 == 0 and math.abs(now) < 1e15 then
    score = string.format('%d', now)
end
local admitted, added = {}, false
for i = 4, #ARGV do
    local task = ARGV[i]
    -- Under the cap one ZADD NX both asks and adds (0: known already, its score kept).
    if count < cap then
        if call('ZADD', key, 'NX', score, task) == 1 then
            count = count + 1
            added = true
            admitted[i - 3] = 1
        else
            admitted[i - 3] = 2
        end
    elseif call('ZSCORE', key, task) then
        admitted[i - 3] = 2
    else
        admitted[i - 3] = 0
    end
end
if added then
    call('PEXPIRE', key, ttl_ms)
end
return admitted
"""
"""Admits the tasks ARGV[4..] of one tenant (KEYS[1]) in order, as one call per task would:
1 admitted now, 2 admitted already, 0 refused at the cap."""

ADMITTED, ALREADY, REFUSED = 1, 2, 0


class TenantQuota:
    """Caps each tenant's tasks in flight: its own cap (tenant policy) or `max_pending`;
    0 for both turns the cap off."""

    def __init__(
        self, redis: aioredis.Redis, keys: RedisKeys, max_pending: int, ttl_s: int
    ) -> None:
        if max_pending < 0:
            raise ValueError(f"max_pending must be >= 0, got {max_pending}")
        self._redis = redis
        self._keys = keys
        self.max_pending = max_pending
        self._ttl_ms = ttl_s * 1000
        self._admit = redis.register_script(_ADMIT_LUA)

    async def admit(
        self, tasks: Sequence[tuple[str, str]], caps: Sequence[int] | None = None
    ) -> list[bool]:
        """For each (tenant, task_id): True when admitted (or already admitted). `caps`: a
        cap per task (its tenant's own), where 0 means `max_pending`; one round trip."""
        calls, answers = self.admit_calls(tasks, caps)
        return [code != REFUSED for code in answers(await run_scripts(self._redis, calls))]

    def admit_calls(
        self, tasks: Sequence[tuple[str, str]], caps: Sequence[int] | None = None
    ) -> tuple[list[ScriptCall], Callable[[Sequence[Any]], list[int]]]:
        """`admit` as script calls for another round trip (`run_scripts`), and what turns
        their replies into one code per task: ADMITTED, ALREADY or REFUSED."""
        caps = caps or [0] * len(tasks)
        now_ms = int(time.time() * 1000)
        # One script call per (tenant, cap), with all of its tasks: a tenant's tasks of a
        # poll are admitted in one step, not one call each.
        groups: dict[tuple[str, int], list[int]] = {}
        for i, ((tenant, _), cap) in enumerate(zip(tasks, caps, strict=True)):
            limit = cap or self.max_pending
            if limit > 0:
                groups.setdefault((tenant, limit), []).append(i)
        calls: list[ScriptCall] = [
            (
                self._admit,
                [self._keys.pending(tenant)],
                [now_ms, self._ttl_ms, limit, *(tasks[i][1] for i in indices)],
            )
            for (tenant, limit), indices in groups.items()
        ]

        def answers(replies: Sequence[Any]) -> list[int]:
            codes = [ADMITTED] * len(tasks)  # uncapped: nothing to count
            for indices, reply in zip(groups.values(), replies, strict=True):
                for i, code in zip(indices, reply, strict=True):
                    codes[i] = int(code)
            return codes

        return calls, answers

    async def release(self, transitions: Iterable[Transition]) -> None:
        """Stop counting tasks that reached a final state (idempotent)."""
        step = self.release_step(transitions)
        if step is None:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            step(pipe)
            await pipe.execute()

    async def release_tasks(self, tasks: Iterable[tuple[str, str]]) -> None:
        """Stop counting these (tenant, task id)s (idempotent)."""
        by_tenant: dict[str, list[str]] = {}
        for tenant, task_id in tasks:
            by_tenant.setdefault(tenant, []).append(task_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for tenant, task_ids in by_tenant.items():
                pipe.zrem(self._keys.pending(tenant), *task_ids)
            await pipe.execute()

    def release_step(self, transitions: Iterable[Transition]) -> RedisStep | None:
        """`release` as commands for another round trip (the ledger's, `Ledger.record`);
        None when no task of `transitions` is final."""
        by_tenant: dict[str, list[str]] = {}
        for t in transitions:
            if t.state in FINAL_STATES and t.tenant:
                by_tenant.setdefault(t.tenant, []).append(t.task_id)
        if not by_tenant:
            return None
        keys = {self._keys.pending(tenant): task_ids for tenant, task_ids in by_tenant.items()}

        def release(pipe: Pipeline) -> None:
            for key, task_ids in keys.items():
                pipe.zrem(key, *task_ids)

        return release

    async def pending(self, tenant: str) -> int:
        """Tasks of `tenant` counted now (expired ones excluded)."""
        key = self._keys.pending(tenant)
        now_ms = int(time.time() * 1000)
        return int(await self._redis.zcount(key, now_ms - self._ttl_ms, "+inf"))
