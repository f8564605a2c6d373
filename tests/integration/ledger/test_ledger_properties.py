"""Property: any sequence of transitions ends in the highest rank seen, first terminal wins."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.messages import Status
from tests.conftest import Namespace
from workers.ledger import Ledger, Outcome, Transition, TransitionResult
from workers.ledger.records import text
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


def expected_hashes(
    before: dict[str, dict[str, str]], transitions: list[Transition]
) -> tuple[dict[str, dict[str, str]], list[TransitionResult]]:
    """The model of every field: applied transitions write in order (later values win),
    a duplicate counts an attempt; what the script stores must be exactly this. And each
    transition's result."""
    hashes = {task: dict(fields) for task, fields in before.items()}
    results = []
    for t in transitions:
        stored = hashes.get(t.task_id)
        current = Status(stored["state"]) if stored else None
        if current is None or RANK[t.state] > RANK[current]:
            at_ms = str(t.at_ms)
            written = {"state": t.state.value, f"{t.state.value.lower()}_at_ms": at_ms}
            written["updated_at_ms"] = at_ms
            if stored is None:
                written["attempts"] = "0"
                if t.state is not Status.ACCEPTED:
                    written["accepted_at_ms"] = at_ms
            hashes[t.task_id] = (stored or {}) | written | t.fields()
            results.append(TransitionResult(t.task_id, Outcome.APPLIED, t.state))
        elif t.state == current:
            assert stored is not None
            stored["attempts"] = str(int(stored["attempts"]) + 1)
            results.append(TransitionResult(t.task_id, Outcome.DUPLICATE, current))
        else:
            assert current is not None
            results.append(TransitionResult(t.task_id, Outcome.STALE, current))
    return hashes, results


_TASKS = ("a", "b", "c")
_shapes = st.builds(
    Transition,
    task_id=st.just("-"),
    state=st.sampled_from(list(Status)),
    at_ms=st.sampled_from([1_000, 2_000]),
    tenant=st.sampled_from([None, "t1", "t2"]),
    model_name=st.sampled_from([None, "m"]),
    model_version=st.sampled_from([None, 1, 2]),
    batch_id=st.sampled_from([None, "b1", "b2"]),
    error_code=st.sampled_from([None, "E"]),
    stage=st.sampled_from([None, "inference"]),
)


@st.composite
def _transitions(draw: st.DrawFn, max_size: int) -> list[Transition]:
    """Transitions of a few shapes only, so that runs of them alike (but for the task) go
    as groups, reaching tasks that stand in different places."""
    shapes = draw(st.lists(_shapes, min_size=1, max_size=3))
    picks = draw(
        st.lists(st.tuples(st.sampled_from(_TASKS), st.sampled_from(shapes)), max_size=max_size)
    )
    return [dataclasses.replace(shape, task_id=task) for task, shape in picks]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    earlier=_transitions(max_size=4),
    batch=_transitions(max_size=16),
)
async def test_every_field_is_what_transitions_in_order_write(
    ledger: Ledger,
    redis_client: aioredis.Redis,
    namespace: Namespace,
    earlier: list[Transition],
    batch: list[Transition],
) -> None:
    # Tasks passing several states in one call (a fused worker's) have their fields
    # gathered into one write; it must leave what one write per transition would.
    run = uuid.uuid4().hex
    keys = RedisKeys(namespace.key_prefix)

    def fresh(transitions: list[Transition]) -> list[Transition]:
        return [dataclasses.replace(t, task_id=f"{run}-{t.task_id}") for t in transitions]

    earlier, batch = fresh(earlier), fresh(batch)
    await ledger.record(earlier)
    before, _ = expected_hashes({}, earlier)
    results = await ledger.record(batch)

    expected, expected_results = expected_hashes(before, batch)
    assert results == expected_results
    for task in {f"{run}-{t}" for t in _TASKS}:
        key = keys.task(task)
        stored = await redis_client.hgetall(key)
        assert {text(k): text(v) for k, v in stored.items()} == expected.get(task, {})
        assert (await redis_client.ttl(key) > 0) == (task in expected)
