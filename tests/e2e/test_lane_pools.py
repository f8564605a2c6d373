"""Lane pools (`worker.lanes`, `worker.nice`): a realtime pool and a pool for the other lanes,
each its own consumer group (preprocess pools: one group, reading tenants' topics by class),
serve one pipeline together on the real broker and Redis."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from schemas import InferenceResult
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import tiny_request
from tests.e2e.test_lanes import registry  # noqa: F401  (fixture)
from tests.groups import described_group
from tests.offsets import committed_offsets
from workers.client import Client
from workers.lanes.registry import TenantRegistry
from workers.tenants import add_tenant

pytestmark = pytest.mark.e2e

REALTIME = {"CONVEYOR_WORKER__LANES": '["realtime"]'}
OTHERS = {"CONVEYOR_WORKER__LANES": '["standard", "bulk"]', "CONVEYOR_WORKER__NICE": "5"}


async def _committed_topics(bootstrap: str, group: str) -> set[str]:
    offsets = await committed_offsets(bootstrap, group)
    return {tp.topic for tp, offset in offsets.items() if offset > 0}


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


async def test_a_preprocess_pool_without_tenant_topics_refuses_to_start(pipeline: Pipeline) -> None:
    (worker,) = pipeline.fleet.start("preprocess", extra_env=REALTIME)
    returncode = await asyncio.to_thread(worker.process.wait, 60)
    assert returncode != 0
    assert "needs kafka.tenant_topics" in worker.log()


def _autogroup_nice(pid: int) -> int | None:
    """The nice value of the process's autogroup; None where the kernel has none."""
    autogroup = Path(f"/proc/{pid}/autogroup")
    return int(autogroup.read_text().split()[-1]) if autogroup.exists() else None


def _policies(pid: int) -> set[int]:
    """The scheduling policies of a process's threads."""
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


async def _assigned_topics(bootstrap: str, group: str) -> dict[str, set[str]]:
    """Each member's assigned topics, by its client id (which ends with its pid)."""
    _state, members = await described_group(bootstrap, group)
    found: dict[str, set[str]] = {}
    for _member_id, client, _host, _metadata, assignment in members:
        decoded = ConsumerProtocolMemberAssignment.decode(assignment) if assignment else None
        found[client] = {topic for topic, _ in decoded.assignment} if decoded else set()
    return found


async def test_preprocess_pools_read_their_tenants_topics_and_follow_a_change_of_class(
    pipeline: Pipeline,
    registry: TenantRegistry,  # noqa: F811
) -> None:
    await registry.set("urgent", lane="realtime")
    await registry.set("bulky", lane="bulk")
    settings = pipeline.settings.model_copy(
        update={"kafka": pipeline.settings.kafka.model_copy(update={"tenant_topics": True})}
    )
    for tenant in ("urgent", "bulky"):
        await add_tenant(settings, tenant, f"User:{tenant}", None, grant=False)
    per_tenant = {
        "CONVEYOR_KAFKA__TENANT_TOPICS": "true",
        "CONVEYOR_LANES__REFRESH_INTERVAL_S": "0.5",
    }
    fleet = pipeline.fleet
    (realtime,) = fleet.start("preprocess", extra_env={**per_tenant, **REALTIME})
    idle_cpu = {"CONVEYOR_WORKER__SCHED_IDLE": "true"}
    (others,) = fleet.start("preprocess", extra_env={**per_tenant, **OTHERS, **idle_cpu})
    fleet.start("inference", extra_env=per_tenant)
    fleet.start("postprocess", extra_env=per_tenant)
    fleet.wait_ready()
    # `worker.sched_idle`: every thread of the pool, started before or after the setting.
    assert _policies(others.process.pid) == {os.SCHED_IDLE}
    assert _policies(realtime.process.pid) == {os.SCHED_OTHER}
    if (nice := _autogroup_nice(others.process.pid)) is not None:
        # A kernel grouping by session: the pool is idle against the other sessions too.
        assert nice == 19
        assert os.getsid(others.process.pid) == others.process.pid
    topics, bootstrap = pipeline.topics, settings.kafka.bootstrap
    group = topics.group_of("preprocess")

    async def pools_read() -> dict[str, set[str]]:
        by_client = await _assigned_topics(bootstrap, group)
        pools = {"realtime": realtime, "others": others}
        return {
            name: set().union(*(t for c, t in by_client.items() if c.endswith(f"-{w.process.pid}")))
            for name, w in pools.items()
        }

    async def served(tenant: str, count: int) -> None:
        async with Client(bootstrap, topics, tenant=tenant) as client:
            requests = [tiny_request(tenant) for _ in range(count)]
            await client.submit_many(requests)
            for request in requests:
                result = await client.result(request.task_id, timeout_s=120)
                assert isinstance(result, InferenceResult), result
                assert result.tenant == tenant

    await asyncio.gather(served("urgent", 20), served("bulky", 20))
    assert await pools_read() == {
        "realtime": {topics.requests_of("urgent")},
        "others": {topics.requests_of("bulky")},
    }

    # A change of class moves the topic to the other pool, in the running workers.
    await registry.set("urgent", lane="standard")
    moved = {
        "realtime": set(),
        "others": {topics.requests_of("urgent"), topics.requests_of("bulky")},
    }
    async with asyncio.timeout(60):
        while True:
            if await pools_read() == moved:
                break
            await asyncio.sleep(0.3)
    await served("urgent", 20)
    # One group for both pools: the topic's committed offsets moved with it, so the other
    # pool went on after the first 20 requests instead of reading them again.
    async with asyncio.timeout(30):
        while True:
            offsets = await committed_offsets(bootstrap, group)
            committed = sum(
                offset for tp, offset in offsets.items() if tp.topic == topics.requests_of("urgent")
            )
            if committed == 40:
                break
            await asyncio.sleep(0.2)
