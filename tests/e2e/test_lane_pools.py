"""Lane pools (`worker.lanes`, `worker.nice`): a realtime pool and a pool for the other lanes,
each its own consumer group, serve one pipeline together on the real broker and Redis."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from schemas import InferenceResult
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import tiny_request
from tests.e2e.test_lanes import registry  # noqa: F401  (fixture)
from workers.client import Client
from workers.lanes.registry import TenantRegistry

pytestmark = pytest.mark.e2e

REALTIME = {"CONVEYOR_WORKER__LANES": '["realtime"]'}
OTHERS = {"CONVEYOR_WORKER__LANES": '["standard", "bulk"]', "CONVEYOR_WORKER__NICE": "5"}


async def _committed_topics(bootstrap: str, group: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp.topic for tp, meta in offsets.items() if meta.offset > 0}
    finally:
        await admin.close()


async def test_a_realtime_pool_and_a_pool_for_the_rest_serve_their_lanes_only(
    pipeline: Pipeline,
    client: Client,
    registry: TenantRegistry,  # noqa: F811
) -> None:
    await registry.set("urgent", lane="realtime")
    await registry.set("bulky", lane="bulk")
    fleet = pipeline.fleet
    fleet.start("preprocess")
    for stage in ("inference", "postprocess"):
        fleet.start(stage, extra_env=REALTIME)
        fleet.start(stage, extra_env=OTHERS)
    fleet.wait_ready()
    requests = [tiny_request("urgent") for _ in range(20)] + [
        tiny_request(t) for t in ("bulky", "standard-tenant") * 40
    ]
    await client.submit_many(requests)
    for request in requests:
        result = await client.result(request.task_id, timeout_s=120)
        assert isinstance(result, InferenceResult), result

    topics, bootstrap = pipeline.topics, pipeline.settings.kafka.bootstrap
    expected = {
        topics.group_of("inference", ("realtime",)): {topics.preprocessed_of("realtime")},
        topics.group_of("inference", ("standard", "bulk")): {
            topics.preprocessed_of("standard"),
            topics.preprocessed_of("bulk"),
        },
        topics.group_of("postprocess", ("realtime",)): {topics.inferred_of("realtime")},
        topics.group_of("postprocess", ("standard", "bulk")): {
            topics.inferred_of("standard"),
            topics.inferred_of("bulk"),
        },
    }
    async with asyncio.timeout(30):  # commits follow delivery by `commit_interval_ms`
        while True:
            committed = {group: await _committed_topics(bootstrap, group) for group in expected}
            if committed == expected:
                break
            await asyncio.sleep(0.2)

    own = os.getpriority(os.PRIO_PROCESS, 0)
    nice = {
        w.extra_env.get("CONVEYOR_WORKER__LANES"): os.getpriority(os.PRIO_PROCESS, w.process.pid)
        for w in fleet.workers
        if w.stage == "inference"
    }
    assert nice == {
        REALTIME["CONVEYOR_WORKER__LANES"]: own,
        OTHERS["CONVEYOR_WORKER__LANES"]: min(19, own + 5),
    }


async def test_preprocess_refuses_a_lane_pool(pipeline: Pipeline) -> None:
    (worker,) = pipeline.fleet.start("preprocess", extra_env=REALTIME)
    returncode = await asyncio.to_thread(worker.process.wait, 60)
    assert returncode != 0
    assert "preprocess serves every lane" in worker.log()
