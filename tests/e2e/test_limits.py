"""The pending-tasks cap per tenant with real workers: a tenant over it is REJECTED with
QUOTA_EXCEEDED (answered and dead-lettered), other tenants are not, and the places free up
when tasks finish."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis.asyncio as aioredis

from schemas import ErrorCode, ErrorResult, InferenceResult, Status
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import read_topic, tiny_request
from workers.client import Client
from workers.ledger import Ledger

pytestmark = pytest.mark.e2e

CAP = 3


async def _states(ledger: Ledger, ids: list[str]) -> dict[str, Status | None]:
    async with asyncio.timeout(60):
        while True:
            states = await ledger.states(ids)
            if all(s is not None for s in states.values()):
                return states
            await asyncio.sleep(0.05)


async def test_pending_tasks_per_tenant_are_capped(
    pipeline: Pipeline, client: Client, ledger: Ledger, redis_client: aioredis.Redis
) -> None:
    cap = {"CONVEYOR_LIMITS__MAX_PENDING_TASKS_PER_TENANT": str(CAP)}
    # Only preprocess at first: admitted tasks stay pending, so the cap is reached for sure.
    pipeline.fleet.start("preprocess", extra_env=cap)
    acme = [tiny_request("acme") for _ in range(CAP + 2)]
    globex = tiny_request("globex")
    ids = await client.submit_many([*acme, globex])

    states = await _states(ledger, ids)
    acme_states = Counter(states[r.task_id] for r in acme)
    assert acme_states == {Status.PREPROCESSED: CAP, Status.REJECTED: 2}
    assert states[globex.task_id] == Status.PREPROCESSED
    rejected = [i for i, s in states.items() if s == Status.REJECTED]
    for task_id in rejected:
        result = await client.result(task_id, timeout_s=30)
        assert isinstance(result, ErrorResult)
        assert (result.code, result.status) == (ErrorCode.QUOTA_EXCEEDED, Status.REJECTED)
    dead = await read_topic(pipeline.settings.kafka.bootstrap, pipeline.topics.dlq)
    assert {dict(r.headers)["conveyor-error-code"] for r in dead} == {b"QUOTA_EXCEEDED"}
    assert len(dead) == 2

    pipeline.fleet.start("inference")
    pipeline.fleet.start("postprocess")
    admitted = [i for i in ids if i not in rejected]
    results = await asyncio.gather(*(client.result(i, timeout_s=90) for i in admitted))
    assert all(isinstance(r, InferenceResult) for r in results)

    # Finished tasks give their places back (just after their ledger entry is written).
    async with asyncio.timeout(30):
        while True:
            if not await redis_client.zcard(pipeline.keys.pending("acme")):
                break
            await asyncio.sleep(0.05)
    # A full new round is admitted.
    again = await client.submit_many([tiny_request("acme") for _ in range(CAP)])
    later = await asyncio.gather(*(client.result(i, timeout_s=90) for i in again))
    assert all(isinstance(r, InferenceResult) for r in later), later
