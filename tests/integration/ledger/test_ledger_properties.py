"""Property: any sequence of transitions ends in the highest rank seen, first terminal wins."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.messages import Status
from tests.conftest import Namespace
from workers.ledger import Ledger, Outcome, Transition, TransitionResult
from workers.names import RedisKeys

pytestmark = pytest.mark.integration

RANK = {
    Status.ACCEPTED: 1,
    Status.PREPROCESSED: 2,
    Status.INFERRED: 3,
    Status.DONE: 4,
    Status.FAILED: 4,
    Status.EXPIRED: 4,
    Status.REJECTED: 4,
}


@pytest.fixture
async def ledger(redis_client: aioredis.Redis, namespace: Namespace) -> AsyncIterator[Ledger]:
    async with Ledger(redis_client, RedisKeys(namespace.key_prefix), ttl_s=60) as ledger:
        yield ledger


def expected_results(task_id: str, states: list[Status]) -> list[TransitionResult]:
    """The model: a state applies only when its rank beats the stored one."""
    current: Status | None = None
    results = []
    for state in states:
        if current is None or RANK[state] > RANK[current]:
            current, outcome = state, Outcome.APPLIED
        elif state == current:
            outcome = Outcome.DUPLICATE
        else:
            outcome = Outcome.STALE
        results.append(TransitionResult(task_id, outcome, current))
    return results


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    states=st.lists(st.sampled_from(list(Status)), min_size=1, max_size=12), one_batch=st.booleans()
)
async def test_final_state_is_highest_rank_seen_first_terminal_wins(
    ledger: Ledger, states: list[Status], one_batch: bool
) -> None:
    task_id = uuid.uuid4().hex  # a fresh task per example; the namespace cleans them all up
    transitions = [Transition(task_id, s, 1_000 + i) for i, s in enumerate(states)]
    if one_batch:
        results = await ledger.record(transitions)
    else:
        results = [r for t in transitions for r in await ledger.record([t])]

    expected = expected_results(task_id, states)
    assert results == expected
    record = await ledger.get(task_id)
    assert record is not None
    assert record.state == expected[-1].state
    assert record.attempts == sum(r.outcome is Outcome.DUPLICATE for r in expected)
    applied_at = {
        t.state: t.at_ms
        for t, r in zip(transitions, expected, strict=True)
        if r.outcome is Outcome.APPLIED
    }
    assert record.timestamps_ms == {Status.ACCEPTED: 1_000} | applied_at
    assert record.updated_at_ms == max(applied_at.values())
