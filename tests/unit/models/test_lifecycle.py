"""Hot swaps on real ONNX Runtime sessions: check, warm up, switch, retire, roll back."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from workers.models.builders import build_tiny_classifier
from workers.models.builders.faulty import build_faulty_tiny
from workers.models.events import ModelEvents
from workers.models.lifecycle import ModelLifecycle
from workers.models.repository import ModelRepository
from workers.models.runtime import ModelRuntime, RuntimeOptions
from workers.models.shadow import ShadowRunner, compare
from workers.models.watcher import RepositoryWatcher
from workers.observability.metrics import WorkerMetrics
from workers.settings import ModelSettings

MODEL = "tiny-classifier"
CPU_ONLY = RuntimeOptions(providers=("CPUExecutionProvider",), intra_op_threads=1)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    build_tiny_classifier(tmp_path, 1, seed=0)
    return tmp_path


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics("inference")


@pytest.fixture
async def runtime() -> AsyncIterator[ModelRuntime]:
    async with ModelRuntime(CPU_ONLY) as r:
        yield r


async def started(
    repository: Path, runtime: ModelRuntime, metrics: WorkerMetrics, **settings: object
) -> ModelLifecycle:
    lifecycle = ModelLifecycle(
        ModelRepository(repository),
        runtime,
        ModelSettings.model_validate(settings),
        ModelEvents(metrics, "w1"),
    )
    await lifecycle.start()
    return lifecycle


def events(lifecycle: ModelLifecycle) -> list[tuple[str, str]]:
    return [(e["event"], e["version"]) for e in lifecycle.events.recent]


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_new_version_is_checked_warmed_switched_and_the_old_released(
    repository: Path, runtime: ModelRuntime, metrics: WorkerMetrics
) -> None:
    lifecycle = await started(repository, runtime, metrics)
    build_tiny_classifier(repository, 2, seed=1)

    assert await lifecycle.load(MODEL, 2, source="folder")

    assert lifecycle.table(MODEL).current == 2
    assert lifecycle.live_versions(MODEL) == {2}
    assert events(lifecycle)[-3:] == [("loaded", "2"), ("switched", "2"), ("retired", "1")]
    assert sample(metrics, "conveyor_model_swaps_total", model=MODEL, source="folder") == 1
    assert sample(metrics, "conveyor_model_serving_version", model=MODEL, role="current") == 2


async def test_a_running_batch_keeps_its_version_until_it_ends(
    repository: Path, runtime: ModelRuntime, metrics: WorkerMetrics
) -> None:
    lifecycle = await started(repository, runtime, metrics)
    lease = lifecycle.acquire(MODEL, lifecycle.route(MODEL, "t1", None))
    build_tiny_classifier(repository, 2, seed=1)

    await lifecycle.load(MODEL, 2)

    assert lease.retired
    assert lease.model is not None, "the running batch keeps its session"
    assert lifecycle.route(MODEL, "t2", None) == 2
    lifecycle.release(lease)
    assert lease.model is None


async def test_an_incompatible_model_is_refused_naming_the_mismatch(
    repository: Path, runtime: ModelRuntime, metrics: WorkerMetrics
) -> None:
    lifecycle = await started(repository, runtime, metrics)
    build_faulty_tiny(repository, 2, "incompatible")

    assert not await lifecycle.load(MODEL, 2, source="folder")

    assert lifecycle.table(MODEL).current == 1
    refused = lifecycle.events.recent[-1]
    assert (refused["event"], refused["reason"]) == ("refused", "signature")
    assert "input 'features': dim 1 is 8, contract says 16" in refused["message"]
    assert sample(metrics, "conveyor_model_load_failures_total", model=MODEL, reason="signature")


async def test_a_model_that_fails_warm_up_never_serves(
    repository: Path, runtime: ModelRuntime, metrics: WorkerMetrics
) -> None:
    lifecycle = await started(repository, runtime, metrics)
    build_faulty_tiny(repository, 2, "bad-rows")

    assert not await lifecycle.load(MODEL, 2)

    assert lifecycle.live_versions(MODEL) == {1}
    refused = lifecycle.events.recent[-1]
    assert refused["reason"] == "warmup"
    assert "output 'logits' has shape (1, 4) for 8 input rows" in refused["message"]


async def test_rollback_returns_to_the_previous_version(
    repository: Path, runtime: ModelRuntime, metrics: WorkerMetrics
) -> None:
    lifecycle = await started(repository, runtime, metrics)
    build_tiny_classifier(repository, 2, seed=1)
    await lifecycle.load(MODEL, 2)

    assert await lifecycle.rollback(MODEL)

    assert lifecycle.table(MODEL).current == 1
    assert lifecycle.live_versions(MODEL) == {1}
    assert not await lifecycle.rollback(MODEL), "nothing earlier than version 1"


async def test_the_current_version_cannot_be_unloaded(
    repository: Path, runtime: ModelRuntime, metrics: WorkerMetrics
) -> None:
    lifecycle = await started(repository, runtime, metrics)

    assert not await lifecycle.unload(MODEL, 1)
    assert lifecycle.events.recent[-1]["reason"] == "serving"


async def test_a_canary_takes_its_share_and_a_pin_is_honoured(
    repository: Path, runtime: ModelRuntime, metrics: WorkerMetrics
) -> None:
    build_tiny_classifier(repository, 2, seed=1)
    config = repository / MODEL / "config.json"
    config.write_text(config.read_text().replace('"latest": 1', '"all": {}'))
    lifecycle = await started(repository, runtime, metrics)  # serves 1 and 2; 2 is current
    build_tiny_classifier(repository, 3, seed=2)

    assert await lifecycle.load(MODEL, 3, "canary", 0.25)

    routes = [lifecycle.route(MODEL, f"t{i}", None) for i in range(4000)]
    assert abs(routes.count(3) / 4000 - 0.25) < 0.03
    assert set(routes) == {2, 3}
    assert lifecycle.route(MODEL, "pinned", 1) == 1
    assert lifecycle.route(MODEL, "pinned", 2) == 2
    await lifecycle.load(MODEL, 3)  # promote the canary
    assert {lifecycle.route(MODEL, f"t{i}", None) for i in range(100)} == {3}


async def test_over_the_memory_budget_the_swap_unloads_first_and_pauses_intake(
    repository: Path, runtime: ModelRuntime, metrics: WorkerMetrics
) -> None:
    size = (repository / MODEL / "1" / "model.onnx").stat().st_size
    lifecycle = await started(
        repository, runtime, metrics, memory_budget_bytes=int(size * 1.6), memory_overhead_ratio=1
    )
    lease = lifecycle.acquire(MODEL, 1)
    build_tiny_classifier(repository, 2, seed=1)

    swap = asyncio.create_task(lifecycle.load(MODEL, 2))
    for _ in range(10_000):  # let the swap run up to its pause (it reads the graph first)
        if lifecycle._open is not None and not lifecycle._open.is_set():
            break
        await asyncio.sleep(0)
    intake = asyncio.create_task(lifecycle.wait_open())
    await asyncio.sleep(0)
    assert not intake.done(), "intake waits while the old version drains"
    lifecycle.release(lease)

    assert await swap
    await intake
    assert lifecycle.live_versions(MODEL) == {2}
    assert sample(metrics, "conveyor_model_swap_pause_seconds_count", model=MODEL) == 1


async def test_the_watcher_loads_each_new_folder_once(
    repository: Path, runtime: ModelRuntime, metrics: WorkerMetrics
) -> None:
    lifecycle = await started(repository, runtime, metrics)
    async with RepositoryWatcher(lifecycle, interval_s=0, canary_fraction=0) as watcher:
        build_faulty_tiny(repository, 2, "incompatible")
        build_tiny_classifier(repository, 3, seed=1)

        assert await watcher.poll() == [(MODEL, 2), (MODEL, 3)]
        assert await watcher.poll() == []

    assert lifecycle.table(MODEL).current == 3


async def test_shadow_outputs_are_compared_and_recorded(
    repository: Path, runtime: ModelRuntime, metrics: WorkerMetrics
) -> None:
    lifecycle = await started(repository, runtime, metrics)
    build_tiny_classifier(repository, 2, seed=1)
    await lifecycle.load(MODEL, 2, "shadow", 1.0)
    feeds = {"features": np.ones((4, 16), np.float32)}
    lease = lifecycle.acquire(MODEL, 1)
    assert lease.model is not None
    outputs = await runtime.run(lease.model, feeds)
    lifecycle.release(lease)

    async with ShadowRunner(lifecycle, runtime, metrics, random.Random(0)) as shadow:
        assert shadow.offer(MODEL, 1, feeds, outputs)
        await shadow.wait()

    count = sample(metrics, "conveyor_shadow_max_abs_diff_count", model=MODEL, version="2")
    assert count == 1
    assert sample(metrics, "conveyor_shadow_max_abs_diff_sum", model=MODEL, version="2") > 0


def test_compare_measures_distance() -> None:
    same = compare({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.0])})
    other = compare({"y": np.array([1.0, 0.0])}, {"y": np.array([0.0, 3.0])})

    assert same.max_abs_diff == 0.0
    assert same.cosine == pytest.approx(1.0)
    assert (other.max_abs_diff, other.cosine) == (3.0, 0.0)
