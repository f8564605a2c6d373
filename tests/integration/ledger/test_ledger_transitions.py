"""The ledger against a real Redis: what each transition stores, and what it never undoes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from schemas.messages import Status
from tests.conftest import Namespace
from tests.services import Services
from workers.ledger import (
    MAX_ERROR_MESSAGE_BYTES,
    Ledger,
    Outcome,
    Transition,
    TransitionResult,
    read_task,
)
from workers.names import RedisKeys

pytestmark = pytest.mark.integration

TTL_S = 600


@pytest.fixture
async def ledger(redis_client: aioredis.Redis, namespace: Namespace) -> AsyncIterator[Ledger]:
    async with Ledger(redis_client, RedisKeys(namespace.key_prefix), ttl_s=TTL_S) as ledger:
        yield ledger


async def test_happy_path_stores_every_stage_with_its_timestamp(
    ledger: Ledger, services: Services, namespace: Namespace
) -> None:
    results = await ledger.record(
        [
            Transition("t1", Status.ACCEPTED, 1_000, tenant="acme", pipeline="minilm"),
            Transition("t1", Status.PREPROCESSED, 1_100, stage="preprocess"),
            Transition(
                "t1",
                Status.INFERRED,
                1_200,
                model_name="minilm",
                model_version=3,
                batch_id="b-7",
            ),
        ]
    )
    assert [r.outcome for r in results] == [Outcome.APPLIED] * 3
    assert await ledger.record([Transition("t1", Status.DONE, 1_300)]) == [
        TransitionResult("t1", Outcome.APPLIED, Status.DONE)
    ]

    record = await ledger.get("t1")
    assert record is not None
    assert record.state is Status.DONE
    assert record.timestamps_ms == {
        Status.ACCEPTED: 1_000,
        Status.PREPROCESSED: 1_100,
        Status.INFERRED: 1_200,
        Status.DONE: 1_300,
    }
    assert (record.tenant, record.pipeline, record.attempts) == ("acme", "minilm", 0)
    assert (record.model_name, record.model_version, record.batch_id) == ("minilm", 3, "b-7")
    assert (record.error_code, record.error_message, record.error_stage) == (None, None, None)
    assert record.updated_at_ms == 1_300
    assert await ledger.states(["t1", "unknown"]) == {"t1": Status.DONE, "unknown": None}

    assert await read_task(services.redis_url, namespace.key_prefix, "t1") == record
    assert await read_task(services.redis_url, namespace.key_prefix, "unknown") is None
    as_json = json.loads(json.dumps(record.to_dict()))
    assert as_json["state"] == "DONE"
    assert as_json["timestamps_ms"]["INFERRED"] == 1_200


async def test_jump_from_unknown_records_acceptance(ledger: Ledger) -> None:
    long_message = "é" * MAX_ERROR_MESSAGE_BYTES  # 2 bytes each: must be cut to 1 KiB
    results = await ledger.record(
        [
            Transition("pre", Status.PREPROCESSED, 50, tenant="acme"),
            Transition(
                "bad",
                Status.FAILED,
                60,
                stage="inference",
                error_code="MODEL_ERROR",
                error_message=long_message,
            ),
        ]
    )
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.APPLIED]

    pre = await ledger.get("pre")
    assert pre is not None
    assert pre.timestamps_ms == {Status.ACCEPTED: 50, Status.PREPROCESSED: 50}
    bad = await ledger.get("bad")
    assert bad is not None
    assert bad.state is Status.FAILED
    assert bad.timestamps_ms == {Status.ACCEPTED: 60, Status.FAILED: 60}
    assert (bad.error_code, bad.error_stage) == ("MODEL_ERROR", "inference")
    assert bad.error_message is not None
    assert len(bad.error_message.encode()) == MAX_ERROR_MESSAGE_BYTES
    assert long_message.startswith(bad.error_message)


async def test_lower_rank_changes_nothing(ledger: Ledger) -> None:
    await ledger.record([Transition("t", Status.INFERRED, 10, model_name="m")])
    before = await ledger.get("t")
    results = await ledger.record(
        [
            Transition("t", Status.PREPROCESSED, 20, model_name="other"),
            Transition("t", Status.ACCEPTED, 30, tenant="other"),
        ]
    )
    assert results == [
        TransitionResult("t", Outcome.STALE, Status.INFERRED),
        TransitionResult("t", Outcome.STALE, Status.INFERRED),
    ]
    assert await ledger.get("t") == before


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (Status.DONE, Status.FAILED),
        (Status.FAILED, Status.DONE),
        (Status.EXPIRED, Status.REJECTED),
    ],
)
async def test_terminal_state_is_never_left(ledger: Ledger, first: Status, second: Status) -> None:
    await ledger.record([Transition("t", first, 10, error_code="E1")])
    before = await ledger.get("t")
    assert await ledger.record([Transition("t", second, 20, error_code="E2", stage="x")]) == [
        TransitionResult("t", Outcome.STALE, first)
    ]
    after = await ledger.get("t")
    assert after == before
    assert after is not None
    assert second not in after.timestamps_ms


async def test_redelivery_counts_attempts_and_changes_nothing_else(ledger: Ledger) -> None:
    await ledger.record([Transition("t", Status.ACCEPTED, 10, tenant="acme")])
    for expected_attempts in (1, 2):
        assert await ledger.record([Transition("t", Status.ACCEPTED, 99, tenant="other")]) == [
            TransitionResult("t", Outcome.DUPLICATE, Status.ACCEPTED)
        ]
        record = await ledger.get("t")
        assert record is not None
        assert record.attempts == expected_attempts
        assert (record.tenant, record.updated_at_ms) == ("acme", 10)
        assert record.timestamps_ms == {Status.ACCEPTED: 10}

    await ledger.record([Transition("t", Status.DONE, 20)])
    assert await ledger.record([Transition("t", Status.DONE, 30)]) == [
        TransitionResult("t", Outcome.DUPLICATE, Status.DONE)
    ]
    record = await ledger.get("t")
    assert record is not None
    assert (record.attempts, record.timestamps_ms[Status.DONE]) == (3, 20)


async def test_one_batch_applies_transitions_of_one_task_in_order(ledger: Ledger) -> None:
    results = await ledger.record(
        [
            Transition("t", Status.ACCEPTED, 1),
            Transition("t", Status.INFERRED, 2),
            Transition("t", Status.PREPROCESSED, 3),
            Transition("t", Status.INFERRED, 4),
        ]
    )
    assert [(r.outcome, r.state) for r in results] == [
        (Outcome.APPLIED, Status.ACCEPTED),
        (Outcome.APPLIED, Status.INFERRED),
        (Outcome.STALE, Status.INFERRED),
        (Outcome.DUPLICATE, Status.INFERRED),
    ]


async def test_ttl_is_set_and_refreshed_on_every_key(
    ledger: Ledger, redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    keys = RedisKeys(namespace.key_prefix)
    task_ids = [f"t{i}" for i in range(20)]
    await ledger.record([Transition(t, Status.ACCEPTED, 1) for t in task_ids])
    for task_id in task_ids:
        assert 0 < await redis_client.ttl(keys.task(task_id)) <= TTL_S
        await redis_client.expire(keys.task(task_id), 5)

    await ledger.record([Transition(t, Status.PREPROCESSED, 2) for t in task_ids])
    for task_id in task_ids:
        assert TTL_S - 60 < await redis_client.ttl(keys.task(task_id)) <= TTL_S


async def test_bad_stored_state_fails_the_whole_batch_before_any_write(
    ledger: Ledger, redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    keys = RedisKeys(namespace.key_prefix)
    await redis_client.hset(keys.task("corrupt"), "state", "BOGUS")
    with pytest.raises(redis.exceptions.ResponseError, match="BOGUS"):
        await ledger.record(
            [Transition("fine", Status.ACCEPTED, 1), Transition("corrupt", Status.DONE, 2)]
        )
    assert await ledger.states(["fine"]) == {"fine": None}


async def test_redis_errors_propagate(namespace: Namespace) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), retries=0))
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await Ledger(client, RedisKeys(namespace.key_prefix), ttl_s=TTL_S).start()
    finally:
        await client.aclose()


async def test_lifecycle(redis_client: aioredis.Redis, namespace: Namespace) -> None:
    ledger = Ledger(redis_client, RedisKeys(namespace.key_prefix), ttl_s=TTL_S)
    with pytest.raises(RuntimeError, match="start"):
        await ledger.record([Transition("t", Status.ACCEPTED, 1)])
    await ledger.start()
    with pytest.raises(RuntimeError, match="once"):
        await ledger.start()
    await ledger.stop()
    await ledger.stop()
    with pytest.raises(RuntimeError, match="not running"):
        await ledger.states(["t"])
    with pytest.raises(ValueError, match="ttl_s must be an int >= 1, got 0"):
        Ledger(redis_client, RedisKeys(namespace.key_prefix), ttl_s=0)
