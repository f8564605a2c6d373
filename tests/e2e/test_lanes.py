"""Tenant policies, priority lanes and quotas with whole worker processes on the real broker
and Redis: what `conveyor tenants set` changes reaches running workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from schemas import ErrorCode, ErrorResult, InferenceRequest, InferenceResult, Status
from schemas.frames import decode_frame
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import read_topic, settled_states, tiny_request
from tests.services import Services
from workers.client import Client
from workers.lanes.registry import TenantRegistry
from workers.ledger import Ledger

pytestmark = pytest.mark.e2e

BACKLOG = 3000


@pytest.fixture
async def registry(services: Services, pipeline: Pipeline) -> AsyncIterator[TenantRegistry]:
    redis = aioredis.Redis.from_url(services.redis_url)
    yield TenantRegistry(redis, pipeline.keys)
    await redis.aclose()


async def _lane_topics_holding(pipeline: Pipeline, task_id: str) -> list[str]:
    """The preprocessed lane topics whose frames carry `task_id`."""
    found = []
    for topic in pipeline.topics.preprocessed:
        records = await read_topic(pipeline.settings.kafka.bootstrap, topic)
        if any(task_id in decode_frame(r.value or b"").task_ids for r in records):
            found.append(topic)
    return found


async def _wait_states(
    ledger: Ledger, task_ids: list[str], state: Status, timeout_s: float = 60
) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            states = await ledger.states(task_ids)
            if all(s == state for s in states.values()):
                return
            await asyncio.sleep(0.1)


async def test_a_realtime_request_overtakes_a_bulk_backlog(
    pipeline: Pipeline, client: Client, ledger: Ledger, registry: TenantRegistry
) -> None:
    await registry.set("bulky", lane="bulk")
    await registry.set("urgent", lane="realtime")
    # Small batches, so draining the backlog takes hundreds of batches.
    small = {"CONVEYOR_WORKER__MAX_BATCH_SIZE": "8"}
    pipeline.fleet.start("preprocess")
    pipeline.fleet.start("postprocess")
    pipeline.fleet.wait_ready()
    backlog = [tiny_request("bulky") for _ in range(BACKLOG)]
    await client.submit_many(backlog)
    await _wait_states(ledger, [r.task_id for r in backlog], Status.PREPROCESSED)
    urgent = tiny_request("urgent")
    await client.submit(urgent)
    await _wait_states(ledger, [urgent.task_id], Status.PREPROCESSED)
    assert await _lane_topics_holding(pipeline, urgent.task_id) == [
        pipeline.topics.preprocessed_of("realtime")
    ]

    pipeline.fleet.start("inference", extra_env=small)
    result = await client.result(urgent.task_id, timeout_s=120)
    assert isinstance(result, InferenceResult)
    ids = [r.task_id for r in backlog]
    await settled_states(ledger, ids, timeout_s=180)
    records = await read_topic(pipeline.settings.kafka.bootstrap, pipeline.topics.results)
    done_order = [(r.key or b"").decode() for r in records]
    # Results of one partition are in completion order; the urgent task's partition holds
    # about a quarter of the backlog, and it must come out near the front of it.
    partition = next(r.partition for r in records if (r.key or b"").decode() == urgent.task_id)
    same = [(r.key or b"").decode() for r in records if r.partition == partition]
    assert len(set(done_order)) == BACKLOG + 1
    assert same.index(urgent.task_id) < len(same) // 10, (same.index(urgent.task_id), len(same))


async def test_a_policy_change_reaches_running_workers(
    pipeline: Pipeline, client: Client, registry: TenantRegistry
) -> None:
    pipeline.fleet.start_all()
    pipeline.fleet.wait_ready()
    first = tiny_request("acme")
    await client.submit(first)
    assert isinstance(await client.result(first.task_id, timeout_s=60), InferenceResult)
    assert await _lane_topics_holding(pipeline, first.task_id) == [
        pipeline.topics.preprocessed_of("standard")
    ]

    # Realtime class and a quota of one task per minute (a bucket of one).
    await registry.set("acme", lane="realtime", rate_per_s=1 / 60, burst=1)
    await asyncio.sleep(pipeline.settings.lanes.refresh_interval_s * 2.5)
    second, third = tiny_request("acme"), tiny_request("acme")
    await client.submit(second)
    assert isinstance(await client.result(second.task_id, timeout_s=60), InferenceResult)
    await client.submit(third)
    refused = await client.result(third.task_id, timeout_s=60)
    assert isinstance(refused, ErrorResult)
    assert (refused.status, refused.code) == (Status.REJECTED, ErrorCode.QUOTA_EXCEEDED)
    assert await _lane_topics_holding(pipeline, second.task_id) == [
        pipeline.topics.preprocessed_of("realtime")
    ]

    # Lifting the quota lets the tenant in again, without a restart.
    await registry.set("acme", rate_per_s=0)
    await asyncio.sleep(pipeline.settings.lanes.refresh_interval_s * 2.5)
    fourth = tiny_request("acme")
    await client.submit(fourth)
    assert isinstance(await client.result(fourth.task_id, timeout_s=60), InferenceResult)


async def test_a_default_deadline_expires_tasks_before_inference(
    pipeline: Pipeline, client: Client, ledger: Ledger, registry: TenantRegistry
) -> None:
    await registry.set("hasty", deadline_ms=1)
    pipeline.fleet.start_all()
    pipeline.fleet.wait_ready()
    late = tiny_request("hasty")
    patient = tiny_request("hasty", deadline_ms=2**62)  # its own deadline wins
    await client.submit_many([late, patient])
    expired = await client.result(late.task_id, timeout_s=60)
    assert isinstance(expired, ErrorResult)
    assert (expired.status, expired.code) == (Status.EXPIRED, ErrorCode.DEADLINE_EXCEEDED)
    assert expired.stage in ("preprocess", "inference")
    assert isinstance(await client.result(patient.task_id, timeout_s=60), InferenceResult)
    assert await settled_states(ledger, [late.task_id]) == {Status.EXPIRED: 1}


async def test_unknown_tenants_are_rejected_when_configured(
    pipeline: Pipeline, client: Client, registry: TenantRegistry
) -> None:
    await registry.set("known")
    for stage in ("preprocess", "inference", "postprocess"):
        pipeline.fleet.start(stage, extra_env={"CONVEYOR_LANES__UNKNOWN_TENANTS": "reject"})
    pipeline.fleet.wait_ready()
    known, stranger = tiny_request("known"), tiny_request("stranger")
    await client.submit_many([known, stranger])
    assert isinstance(await client.result(known.task_id, timeout_s=60), InferenceResult)
    refused = await client.result(stranger.task_id, timeout_s=60)
    assert isinstance(refused, ErrorResult)
    assert (refused.status, refused.code) == (Status.REJECTED, ErrorCode.UNKNOWN_TENANT)


async def test_over_quota_tasks_are_delayed_when_configured(
    pipeline: Pipeline, client: Client, ledger: Ledger, registry: TenantRegistry
) -> None:
    await registry.set("steady", rate_per_s=10, burst=1)
    pipeline.fleet.start("preprocess", extra_env={"CONVEYOR_LANES__OVER_QUOTA": "delay"})
    pipeline.fleet.start("inference")
    pipeline.fleet.start("postprocess")
    pipeline.fleet.wait_ready()
    requests: list[InferenceRequest] = [tiny_request("steady") for _ in range(6)]
    await client.submit_many(requests)
    for request in requests:
        assert isinstance(await client.result(request.task_id, timeout_s=60), InferenceResult)
    records = [await ledger.get(r.task_id) for r in requests]
    admitted_ms = sorted(r.timestamps_ms[Status.PREPROCESSED] for r in records if r is not None)
    # One token up front, then one every 100 ms: the sixth is admitted >= 500 ms after the first.
    assert admitted_ms[-1] - admitted_ms[0] >= 450


async def test_tasks_over_the_cap_in_flight_wait_instead_when_delayed(
    pipeline: Pipeline, client: Client, ledger: Ledger, registry: TenantRegistry
) -> None:
    await registry.set("narrow", max_in_flight=2)
    delay = {"CONVEYOR_LANES__OVER_QUOTA": "delay", "CONVEYOR_LANES__CAP_RETRY_MS": "20"}
    pipeline.fleet.start("preprocess", extra_env=delay)
    pipeline.fleet.start("inference")
    pipeline.fleet.start("postprocess")
    pipeline.fleet.wait_ready()
    requests: list[InferenceRequest] = [tiny_request("narrow") for _ in range(12)]
    await client.submit_many(requests)
    for request in requests:  # none REJECTED: each waited for room
        assert isinstance(await client.result(request.task_id, timeout_s=60), InferenceResult)
    # The ledger is written just after the results are acknowledged: it may trail them.
    await settled_states(ledger, [request.task_id for request in requests])
    spans = []
    for request in requests:
        record = await ledger.get(request.task_id)
        assert record is not None
        spans.append((record.timestamps_ms[Status.PREPROCESSED], record.timestamps_ms[Status.DONE]))
    # Admission counts a task before it is PREPROCESSED and releases it after it is DONE, so
    # the ledger's spans never overlap more than the cap allows.
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 2
