"""The pipeline end to end: worker processes, the real broker, the real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections import Counter

import pytest

from schemas import ErrorResult, InferenceResult, Status, arrays_of
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import results_per_task, settled_states, tiny_request
from workers.client import Client
from workers.ledger import Ledger

pytestmark = pytest.mark.e2e

TENANTS = ("acme", "globex", "initech")


async def test_requests_from_three_tenants_complete_exactly_once(
    pipeline: Pipeline, client: Client, ledger: Ledger
) -> None:
    pipeline.fleet.start("preprocess", 2)
    pipeline.fleet.start("inference")
    pipeline.fleet.start("postprocess")
    requests = [tiny_request(TENANTS[i % 3]) for i in range(2000)]

    ids = await client.submit_many(requests)
    results = await client.result_many(ids, timeout_s=120)

    assert all(isinstance(r, InferenceResult) for r in results), [
        r for r in results if isinstance(r, ErrorResult)
    ][:3]
    assert Counter(r.tenant for r in results) == {t: len(ids[i::3]) for i, t in enumerate(TENANTS)}
    assert {r.model_version for r in results if isinstance(r, InferenceResult)} == {2}
    assert await settled_states(ledger, ids) == {Status.DONE: 2000}
    per_task = await results_per_task(pipeline.settings.kafka.bootstrap, pipeline.topics.results)
    assert set(per_task) == set(ids)
    assert max(per_task.values()) == 1, "a task was answered twice"
    assert all(w.alive for w in pipeline.fleet.workers)


async def test_the_ledger_may_keep_final_states_only(
    pipeline: Pipeline, client: Client, ledger: Ledger
) -> None:
    final_only = {"CONVEYOR_REDIS__LEDGER_STATES": "final"}
    for stage in ("preprocess", "inference", "postprocess"):
        pipeline.fleet.start(stage, extra_env=final_only)
    requests = [tiny_request(TENANTS[i % 3]) for i in range(300)]

    ids = await client.submit_many(requests)
    results = await asyncio.gather(*(client.result(i, timeout_s=120) for i in ids))

    assert all(isinstance(r, InferenceResult) for r in results)
    assert await settled_states(ledger, ids) == {Status.DONE: 300}
    records = [await ledger.get(task_id) for task_id in ids[:20]]
    assert all(
        r is not None and set(r.timestamps_ms) == {Status.ACCEPTED, Status.DONE} for r in records
    ), records[:1]


async def test_stages_on_either_event_loop_work_together(
    pipeline: Pipeline, client: Client, ledger: Ledger
) -> None:
    """uvloop is the workers' default; `worker.event_loop=asyncio` keeps the standard one."""
    loops = {"preprocess": "asyncio", "inference": "uvloop", "postprocess": "asyncio"}
    for stage, loop in loops.items():
        pipeline.fleet.start(stage, extra_env={"CONVEYOR_WORKER__EVENT_LOOP": loop})
    pipeline.fleet.wait_ready()

    ids = await client.submit_many([tiny_request(TENANTS[i % 3]) for i in range(200)])
    results = await asyncio.gather(*(client.result(i, timeout_s=120) for i in ids))

    assert all(isinstance(r, InferenceResult) for r in results)
    assert await settled_states(ledger, ids) == {Status.DONE: 200}
    for worker in pipeline.fleet.workers:
        assert f"(event loop {loops[worker.stage]})" in worker.log(), worker.log()[-2000:]


async def test_a_request_may_pin_a_model_version(pipeline: Pipeline, client: Client) -> None:
    pipeline.fleet.start_all()
    request_v1 = tiny_request("acme", model_version=1)
    latest = dataclasses.replace(request_v1, task_id="same-input-latest", model_version=None)

    await client.submit_many([request_v1, latest])
    pinned, unpinned = [await client.result(r.task_id, timeout_s=60) for r in (request_v1, latest)]

    assert isinstance(pinned, InferenceResult)
    assert isinstance(unpinned, InferenceResult)
    assert (pinned.model_version, unpinned.model_version) == (1, 2)
    probabilities = [arrays_of(r.outputs)["probabilities"] for r in (pinned, unpinned)]
    assert not (probabilities[0] == probabilities[1]).all(), "v1 and v2 must be different models"


@pytest.mark.parametrize("stage", ["preprocess", "inference", "postprocess"])
async def test_sigterm_of_a_stage_mid_stream_loses_nothing(
    pipeline: Pipeline, client: Client, ledger: Ledger, stage: str
) -> None:
    pipeline.fleet.start_all()
    pipeline.fleet.wait_ready()
    ids = await client.submit_many([tiny_request(TENANTS[i % 3]) for i in range(1500)])
    await client.result(ids[50], timeout_s=60)  # traffic is flowing through every stage

    (victim,) = [w for w in pipeline.fleet.workers if w.stage == stage]
    assert pipeline.fleet.stop(victim, signal.SIGTERM) == 0, victim.log()[-2000:]
    pipeline.fleet.restart(victim)
    results = await asyncio.gather(*(client.result(i, timeout_s=120) for i in ids))

    assert all(isinstance(r, InferenceResult) for r in results)
    assert await settled_states(ledger, ids) == {Status.DONE: 1500}
    per_task = await results_per_task(pipeline.settings.kafka.bootstrap, pipeline.topics.results)
    assert set(per_task) == set(ids)
    assert max(per_task.values()) == 1, "graceful shutdown must not answer a task twice"
    assert "stopping intake" in victim.log()
