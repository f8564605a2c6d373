"""Rate quotas against the real Redis: a burst then a refusal with a sensible wait, refill
over real time, one bucket shared by replicas, delay-mode booking and idle expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.conftest import Namespace
from tests.services import Services
from workers.lanes.rate import RateQuota
from workers.names import RedisKeys


@pytest.fixture
def keys(namespace: Namespace) -> RedisKeys:
    return RedisKeys(namespace.key_prefix)


@pytest.fixture
def quota(redis_client: aioredis.Redis, keys: RedisKeys) -> RateQuota:
    return RateQuota(redis_client, keys)


@pytest.fixture
async def second_client(services: Services) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(services.redis_url)
    yield client
    await client.aclose()


async def test_a_burst_is_admitted_then_refused_with_the_wait(quota: RateQuota) -> None:
    # 1 token/s, bucket of 3: three at once, the fourth waits about one second.
    waits_ms = await quota.take([("acme", 1.0, 3)] * 4)
    assert waits_ms[:3] == [0.0, 0.0, 0.0]
    assert 900 < waits_ms[3] <= 1000
    # A refusal books nothing: asking again gives the same wait (less the time gone by),
    # not one more interval.
    (again_ms,) = await quota.take([("acme", 1.0, 3)])
    assert 0 < again_ms <= waits_ms[3]


async def test_tenants_have_their_own_buckets(quota: RateQuota) -> None:
    waits_ms = await quota.take([("acme", 1.0, 1), ("acme", 1.0, 1), ("globex", 1.0, 1)])
    assert waits_ms[0] == 0.0
    assert waits_ms[1] > 0
    assert waits_ms[2] == 0.0


async def test_the_bucket_refills_over_real_time(quota: RateQuota) -> None:
    # 20 tokens/s, bucket of 1: a token every 50 ms.
    assert await quota.take([("acme", 20.0, 1)]) == [0.0]
    (wait_ms,) = await quota.take([("acme", 20.0, 1)])
    assert 0 < wait_ms <= 50
    await asyncio.sleep(wait_ms / 1000 + 0.005)
    assert await quota.take([("acme", 20.0, 1)]) == [0.0]


async def test_default_burst_is_one_seconds_worth(quota: RateQuota) -> None:
    waits_ms = await quota.take([("acme", 5.0, 0)] * 6)
    assert waits_ms[:5] == [0.0] * 5
    assert waits_ms[5] > 0


async def test_replicas_share_one_bucket(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, keys: RedisKeys
) -> None:
    replica_a = RateQuota(redis_client, keys)
    replica_b = RateQuota(second_client, keys)
    assert await replica_a.take([("acme", 1.0, 2)]) == [0.0]
    assert await replica_b.take([("acme", 1.0, 2)]) == [0.0]
    (wait_ms,) = await replica_a.take([("acme", 1.0, 2)])
    assert wait_ms > 0
    (wait_ms,) = await replica_b.take([("acme", 1.0, 2)])
    assert wait_ms > 0


async def test_concurrent_takes_never_overspend(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, keys: RedisKeys
) -> None:
    replicas = [RateQuota(redis_client, keys), RateQuota(second_client, keys)]
    batches = await asyncio.gather(
        *(replicas[i % 2].take([("acme", 0.5, 10)] * 5) for i in range(8))
    )
    admitted = sum(w == 0.0 for batch in batches for w in batch)
    assert admitted == 10


async def test_unlimited_costs_no_redis_call(
    quota: RateQuota, redis_client: aioredis.Redis, keys: RedisKeys
) -> None:
    assert await quota.take([("acme", 0.0, 0)] * 100) == [0.0] * 100
    assert await redis_client.exists(keys.rate_bucket("acme")) == 0
    # Mixed with limited tenants, answers keep the order of the requests.
    waits_ms = await quota.take([("acme", 0.0, 0), ("globex", 1.0, 1), ("globex", 1.0, 1)])
    assert waits_ms[:2] == [0.0, 0.0]
    assert waits_ms[2] > 0
    assert await quota.take([]) == []


async def test_delay_mode_books_tokens_in_order(quota: RateQuota) -> None:
    # 10 tokens/s, bucket of 1, up to 250 ms of delay: now, +100 ms, +200 ms, then refused.
    waits_ms = await quota.take([("acme", 10.0, 1)] * 5, max_delay_ms=250)
    assert waits_ms[0] == 0.0
    assert 90 < waits_ms[1] <= 100
    assert 190 < waits_ms[2] <= 200
    assert waits_ms[3] > 250
    # The refused one booked nothing: the fifth is judged like the fourth.
    assert waits_ms[4] == pytest.approx(waits_ms[3], abs=5)
    # Without delay mode the booked tokens are spent: nothing free before they pass.
    (wait_ms,) = await quota.take([("acme", 10.0, 1)])
    assert wait_ms > 200


async def test_an_idle_bucket_expires(
    quota: RateQuota, redis_client: aioredis.Redis, keys: RedisKeys
) -> None:
    await quota.take([("acme", 10.0, 1)])
    ttl_ms = await redis_client.pttl(keys.rate_bucket("acme"))
    # Full again after 100 ms; kept a further second of margin, not forever.
    assert 0 < ttl_ms <= 1100


@pytest.mark.parametrize(
    "request_", [("acme", -1.0, 1), ("acme", float("nan"), 1), ("acme", 1.0, -1)]
)
async def test_bad_arguments_are_value_errors(
    quota: RateQuota, request_: tuple[str, float, int]
) -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        await quota.take([request_])


async def test_negative_max_delay_is_a_value_error(quota: RateQuota) -> None:
    with pytest.raises(ValueError, match="max_delay_ms"):
        await quota.take([("acme", 1.0, 1)], max_delay_ms=-1)
