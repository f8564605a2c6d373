"""Script calls of the lanes (in-flight quota, rate buckets) cost one round trip a batch,
not a SCRIPT EXISTS before it, and survive Redis losing its scripts."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from schemas import Status
from tests.conftest import Namespace
from tests.round_trips import CountingConnection
from workers.lanes.quota import TenantQuota
from workers.lanes.rate import RateQuota
from workers.ledger import Ledger, Outcome, Transition
from workers.ledger.scripts import run_scripts
from workers.names import RedisKeys

pytestmark = pytest.mark.integration


async def test_quota_of_three_tenants_is_one_round_trip(
    counted_redis: aioredis.Redis, namespace: Namespace
) -> None:
    quota = TenantQuota(counted_redis, RedisKeys(namespace.key_prefix), max_pending=2, ttl_s=60)
    await quota.admit([("warm", "w0")])  # the script loaded
    CountingConnection.sends = 0

    admitted = await quota.admit([("acme", "a0"), ("globex", "g0"), ("acme", "a1"), ("acme", "a2")])

    assert admitted == [True, True, True, False]
    assert CountingConnection.sends == 1


async def test_rate_of_two_tenants_is_one_round_trip(
    counted_redis: aioredis.Redis, namespace: Namespace
) -> None:
    rate = RateQuota(counted_redis, RedisKeys(namespace.key_prefix))
    await rate.take([("warm", 1.0, 1)])
    CountingConnection.sends = 0

    waits_ms = await rate.take([("acme", 1.0, 1), ("globex", 1.0, 1), ("acme", 1.0, 1)])

    assert waits_ms[:2] == [0.0, 0.0]
    assert waits_ms[2] > 0  # acme's second: over its burst of 1
    assert CountingConnection.sends == 1


async def test_scripts_flushed_from_redis_are_loaded_again(
    redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    keys = RedisKeys(namespace.key_prefix)
    quota = TenantQuota(redis_client, keys, max_pending=5, ttl_s=60)
    assert await quota.admit([("acme", "a0")]) == [True]
    await redis_client.script_flush()  # as a restarted Redis without persistence

    assert await quota.admit([("acme", "a1"), ("globex", "g0")]) == [True, True]
    assert await quota.pending("acme") == 2


async def test_an_error_in_a_script_is_raised(redis_client: aioredis.Redis) -> None:
    failing = redis_client.register_script("return redis.error_reply('broken on purpose')")
    fine = redis_client.register_script("return 1")

    with pytest.raises(aioredis.ResponseError, match="broken on purpose"):
        await run_scripts(redis_client, [(fine, [], []), (failing, [], [])])
    assert await run_scripts(redis_client, []) == []


def _done(task_id: str, tenant: str) -> Transition:
    return Transition(task_id=task_id, state=Status.DONE, at_ms=1, tenant=tenant)


async def test_ending_tasks_and_releasing_their_quota_is_one_round_trip(
    counted_redis: aioredis.Redis, namespace: Namespace
) -> None:
    keys = RedisKeys(namespace.key_prefix)
    quota = TenantQuota(counted_redis, keys, max_pending=5, ttl_s=60)
    await quota.admit([("acme", "a0"), ("acme", "a1"), ("globex", "g0")])
    async with Ledger(counted_redis, keys, ttl_s=60) as ledger:
        await ledger.record([_done("warm", "acme")])  # the script loaded
        ended = [_done("a0", "acme"), _done("g0", "globex")]
        release = quota.release_step(ended)
        assert release is not None
        CountingConnection.sends = 0

        results = await ledger.record(ended, also=[release])

        assert CountingConnection.sends == 1
        assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.APPLIED]
        assert await quota.pending("acme") == 1
        assert await quota.pending("globex") == 0
        assert quota.release_step([Transition("a1", Status.INFERRED, 1, tenant="acme")]) is None


async def test_a_ledger_write_with_company_survives_redis_losing_its_scripts(
    redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    keys = RedisKeys(namespace.key_prefix)
    quota = TenantQuota(redis_client, keys, max_pending=5, ttl_s=60)
    await quota.admit([("acme", "a0")])
    async with Ledger(redis_client, keys, ttl_s=60) as ledger:
        await redis_client.script_flush()  # as a restarted Redis without persistence
        ended = [_done("a0", "acme")]
        release = quota.release_step(ended)
        assert release is not None

        results = await ledger.record(ended, also=[release])

        assert [(r.outcome, r.state) for r in results] == [(Outcome.APPLIED, Status.DONE)]
        assert await quota.pending("acme") == 0
        record = await ledger.get("a0")
        assert record is not None
        assert record.state is Status.DONE
