"""A new request's in-flight slot is taken in the round trip that claims its task id, against
the real Redis: one round trip instead of two, and never a slot that should not be taken (a
duplicate id, a possible redelivery, a request the rate quota may still refuse)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import ConsumerRecord

from schemas import ErrorCode, InferenceRequest, Status
from tests.conftest import Namespace
from tests.round_trips import CountingConnection
from workers.engine.work import Work
from workers.lanes.admission import Admission
from workers.lanes.quota import TenantQuota
from workers.lanes.rate import RateQuota
from workers.lanes.registry import TenantDirectory, TenantRegistry
from workers.ledger import Transition
from workers.ledger.claims import TaskClaims
from workers.names import RedisKeys
from workers.settings import LaneSettings

pytestmark = pytest.mark.integration


def _work(tenant: str, offset: int, task_id: str = "", *, fresh: bool = True) -> Work:
    options = {"task_id": task_id} if task_id else {}
    request = InferenceRequest.new(
        tenant=tenant, pipeline="tiny-classify", inputs={"x": np.zeros(1, np.float32)}, **options
    )
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        "requests", 0, offset, 0, 0, None, b"", None, 0, 0, []
    )
    return Work(record, message=request, tenant=tenant, may_be_redelivered=not fresh)


@contextlib.asynccontextmanager
async def _admission(
    redis: aioredis.Redis, namespace: Namespace, over_quota: str = "reject"
) -> AsyncIterator[tuple[Admission, TenantQuota]]:
    keys = RedisKeys(namespace.key_prefix)
    registry = TenantRegistry(redis, keys)
    await registry.set("narrow", max_in_flight=2)
    await registry.set("metered", max_in_flight=2, rate_per_s=1000.0, burst=10)
    settings = LaneSettings(over_quota=over_quota, cap_retry_ms=100)  # type: ignore[arg-type]
    pending = TenantQuota(redis, keys, max_pending=0, ttl_s=60)
    async with TenantDirectory(redis, keys, settings) as directory:
        yield (
            Admission(
                directory,
                RateQuota(redis, keys),
                pending,
                settings,
                claims=TaskClaims(redis, keys, ttl_s=60),
            ),
            pending,
        )


async def _screen_and_admit(admission: Admission, works: list[Work]) -> tuple[int, int]:
    """Round trips of `screen`, then of `admit`."""
    CountingConnection.sends = 0
    await admission.screen(works)
    screened = CountingConnection.sends
    await admission.admit([w for w in works if w.error is None])
    return screened, CountingConnection.sends - screened


async def test_claims_and_slots_take_one_round_trip(
    counted_redis: aioredis.Redis, namespace: Namespace
) -> None:
    async with _admission(counted_redis, namespace) as (admission, pending):
        await _screen_and_admit(admission, [_work("metered", 99)])  # scripts loaded
        works = [_work("narrow", offset) for offset in range(3)]

        assert await _screen_and_admit(admission, works) == (1, 0)
        assert [w.error for w in works[:2]] == [None, None]
        assert works[2].error is not None
        assert works[2].error.code is ErrorCode.QUOTA_EXCEEDED
        assert await pending.pending("narrow") == 2


async def test_a_possible_redelivery_or_a_metered_tenant_takes_its_slot_in_admit(
    counted_redis: aioredis.Redis, namespace: Namespace
) -> None:
    async with _admission(counted_redis, namespace) as (admission, pending):
        redelivered = _work("narrow", 0, fresh=False)
        metered = _work("metered", 1)
        await admission.screen([redelivered, metered])
        # Neither was counted with its claim: the ledger, or the rate quota, comes first.
        assert await pending.pending("narrow") == 0
        assert await pending.pending("metered") == 0

        await admission.admit([redelivered, metered])
        assert (redelivered.error, metered.error) == (None, None)
        assert await pending.pending("narrow") == 1
        assert await pending.pending("metered") == 1


async def test_a_duplicate_id_takes_no_slot(
    counted_redis: aioredis.Redis, namespace: Namespace
) -> None:
    async with _admission(counted_redis, namespace) as (admission, pending):
        first = _work("narrow", 0, "one-id")
        await _screen_and_admit(admission, [first])
        assert await pending.pending("narrow") == 1

        # While the first is in flight, its slot stays its own.
        in_flight = _work("narrow", 1, "one-id")
        await _screen_and_admit(admission, [in_flight])
        assert in_flight.error is not None
        assert in_flight.error.code is ErrorCode.DUPLICATE_ID
        assert await pending.pending("narrow") == 1
        # Once it has finished, a duplicate does not hold a slot in its place.
        done = Transition(task_id="one-id", state=Status.DONE, at_ms=0, tenant="narrow")
        await pending.release([done])
        after = _work("narrow", 2, "one-id")
        await _screen_and_admit(admission, [after])
        assert after.error is not None
        assert after.error.code is ErrorCode.DUPLICATE_ID
        assert await pending.pending("narrow") == 0


async def test_refused_with_its_claim_a_request_is_held_and_asks_again(
    counted_redis: aioredis.Redis, namespace: Namespace
) -> None:
    async with _admission(counted_redis, namespace, "delay") as (admission, pending):
        works = [_work("narrow", offset) for offset in range(3)]
        await admission.screen(works)
        holds = await admission.admit(works)
        assert holds.at_cap == [works[2]]
        assert works[2].error is None
        assert works[2].slot is None  # asked again when it comes back

        done = Transition(works[0].message.task_id, Status.DONE, 0, tenant="narrow")
        await pending.release([done])
        admission._full_until.clear()  # its cap_retry_ms is over
        await admission.screen([works[2]])
        assert not (await admission.admit([works[2]])).at_cap
        assert await pending.pending("narrow") == 2
