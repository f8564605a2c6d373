"""Nothing is lost, nothing answered twice (exactly-once), while workers die and services restart.

Three stages with two processes each carry 5,000 tasks streaming in, while a chaos loop
SIGKILLs a random worker (and restarts it with the same instance id) at random moments,
restarts the Kafka broker once and Redis once. Ten planted poison records must end FAILED in
the dead-letter topic, alone: the batches they shared go on.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from typing import Any

import numpy as np
import pytest

from schemas import (
    ErrorCode,
    ErrorResult,
    InferenceRequest,
    Status,
    arrays_of,
    decode_result,
)
from schemas.frames import decode_frame
from tests.chaos.poison_model import FEATURES, NAME, POISON_ABOVE, build_poison_classifier
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import read_topic, settled_states
from tests.services import Services
from workers.client import Client
from workers.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

TASKS = 5000
POISON = 10
KILLS = 10


def _requests(seed: int) -> tuple[list[InferenceRequest], set[str]]:
    rng = np.random.default_rng(seed)
    poison_at = set(rng.choice(TASKS, POISON, replace=False).tolist())
    requests, poison = [], set()
    for i in range(TASKS):
        features = rng.standard_normal((1, FEATURES)).astype(np.float32)
        if i in poison_at:
            features[0, 3] = POISON_ABOVE * 5
        request = InferenceRequest.new(
            tenant=("acme", "globex", "initech")[i % 3],
            pipeline=NAME,
            inputs={"features": features},
            task_id=f"chaos-{i:05d}",
        )
        requests.append(request)
        if i in poison_at:
            poison.add(request.task_id)
    return requests, poison


async def _stream(client: Client, requests: list[InferenceRequest], seconds: float) -> None:
    chunks = np.array_split(np.arange(len(requests)), 50)
    for chunk in chunks:
        await client.submit_many([requests[i] for i in chunk])
        await asyncio.sleep(seconds / len(chunks))


async def _chaos(pipeline: Pipeline, services: Services, rng: random.Random) -> dict[str, int]:
    done = {"kills": 0, "broker_restarts": 0, "redis_restarts": 0}
    for round_ in range(KILLS):
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        victim = rng.choice(pipeline.fleet.workers)
        victim.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.process.wait)
        pipeline.fleet.restart(victim)
        done["kills"] += 1
        if round_ == 3 and services.restart_kafka is not None:
            await asyncio.to_thread(services.restart_kafka)
            done["broker_restarts"] += 1
        if round_ == 6 and services.restart_redis is not None:
            await asyncio.to_thread(services.restart_redis)
            done["redis_restarts"] += 1
    return done


def _same_answer(a: Any, b: Any) -> bool:
    if isinstance(a, ErrorResult) or isinstance(b, ErrorResult):
        return (type(a), getattr(a, "code", None)) == (type(b), getattr(b, "code", None))
    outputs_a, outputs_b = arrays_of(a.outputs), arrays_of(b.outputs)
    return a.model_version == b.model_version and all(
        np.array_equal(outputs_a[k], outputs_b[k]) for k in outputs_a
    )


STAGED = ("preprocess", "inference", "postprocess")


@pytest.mark.parametrize(
    ("mode", "stages"),
    [
        ("at_least_once", STAGED),
        ("exactly_once", STAGED),
        # The three stages in one process: one transaction from request to result.
        ("exactly_once", ("fused",)),
    ],
    ids=["at_least_once", "exactly_once", "exactly_once-fused"],
)
async def test_chaos_loses_nothing(
    services: Services,
    pipeline: Pipeline,
    client: Client,
    ledger: Ledger,
    mode: str,
    stages: tuple[str, ...],
) -> None:
    if services.restart_kafka is None or services.restart_redis is None:
        pytest.skip(f"the {services.origin} stack cannot be restarted by the test")
    build_poison_classifier(pipeline.settings.model_repository)
    env = {
        "CONVEYOR_WORKER__DELIVERY": mode,
        "CONVEYOR_WORKER__SHUTDOWN_GRACE_S": "5",
        "CONVEYOR_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "CONVEYOR_WORKER__TRANSACTION_TIMEOUT_MS": "10000",
    }
    for stage in stages:
        pipeline.fleet.start(stage, 2, extra_env=env)
    requests, poison = _requests(seed=len(mode))
    rng = random.Random(mode)

    chaos = asyncio.create_task(_chaos(pipeline, services, rng))
    await _stream(client, requests, seconds=12)
    figures = await chaos
    for worker in list(pipeline.fleet.workers):
        if not worker.alive:  # a worker may exit on its own (fenced); it comes back like a kill
            pipeline.fleet.restart(worker)
    results = {r.task_id: await client.result(r.task_id, timeout_s=240) for r in requests}

    answered_badly = {t for t, r in results.items() if isinstance(r, ErrorResult)}
    assert answered_badly == poison
    assert all(
        r.code == ErrorCode.INFERENCE_FAILED for r in results.values() if isinstance(r, ErrorResult)
    )
    states = await settled_states(ledger, list(results), timeout_s=60)
    assert sum(states.values()) == TASKS, f"tasks left in a non-final state: {states}"
    assert states[Status.FAILED] == POISON
    bootstrap = pipeline.settings.kafka.bootstrap
    answers: dict[str, list[Any]] = {}
    for record in await read_topic(bootstrap, pipeline.topics.results):
        result = decode_result(record.value or b"", record.headers)
        answers.setdefault(result.task_id, []).append(result)
    assert set(answers) == set(results)
    per_task = Counter({t: len(a) for t, a in answers.items()})
    if mode == "exactly_once":
        for topic in (*pipeline.topics.preprocessed, *pipeline.topics.inferred):
            between = await read_topic(bootstrap, topic)
            seen = Counter(t for r in between for t in decode_frame(r.value or b"").task_ids)
            assert max(seen.values(), default=1) == 1, (topic, seen.most_common(3))
        assert max(per_task.values()) == 1, per_task.most_common(3)
    else:
        assert all(_same_answer(a[0], b) for a in answers.values() for b in a[1:])
    dead = await read_topic(bootstrap, pipeline.topics.dlq)
    assert {dict(r.headers)["conveyor-task-id"].decode() for r in dead} == poison
    print(
        f"\nchaos {mode} {'+'.join(stages)}: {TASKS} tasks, {figures}, lost 0, "
        f"duplicates {sum(per_task.values()) - len(per_task)}"
    )
    assert figures["kills"] == KILLS
