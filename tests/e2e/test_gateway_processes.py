"""`conveyor gateway --processes 2` in front of a real fused worker, broker and Redis: both
processes answer on the one pair of ports, /metrics counts them together, one that dies is
started again, and SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import read_topic
from workers.fleet import FUSED
from workers.gateway.keys import ApiKeys
from workers.gateway.launcher import GatewayProcess, gateway_env, ready_instances, running_gateway
from workers.ledger.connection import redis_client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INSTANCES = ("gw-test-0", "gw-test-1")


async def _infer_on_fresh_connections(gateway: GatewayProcess, key: str, count: int) -> list[int]:
    """`count` requests, each on a connection of its own (the kernel picks a process per
    connection); their statuses."""
    url = f"{gateway.http_url}/v2/models/tiny-classify/infer"
    rows = np.random.default_rng(0).standard_normal((count, 16)).astype(np.float32)
    statuses = []
    for row in rows:
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16]}]}
        body["inputs"][0]["data"] = row.tolist()
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as r,
        ):
            await r.read()
            statuses.append(r.status)
    return statuses


async def _answered_by(pipeline: Pipeline, instance: str) -> int:
    topic = pipeline.topics.gateway_replies(instance)
    return len(await read_topic(pipeline.settings.kafka.bootstrap, topic))


def _until_ready_lines(gateway: GatewayProcess, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while gateway.log().count("gateway ready:") < count:
        assert time.monotonic() < deadline, gateway.log()[-3000:]
        time.sleep(0.1)


async def test_processes_share_the_ports_count_together_and_restart(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    redis = redis_client(pipeline.settings.redis)
    try:
        key = await ApiKeys(redis, pipeline.keys).add("tenant-a")
    finally:
        await redis.aclose()
    pipeline.fleet.start(FUSED, 1)
    pipeline.fleet.wait_ready()
    log_path = tmp_path / "gateway.log"
    env = gateway_env(pipeline.settings, CONVEYOR_GATEWAY__PROCESSES="2")
    with running_gateway(env, log_path) as gateway:
        assert set(ready_instances(gateway.log())) == set(INSTANCES)
        assert await _infer_on_fresh_connections(gateway, key, 40) == [200] * 40
        # Each process published with its own reply topic and was answered there.
        answered = {i: await _answered_by(pipeline, i) for i in INSTANCES}
        assert sum(answered.values()) == 40
        assert min(answered.values()) > 0, answered
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{gateway.http_url}/metrics") as r,
        ):
            metrics = await r.text()
        route = "/v2/models/{name}/infer"
        counted = f'conveyor_gateway_requests_total{{protocol="http",route="{route}",status="200"}}'
        assert f"{counted} 40.0" in metrics  # whichever process answered the scrape

        # One process dies: the supervisor starts it again and the ports keep answering.
        victim = gateway.children()[0]
        os.kill(victim, signal.SIGKILL)
        _until_ready_lines(gateway, 3)
        assert victim not in gateway.children()
        assert len(gateway.children()) == 2
        assert await _infer_on_fresh_connections(gateway, key, 10) == [200] * 10

        gateway.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert gateway.process.wait(60) == 0
        assert time.monotonic() - started < 30
    assert "exited (code -9); starting again" in log_path.read_text()
