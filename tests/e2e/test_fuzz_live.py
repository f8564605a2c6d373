"""Thousands of mutated requests through the live pipeline: each is answered, none stops a
worker, and the pipeline still serves good work afterwards."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from schemas import (
    ContractError,
    ErrorResult,
    InferenceResult,
    decode_request,
    decode_result,
    encode,
)
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import read_topic, tiny_request
from workers.client import Client

pytestmark = pytest.mark.e2e

MUTANTS = 2000


def _mutate(value: bytes, rng: random.Random) -> bytes:
    data = bytearray(value)
    kind = rng.randrange(4)
    if kind == 0 and data:  # flip bits
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del data[rng.randrange(len(data) + 1) :]
    elif kind == 2 and data:  # splice random bytes in
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 32))
    else:  # overwrite a run with one byte value
        at = rng.randrange(len(data) + 1)
        data[at : at + rng.randint(1, 16)] = bytes([rng.randrange(256)]) * rng.randint(1, 16)
    return bytes(data)


def _seed(i: int) -> bytes:
    """A valid request of its own task id: a mutant that still decodes is a task of its own
    (mutants sharing an id would be one task, answered once)."""
    if i % 2 == 0:
        return encode(tiny_request("fuzz", task_id=f"fuzz-{i}"))
    body = {
        "id": f"fuzz-{i}",
        "tenant": "fuzz",
        "pipeline": "tiny-classify",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}],
    }
    return json.dumps(body).encode()


async def test_mutated_requests_are_all_answered_and_no_worker_falls(
    pipeline: Pipeline, client: Client
) -> None:
    pipeline.fleet.start_all()
    pipeline.fleet.wait_ready()
    rng = random.Random(2026)
    records = []
    task_ids = set()
    for i in range(MUTANTS):
        value = _mutate(_seed(i), rng)
        headers = [("conveyor-task-id", f"fuzz-{i}".encode()), ("conveyor-tenant", b"fuzz")]
        records.append((value, f"fuzz-{i}".encode(), headers))
        try:  # a mutant that still decodes is the task its payload names
            task_ids.add(decode_request(value, headers).task_id)
        except ContractError:
            task_ids.add(f"fuzz-{i}")
    await client.submit_raw_many(records)

    bootstrap = pipeline.settings.kafka.bootstrap
    answers = await read_topic(bootstrap, pipeline.topics.results)
    for _ in range(120):  # the answers trail the last submit by a few batches
        if {dict(r.headers)["conveyor-task-id"].decode() for r in answers} >= task_ids:
            break
        await asyncio.sleep(1)
        answers = await read_topic(bootstrap, pipeline.topics.results)
    answered = [dict(r.headers)["conveyor-task-id"].decode() for r in answers]
    assert set(answered) == task_ids, "every task is answered"
    # A mutant may carry the id of another record in flight at the same moment: two
    # submissions of one task id racing through a stage can both be answered (at least once).
    assert len(answered) - len(task_ids) <= MUTANTS // 100
    good = await client.submit(tiny_request("acme"))
    assert isinstance(await client.result(good, timeout_s=60), InferenceResult)

    results = [decode_result(r.value or b"", r.headers) for r in answers]
    errors = [r for r in results if isinstance(r, ErrorResult)]
    assert len(errors) > MUTANTS // 2
    assert all(e.message and e.code for e in errors)
    for worker in pipeline.fleet.workers:
        assert worker.alive, worker.log()[-2000:]
        assert "Traceback" not in worker.log(), worker.log()[-3000:]
