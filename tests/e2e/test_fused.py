"""The fused worker (`conveyor worker fused`): the three stages in one process, two Kafka hops.
Bad input and the chaos suite run against it too (`test_bad_input`, `tests/chaos`)."""

from __future__ import annotations

import asyncio
import re

import pytest

from schemas import InferenceResult, Status
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import answered_once, read_topic, tiny_request
from workers.client import Client
from workers.ledger import Ledger

pytestmark = pytest.mark.e2e

TENANTS = ("acme", "globex", "initech")
EVERY_STATE = {Status.ACCEPTED, Status.PREPROCESSED, Status.INFERRED, Status.DONE}


@pytest.mark.parametrize("ledger_states", ["every", "final"])
async def test_fused_workers_answer_every_request_once(
    pipeline: Pipeline, client: Client, ledger: Ledger, ledger_states: str
) -> None:
    pipeline.fleet.start("fused", 2, extra_env={"CONVEYOR_REDIS__LEDGER_STATES": ledger_states})
    ids = await client.submit_many([tiny_request(TENANTS[i % 3]) for i in range(600)])
    results = await asyncio.gather(*(client.result(i, timeout_s=120) for i in ids))

    bootstrap = pipeline.settings.kafka.bootstrap
    await answered_once(ledger, bootstrap, pipeline.topics.results, ids, results)
    # Frames stayed in the worker: nothing on the internal topics.
    for topic in (*pipeline.topics.preprocessed, *pipeline.topics.inferred):
        assert await read_topic(bootstrap, topic) == [], topic
    first = results[0]
    assert isinstance(first, InferenceResult)
    assert {"preprocess", "inference", "postprocess"} <= set(first.timings_ms)
    assert first.model_version == 2
    wanted = EVERY_STATE if ledger_states == "every" else {Status.ACCEPTED, Status.DONE}
    for task_id in ids[:20]:
        record = await ledger.get(task_id)
        assert record is not None
        assert set(record.timestamps_ms) == wanted, record
        assert record.model_version == 2, record
    assert all(w.alive for w in pipeline.fleet.workers)


async def test_fused_and_staged_workers_share_the_requests(
    pipeline: Pipeline, client: Client, ledger: Ledger
) -> None:
    """A fused worker joins preprocess's consumer group: beside the staged workers it takes a
    share of the requests, and no request is done by both."""
    pipeline.fleet.start_all()
    pipeline.fleet.start("fused")
    pipeline.fleet.wait_ready()
    ids = await client.submit_many([tiny_request(TENANTS[i % 3]) for i in range(600)])
    results = await asyncio.gather(*(client.result(i, timeout_s=120) for i in ids))

    bootstrap = pipeline.settings.kafka.bootstrap
    await answered_once(ledger, bootstrap, pipeline.topics.results, ids, results)
    done_by: dict[str, int] = {}
    for worker in [w for w in pipeline.fleet.workers if w.stage in ("fused", "preprocess")]:
        assert pipeline.fleet.stop(worker) == 0, worker.log()[-2000:]
        found = re.search(r"worker stopping \(processed (\d+)", worker.log())
        assert found is not None, worker.log()[-2000:]
        done_by[worker.stage] = int(found[1])
    assert min(done_by.values()) > 0, done_by
    assert sum(done_by.values()) >= 600, done_by
