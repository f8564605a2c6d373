"""A stopping worker does not wait on a broker that stopped answering: SIGSTOP the real
broker, SIGTERM a fused worker, and it exits within its bounded drain (grace period, last
commit, clients' close), not minutes later."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from schemas import InferenceRequest, InferenceResult
from workers.client import Client
from workers.fleet import FUSED, WorkerFleet
from workers.names import Topics
from workers.service import ensure_pipeline_topics
from workers.settings import load_settings
from workers.stack import NativeStack, StackConfig

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GRACE_S = 2
BOUND_S = 45
"""The drain's waits: intake and batches within the grace period each, the last commit
within it, each Kafka client's close within 10 s; with room for a loaded machine."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _answered(bootstrap: str, count: int) -> None:
    async with Client(bootstrap, Topics("frozen")) as client:
        features = np.zeros((1, 16), dtype=np.float32)
        requests = [
            InferenceRequest.new(
                tenant="acme", pipeline="tiny-classify", inputs={"features": features}
            )
            for _ in range(count)
        ]
        for task_id in await client.submit_many(requests):
            assert isinstance(await client.result(task_id, timeout_s=60), InferenceResult)


def test_a_worker_stops_in_bounded_time_when_the_broker_is_frozen(
    model_repository: Path, tmp_path: Path
) -> None:
    config = StackConfig(
        state_dir=tmp_path / "stack",
        kafka_port=_free_port(),
        kafka_controller_port=_free_port(),
        redis_port=_free_port(),
    )
    stack = NativeStack(config)
    stack.up()
    fleet = WorkerFleet(
        {
            "KAFKA_BOOTSTRAP": config.kafka_bootstrap,
            "REDIS_URL": config.redis_url,
            "CONVEYOR_KAFKA__TOPIC_PREFIX": "frozen",
            "CONVEYOR_REDIS__KEY_PREFIX": "frozen:",
            "CONVEYOR_MODEL_REPOSITORY": str(model_repository),
            "CONVEYOR_WORKER__SHUTDOWN_GRACE_S": str(GRACE_S),
            "CONVEYOR_LOG_LEVEL": "INFO",
        },
        tmp_path / "logs",
    )
    try:
        settings = load_settings(
            kafka={"bootstrap": config.kafka_bootstrap, "topic_prefix": "frozen"}
        )
        asyncio.run(ensure_pipeline_topics(settings))
        (worker,) = fleet.start(FUSED, 1)
        fleet.wait_ready(timeout_s=120)
        asyncio.run(_answered(config.kafka_bootstrap, 20))

        kafka = next(s.pid for s in stack.status() if s.name == "kafka" and s.pid is not None)
        os.kill(kafka, signal.SIGSTOP)
        try:
            started = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)
            try:
                worker.process.wait(BOUND_S + 30)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            took_s = time.monotonic() - started
        finally:
            os.kill(kafka, signal.SIGCONT)
        assert took_s < BOUND_S, f"stopped after {took_s:.0f} s:\n{worker.log()[-3000:]}"
    finally:
        fleet.stop_all(timeout_s=30)
        stack.down()
