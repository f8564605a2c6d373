"""Pending tasks per tenant against the real Redis: the cap, idempotent re-admission,
release on a final state, and the TTL that frees a lost task's place."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from schemas import Status
from tests.conftest import Namespace
from workers.lanes.quota import ADMITTED, ALREADY, REFUSED, TenantQuota
from workers.ledger import Transition
from workers.ledger.scripts import run_scripts
from workers.names import RedisKeys


def _final(task_id: str, tenant: str, state: Status = Status.DONE) -> Transition:
    return Transition(task_id=task_id, state=state, at_ms=0, tenant=tenant)


async def test_cap_is_exact_and_per_tenant(
    redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    quota = TenantQuota(redis_client, RedisKeys(namespace.key_prefix), max_pending=3, ttl_s=60)

    # Just under the cap: three admitted; just over: the fourth refused, another tenant not.
    assert await quota.admit([("acme", f"a{i}") for i in range(3)]) == [True] * 3
    assert await quota.admit([("acme", "a3"), ("globex", "g0")]) == [False, True]
    # A redelivered request already counted is admitted again, not counted twice.
    assert await quota.admit([("acme", "a1")]) == [True]
    assert await quota.pending("acme") == 3

    await quota.release([_final("a0", "acme"), _final("a1", "acme", Status.FAILED)])
    await quota.release([Transition(task_id="a2", state=Status.PREPROCESSED, at_ms=0)])
    assert await quota.pending("acme") == 1
    assert await quota.admit([("acme", "a3"), ("acme", "a4"), ("acme", "a5")]) == [
        True,
        True,
        False,
    ]


async def test_a_lost_task_stops_counting_after_the_ttl(
    redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    keys = RedisKeys(namespace.key_prefix)
    quota = TenantQuota(redis_client, keys, max_pending=1, ttl_s=60)
    # A task admitted 61 s ago whose final transition never came.
    await redis_client.zadd(keys.pending("acme"), {"lost": int(time.time() * 1000) - 61_000})

    assert await quota.pending("acme") == 0
    assert await quota.admit([("acme", "fresh")]) == [True]
    assert await redis_client.ttl(keys.pending("acme")) > 0


async def test_a_task_admitted_again_keeps_its_admission_time(
    redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    # A redelivery must not renew a task's place: its TTL counts from the first admission.
    keys = RedisKeys(namespace.key_prefix)
    quota = TenantQuota(redis_client, keys, max_pending=2, ttl_s=60)
    admitted_at = int(time.time() * 1000) - 30_000
    await redis_client.zadd(keys.pending("acme"), {"old": admitted_at})
    calls, answers = quota.admit_calls([("acme", "old"), ("acme", "new"), ("acme", "old")])
    assert answers(await run_scripts(redis_client, calls)) == [ALREADY, ADMITTED, ALREADY]
    assert await redis_client.zscore(keys.pending("acme"), "old") == admitted_at
    # At the cap a known task is still admitted again, an unknown one refused.
    calls, answers = quota.admit_calls([("acme", "new"), ("acme", "other"), ("acme", "old")])
    assert answers(await run_scripts(redis_client, calls)) == [ALREADY, REFUSED, ALREADY]
    assert await redis_client.zscore(keys.pending("acme"), "old") == admitted_at


async def test_zero_turns_the_cap_off(redis_client: aioredis.Redis, namespace: Namespace) -> None:
    quota = TenantQuota(redis_client, RedisKeys(namespace.key_prefix), max_pending=0, ttl_s=60)
    assert await quota.admit([("acme", f"a{i}") for i in range(5)]) == [True] * 5
    assert await redis_client.exists(RedisKeys(namespace.key_prefix).pending("acme")) == 0


async def test_a_tenant_cap_overrides_the_default(
    redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    quota = TenantQuota(redis_client, RedisKeys(namespace.key_prefix), max_pending=0, ttl_s=60)
    tasks = [("small", "s1"), ("small", "s2"), ("small", "s3"), ("free", "f1")]
    # small has a cap of 2 of its own; free has none and the default is off.
    assert await quota.admit(tasks, caps=[2, 2, 2, 0]) == [True, True, False, True]
    assert await quota.pending("small") == 2
    assert await redis_client.exists(RedisKeys(namespace.key_prefix).pending("free")) == 0
