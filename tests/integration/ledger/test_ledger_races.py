"""Concurrent writers and a Redis restart: the ledger stays monotonic and keeps its data."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from schemas.messages import Status
from tests.conftest import Namespace
from tests.services import Services
from workers.ledger import Ledger, Outcome, Transition, TransitionResult
from workers.ledger.ledger import TRANSITION_LUA
from workers.names import RedisKeys

pytestmark = pytest.mark.integration

CLIENTS = 4
CALLS = 20
TASKS = 40


@pytest.fixture
async def ledgers(services: Services, namespace: Namespace) -> AsyncIterator[list[Ledger]]:
    clients = [aioredis.Redis.from_url(services.redis_url) for _ in range(CLIENTS)]
    ledgers = [Ledger(c, RedisKeys(namespace.key_prefix), ttl_s=60) for c in clients]
    try:
        for ledger in ledgers:
            await ledger.start()
        yield ledgers
    finally:
        for ledger, client in zip(ledgers, clients, strict=True):
            await ledger.stop()
            await client.aclose()


async def test_racing_done_and_failed_leave_one_terminal_state(ledgers: list[Ledger]) -> None:
    task_ids = [f"t{i}" for i in range(TASKS)]
    await ledgers[0].record([Transition(t, Status.INFERRED, 1) for t in task_ids])

    def batch(call: int) -> list[Transition]:
        state = Status.DONE if call % 2 == 0 else Status.FAILED
        order = random.Random(call).sample(task_ids, k=len(task_ids))
        return [Transition(t, state, 100 + call, error_code=f"call-{call}") for t in order]

    calls = [ledgers[call % CLIENTS].record(batch(call)) for call in range(CALLS)]
    results: list[TransitionResult] = [r for rs in await asyncio.gather(*calls) for r in rs]

    stored = await ledgers[0].states(task_ids)
    applied = Counter(r.task_id for r in results if r.outcome is Outcome.APPLIED)
    assert applied == dict.fromkeys(task_ids, 1)
    for task_id in task_ids:
        final = stored[task_id]
        assert final in (Status.DONE, Status.FAILED)
        mine = [r for r in results if r.task_id == task_id]
        assert len(mine) == CALLS
        assert {r.state for r in mine} == {final}
        winner = next(r for r in mine if r.outcome is Outcome.APPLIED)
        assert winner.state == final
        record = await ledgers[0].get(task_id)
        assert record is not None
        assert record.attempts == sum(r.outcome is Outcome.DUPLICATE for r in mine)
        assert set(record.timestamps_ms) == {Status.ACCEPTED, Status.INFERRED, final}


async def test_script_and_data_survive_a_redis_restart(
    services: Services, namespace: Namespace, redis_client: aioredis.Redis
) -> None:
    if services.restart_redis is None:
        pytest.skip(f"Redis from {services.origin} cannot be restarted by the tests")
    # A pooled connection is stale after the restart; its first command raises ConnectionError.
    # Retrying is the caller's choice (here: the client's own retry), and safe: a repeated
    # transition is a DUPLICATE.
    client = aioredis.Redis.from_url(
        services.redis_url, retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
    )
    sha = hashlib.sha1(TRANSITION_LUA.encode()).hexdigest()
    try:
        async with Ledger(client, RedisKeys(namespace.key_prefix), ttl_s=60) as ledger:
            await ledger.record([Transition("t", Status.ACCEPTED, 10, tenant="acme")])

            await asyncio.to_thread(services.restart_redis)

            assert await redis_client.script_exists(sha) == [False]  # next EVALSHA: NOSCRIPT
            assert await ledger.record([Transition("t", Status.PREPROCESSED, 20)]) == [
                TransitionResult("t", Outcome.APPLIED, Status.PREPROCESSED)
            ]
            assert await redis_client.script_exists(sha) == [True]
            record = await ledger.get("t")
    finally:
        await client.aclose()
    assert record is not None
    assert record.tenant == "acme"
    assert record.timestamps_ms == {Status.ACCEPTED: 10, Status.PREPROCESSED: 20}
