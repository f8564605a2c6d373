"""Admission against the real Redis: a tenant at its cap on tasks in flight is refused, or in
delay mode held until some finish, without a Redis round trip per held request meanwhile."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import ConsumerRecord

from schemas import ErrorCode, InferenceRequest, Status
from tests.conftest import Namespace
from workers.engine.work import Work
from workers.lanes.admission import Admission
from workers.lanes.quota import TenantQuota
from workers.lanes.rate import RateQuota
from workers.lanes.registry import TenantDirectory, TenantRegistry
from workers.ledger import Transition
from workers.names import RedisKeys
from workers.settings import LaneSettings


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _work(tenant: str) -> Work:
    request = InferenceRequest.new(
        tenant=tenant, pipeline="tiny-classify", inputs={"x": np.zeros(1, np.float32)}
    )
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        "t", 0, 0, 0, 0, None, b"", None, 0, 0, []
    )
    return Work(record, message=request, tenant=tenant)


@contextlib.asynccontextmanager
async def _admission(
    redis_client: aioredis.Redis, keys: RedisKeys, over_quota: str, clock: FakeClock
) -> AsyncIterator[tuple[Admission, TenantQuota]]:
    await TenantRegistry(redis_client, keys).set("narrow", max_in_flight=2)
    settings = LaneSettings(over_quota=over_quota, cap_retry_ms=100)  # type: ignore[arg-type]
    pending = TenantQuota(redis_client, keys, max_pending=0, ttl_s=60)
    async with TenantDirectory(redis_client, keys, settings) as directory:
        yield Admission(directory, RateQuota(redis_client, keys), pending, settings, clock), pending


@pytest.fixture
def keys(namespace: Namespace) -> RedisKeys:
    return RedisKeys(namespace.key_prefix)


async def test_over_the_cap_is_rejected_by_default(
    redis_client: aioredis.Redis, keys: RedisKeys
) -> None:
    async with _admission(redis_client, keys, "reject", FakeClock()) as (admission, _):
        works = [_work("narrow") for _ in range(3)]
        holds = await admission.admit(works)
        assert not holds.at_cap
        assert not holds.delayed
        assert [w.error for w in works[:2]] == [None, None]
        assert works[2].error is not None
        assert works[2].error.code == ErrorCode.QUOTA_EXCEEDED


async def test_over_the_cap_waits_for_room_in_delay_mode(
    redis_client: aioredis.Redis, keys: RedisKeys
) -> None:
    clock = FakeClock()
    async with _admission(redis_client, keys, "delay", clock) as (admission, pending):
        first = [_work("narrow") for _ in range(3)]
        holds = await admission.admit(first)
        assert holds.at_cap == [first[2]]
        assert first[2].error is None
        assert admission.is_full("narrow")
        assert not admission.is_full("other")
        # Room frees, but within cap_retry_ms the tenant counts as full: held without asking.
        await pending.release(
            [
                Transition(
                    task_id=first[0].message.task_id, state=Status.DONE, at_ms=0, tenant="narrow"
                )
            ]
        )
        again = await admission.admit([first[2]])
        assert again.at_cap == [first[2]]
        assert await pending.pending("narrow") == 1
        # Once it is over, the held request takes the free place.
        clock.now_s += 0.2
        assert not admission.is_full("narrow")
        assert not (await admission.admit([first[2]])).at_cap
        assert first[2].error is None
        assert await pending.pending("narrow") == 2
