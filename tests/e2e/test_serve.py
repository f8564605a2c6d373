"""`conveyor serve` against the real broker and Redis: processes per stage carry tasks, one
that dies is started again, SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from schemas import InferenceRequest, InferenceResult
from tests.e2e.conftest import TINY_FEATURES, Pipeline
from workers.client import Client
from workers.serve import HostPlan, thin_topics

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False


async def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.2)


def _assigned(log_dir: Path) -> int:
    return sum(": assigned [" in p.read_text(errors="replace") for p in log_dir.glob("*.log"))


@contextlib.asynccontextmanager
async def _serving(
    pipeline: Pipeline, log_dir: Path, *args: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`conveyor serve` with the pipeline's settings, CPU only, its output kept; killed on
    the way out if a test left it running."""
    serve = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "workers", "serve", "--gpus", "none", "--log-dir", str(log_dir)),
        *args,
        env={**os.environ, **pipeline.fleet.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield serve
    finally:
        if serve.returncode is None:
            serve.kill()
            await serve.wait()


async def _stopped(serve: asyncio.subprocess.Process) -> str:
    """SIGTERM, then what serve printed once it exited (with 0)."""
    serve.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(serve.communicate(), timeout=90)
    text = output.decode(errors="replace")
    assert serve.returncode == 0, text
    return text


async def _all_answered(client: Client, count: int, tenants: tuple[str, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    requests = [
        InferenceRequest.new(
            tenant=tenants[i % len(tenants)],
            pipeline="tiny-classify",
            inputs={"features": rng.standard_normal((1, TINY_FEATURES)).astype(np.float32)},
        )
        for i in range(count)
    ]
    await client.submit_many(requests)
    results = [await client.result(r.task_id, timeout_s=120) for r in requests]
    assert all(isinstance(r, InferenceResult) for r in results)


async def test_serve_runs_processes_per_stage_restarts_the_dead_and_stops_on_sigterm(
    pipeline: Pipeline, client: Client, tmp_path: Path
) -> None:
    log_dir = tmp_path / "serve-logs"
    layout = ("--preprocess", "2", "--inference", "1", "--postprocess", "1")
    async with _serving(pipeline, log_dir, *layout) as serve:
        await _wait_for(lambda: _assigned(log_dir) >= 4, "4 workers holding partitions")
        workers = _children(serve.pid)
        assert len(workers) == 4
        names = sorted(p.stem.split("-", 1)[1] for p in log_dir.glob("*.log"))
        assert names == ["inference-0", "postprocess-0", "preprocess-0", "preprocess-1"]

        os.kill(workers[0], signal.SIGKILL)
        await _wait_for(
            lambda: len([p for p in _children(serve.pid) if p not in workers]) == 1,
            "the killed worker started again",
        )
        await _all_answered(client, 60, ("acme", "globex"), seed=0)

        running = _children(serve.pid)
        text = await _stopped(serve)
    assert "serving: 2 preprocess, 1 inference (CPU), 1 postprocess" in text
    assert "stopped (1 restarts)" in text
    assert not [pid for pid in running if _alive(pid)], "a worker outlived serve"


async def test_serve_fused_runs_fused_workers(
    pipeline: Pipeline, client: Client, tmp_path: Path
) -> None:
    log_dir = tmp_path / "serve-logs"
    async with _serving(pipeline, log_dir, "--fused", "2") as serve:
        await _wait_for(lambda: _assigned(log_dir) >= 2, "2 fused workers holding partitions")
        names = sorted(p.stem.split("-", 1)[1] for p in log_dir.glob("*.log"))
        assert names == ["fused-0", "fused-1"]
        await _all_answered(client, 30, ("acme",), seed=1)
        text = await _stopped(serve)
    assert "serving: 2 fused (CPU)" in text


async def test_topics_with_fewer_partitions_than_their_processes_are_named(
    pipeline: Pipeline,
) -> None:
    plan = HostPlan(cores=16, preprocess=5, inference=2, postprocess=4)  # topics have 4
    found = await thin_topics(pipeline.settings, plan)
    assert found == [
        f"{pipeline.topics.requests}: 4 partitions for 5 preprocess processes "
        "(add partitions: kafka-topics --alter --partitions N)"
    ]
