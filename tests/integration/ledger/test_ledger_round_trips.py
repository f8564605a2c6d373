"""A batch costs one round trip to Redis, whatever its size.

Two independent witnesses: the client side counts every packet the connection sends (a
pipeline or one script call is one send; a loop of calls is one send each), and the server
side counts EVALSHA calls in `INFO commandstats`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from schemas.messages import Status
from tests.conftest import Namespace
from tests.round_trips import CountingConnection, counting_client
from tests.services import Services
from workers.ledger import Ledger, Outcome, Transition
from workers.names import RedisKeys

pytestmark = pytest.mark.integration

BATCH = 500


@pytest.fixture
async def counted_ledger(services: Services, namespace: Namespace) -> AsyncIterator[Ledger]:
    async with (
        counting_client(services.redis_url) as client,
        Ledger(client, RedisKeys(namespace.key_prefix), ttl_s=60) as ledger,
    ):
        yield ledger


async def _evalsha_calls(client: aioredis.Redis) -> int:
    stats: dict[str, dict[str, int]] = await client.info("commandstats")
    return stats.get("cmdstat_evalsha", {}).get("calls", 0)


async def test_batch_of_500_is_one_round_trip(
    counted_ledger: Ledger, redis_client: aioredis.Redis, services: Services
) -> None:
    transitions = [Transition(f"t{i}", Status.ACCEPTED, i) for i in range(BATCH)]
    evalsha_before = await _evalsha_calls(redis_client)
    CountingConnection.sends = 0

    results = await counted_ledger.record(transitions)

    assert CountingConnection.sends == 1
    if services.origin != "environment":  # a shared Redis may see other clients' scripts
        assert await _evalsha_calls(redis_client) - evalsha_before == 1
    assert [r.task_id for r in results] == [t.task_id for t in transitions]
    assert {r.outcome for r in results} == {Outcome.APPLIED}


async def test_states_of_500_is_one_round_trip(counted_ledger: Ledger) -> None:
    task_ids = [f"t{i}" for i in range(BATCH)]
    await counted_ledger.record([Transition(t, Status.INFERRED, 1) for t in task_ids[::2]])
    CountingConnection.sends = 0

    states = await counted_ledger.states(task_ids)

    assert CountingConnection.sends == 1
    assert list(states) == task_ids
    assert states["t0"] is Status.INFERRED
    assert states["t1"] is None


async def test_empty_input_makes_no_round_trip(counted_ledger: Ledger) -> None:
    CountingConnection.sends = 0
    assert await counted_ledger.record([]) == []
    assert await counted_ledger.states([]) == {}
    assert CountingConnection.sends == 0
