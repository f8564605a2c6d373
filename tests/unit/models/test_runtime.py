"""ModelRuntime and OnnxModel on CPU: provider choice, numerics, single loading, lifecycle."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from workers.cores import available_cores
from workers.models import runtime as runtime_module
from workers.models.builders import build_tiny_classifier
from workers.models.repository import FP16_FILENAME, ModelRepository, ModelVersion
from workers.models.runtime import (
    ModelRuntime,
    OnnxModel,
    RuntimeOptions,
    choose_providers,
    model_file,
    provider_options,
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
CPU_ONLY = RuntimeOptions(providers=(CPU,), intra_op_threads=1)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root = tmp_path_factory.mktemp("runtime-repository")
    for version in (1, 2):
        build_tiny_classifier(root, version, seed=10 + version)
    config = root / "tiny-classifier" / "config.json"
    config.write_text(config.read_text().replace('"latest": 1', '"all": {}'))
    return ModelRepository(root)


def _version(repository: ModelRepository, number: int) -> ModelVersion:
    return repository.resolve("tiny-classify", number)[1]


def _features(rows: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.random.default_rng(5).standard_normal((rows, 16)).astype(np.float32)


class CountingModel(OnnxModel):
    """Counts sessions created; each load waits for `gate` so callers overlap for sure."""

    created: list[tuple[str, int]]
    gate: threading.Event

    def __init__(self, version: ModelVersion, options: RuntimeOptions) -> None:
        if not type(self).gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        type(self).created.append((version.name, version.version))
        super().__init__(version, options)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingModel]:
    class Counting(CountingModel):
        created = []
        gate = threading.Event()

    monkeypatch.setattr(runtime_module, "OnnxModel", Counting)
    return Counting


@pytest.mark.parametrize(
    ("preferred", "available", "chosen"),
    [
        ((TRT, CUDA, CPU), [CPU, CUDA, TRT], [TRT, CUDA, CPU]),
        ((TRT, CUDA, CPU), [CUDA, CPU], [CUDA, CPU]),
        ((CUDA, TRT), [TRT, CUDA, CPU], [CUDA, TRT, CPU]),
        ((TRT, CUDA, CPU), ["AzureExecutionProvider", CPU], [CPU]),
        ((CPU, CUDA), [CUDA, CPU], [CUDA, CPU]),
        (("NopeExecutionProvider",), [], [CPU]),
        ((), [CUDA, CPU], [CPU]),
    ],
)
def test_choose_providers_keeps_preference_order_and_ends_with_cpu(
    preferred: tuple[str, ...], available: list[str], chosen: list[str]
) -> None:
    assert choose_providers(preferred, available) == chosen


def test_cpu_run_matches_a_numpy_forward_pass(repository: ModelRepository) -> None:
    version = _version(repository, 2)
    weights = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(version.path)).graph.initializer
    }
    features = _features(9)
    hidden = np.maximum(features @ weights["fc1.weight"] + weights["fc1.bias"], 0.0)
    expected = hidden @ weights["fc2.weight"] + weights["fc2.bias"]

    model = OnnxModel(version, CPU_ONLY)
    outputs = model.run({"features": features})

    assert model.providers == [CPU]
    assert model.output_names == ["logits"]
    assert outputs.keys() == {"logits"}
    assert outputs["logits"].dtype == np.float32
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-5, atol=1e-5)


async def test_infer_runs_the_pinned_version(repository: ModelRepository) -> None:
    features = _features(4)

    async with ModelRuntime(CPU_ONLY) as runtime:
        first = await runtime.infer(_version(repository, 1), {"features": features})
        second = await runtime.infer(_version(repository, 2), {"features": features})
        again = await runtime.infer(_version(repository, 1), {"features": features})

    assert first["logits"].shape == second["logits"].shape == (4, 4)
    assert not np.allclose(first["logits"], second["logits"])
    np.testing.assert_array_equal(first["logits"], again["logits"])
    assert sorted(m.version.version for m in runtime.loaded()) == [1, 2]


async def test_concurrent_callers_load_a_version_once(
    repository: ModelRepository, counting: type[CountingModel]
) -> None:
    version = _version(repository, 1)

    async with ModelRuntime(CPU_ONLY, concurrent_runs=4) as runtime:
        callers = [asyncio.create_task(runtime.model(version)) for _ in range(8)]
        await asyncio.sleep(0)  # a yield, not a wait: every caller reaches the load
        assert not any(c.done() for c in callers)
        counting.gate.set()
        models = await asyncio.gather(*callers)
        later = await runtime.model(version)
        other = await runtime.model(_version(repository, 2))

    assert counting.created == [("tiny-classifier", 1), ("tiny-classifier", 2)]
    assert all(m is models[0] for m in [*models, later])
    assert other is not later
    assert isinstance(models[0], CountingModel)


async def test_a_failed_load_fails_every_caller_and_is_retried(
    repository: ModelRepository, counting: type[CountingModel], tmp_path: Path
) -> None:
    real = _version(repository, 1)
    broken_dir = tmp_path / "tiny-classifier" / "1"
    broken_dir.mkdir(parents=True)
    (broken_dir / "model.onnx").write_bytes(b"not an onnx model")
    broken = ModelVersion(
        dataclasses.replace(real.config, directory=tmp_path / "tiny-classifier"), 1
    )
    counting.gate.set()

    async with ModelRuntime(CPU_ONLY) as runtime:
        results = await asyncio.gather(
            runtime.model(broken), runtime.model(broken), return_exceptions=True
        )
        (broken_dir / "model.onnx").write_bytes(real.path.read_bytes())
        repaired = await runtime.model(broken)

    assert len(results) == 2
    assert all(isinstance(r, Exception) for r in results)
    assert results[0] is results[1]  # one load, one failure shared by both callers
    assert counting.created == [("tiny-classifier", 1), ("tiny-classifier", 1)]
    assert repaired.run({"features": _features(2)})["logits"].shape == (2, 4)


async def test_infer_before_start_raises(repository: ModelRepository) -> None:
    runtime = ModelRuntime(CPU_ONLY)

    with pytest.raises(RuntimeError, match="not started"):
        await runtime.infer(_version(repository, 1), {"features": _features(1)})


async def test_infer_after_stop_raises_even_with_a_loaded_model(
    repository: ModelRepository,
) -> None:
    version = _version(repository, 1)
    runtime = ModelRuntime(CPU_ONLY)
    await runtime.start()
    await runtime.model(version)
    await runtime.stop()

    with pytest.raises(RuntimeError, match="not started"):
        await runtime.infer(version, {"features": _features(1)})


async def test_double_start_is_an_error_and_stop_is_idempotent() -> None:
    runtime = ModelRuntime(CPU_ONLY)
    await runtime.stop()
    await runtime.start()

    with pytest.raises(RuntimeError, match="already started"):
        await runtime.start()

    await runtime.stop()
    await runtime.stop()
    await runtime.start()  # a stopped runtime may start again
    await runtime.stop()


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_model_threads_run_at_a_lower_cpu_priority_than_the_event_loop() -> None:
    loop_nice = _own_nice()
    options = dataclasses.replace(CPU_ONLY, compute_nice=3)
    async with ModelRuntime(options) as runtime:
        assert await runtime.off_loop(_own_nice) == min(19, loop_nice + 3)
    assert _own_nice() == loop_nice  # the event loop's thread keeps its priority


async def test_compute_nice_zero_leaves_priority_alone() -> None:
    options = dataclasses.replace(CPU_ONLY, compute_nice=0)
    async with ModelRuntime(options) as runtime:
        assert await runtime.off_loop(_own_nice) == _own_nice()


class _NiceProbe:
    """Stands in for an OnnxModel: a run reports the nice value of the thread it ran on,
    and the first run with `hold` set waits for `release` (to keep a thread busy)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.holding = threading.Event()

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        if "hold" in feeds:
            self.holding.set()
            self.release.wait(5)
        return {"nice": np.array(_own_nice())}

    def runs_inline(self, feeds: dict[str, Any]) -> bool:
        return False

    def timed(self, feeds: dict[str, Any]) -> tuple[dict[str, Any], float]:
        return self.run(feeds), 0.0


async def test_express_runs_keep_the_loop_priority_while_general_runs_are_lowered() -> None:
    loop_nice = _own_nice()
    options = dataclasses.replace(CPU_ONLY, compute_nice=3)
    probe = _NiceProbe()
    async with ModelRuntime(options, concurrent_runs=1, express_runs=1) as runtime:
        model: Any = probe
        bulk = asyncio.ensure_future(runtime.timed_run(model, {"hold": np.array(True)}, priority=2))
        assert await asyncio.to_thread(probe.holding.wait, 5)
        # The only general thread is busy with bulk: the realtime run starts on the express one.
        realtime, _ = await runtime.timed_run(model, {}, priority=0)
        assert int(realtime["nice"]) == loop_nice
        probe.release.set()
        lowered, _ = await bulk
        assert int(lowered["nice"]) == min(19, loop_nice + 3)


def test_runtime_from_settings_shares_the_cores_among_general_runs() -> None:
    from workers.settings import RuntimeSettings

    settings = RuntimeSettings(concurrent_runs=2, express_runs=1)
    assert runtime_module.RuntimeOptions.from_settings(settings, cores=2).intra_op_threads == 1
    assert runtime_module.RuntimeOptions.from_settings(settings, cores=16).intra_op_threads == 8
    pinned = RuntimeSettings(intra_op_threads=3)
    assert runtime_module.RuntimeOptions.from_settings(pinned, cores=16).intra_op_threads == 3
    assert available_cores() >= 1


@pytest.fixture
def with_fp16(tmp_path: Path) -> ModelVersion:
    """The tiny classifier with a float16 variant beside its model (as `--precision fp16`
    writes one for MiniLM)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    build_tiny_classifier(tmp_path, 1, seed=3)
    version = ModelRepository(tmp_path).resolve("tiny-classify", 1)[1]
    half = convert_float_to_float16(onnx.load(str(version.path)), keep_io_types=True)
    onnx.save(half, str(version.asset(FP16_FILENAME)))
    return version


def test_precision_serves_the_fp16_variant_on_device_providers_or_when_asked(
    with_fp16: ModelVersion, repository: ModelRepository
) -> None:
    fp16, fp32 = with_fp16.asset(FP16_FILENAME), with_fp16.path
    assert model_file(with_fp16, CPU, "auto") == fp32  # float16 on the CPU is slower
    assert model_file(with_fp16, CUDA, "auto") == fp16
    assert model_file(with_fp16, TRT, "auto") == fp16
    assert model_file(with_fp16, CPU, "fp16") == fp16
    assert model_file(with_fp16, CUDA, "fp32") == fp32
    without = _version(repository, 1)
    assert model_file(without, CUDA, "fp16") == without.path  # no variant: float32


def test_a_session_asked_for_fp16_serves_the_variant_with_float32_outputs(
    with_fp16: ModelVersion,
) -> None:
    features = _features(7)
    full = OnnxModel(with_fp16, CPU_ONLY)
    half = OnnxModel(with_fp16, dataclasses.replace(CPU_ONLY, precision="fp16"))
    assert (full.path.name, half.path.name) == ("model.onnx", FP16_FILENAME)
    expected, got = full.run({"features": features}), half.run({"features": features})
    assert got["logits"].dtype == np.float32
    assert not np.array_equal(got["logits"], expected["logits"])  # really float16 arithmetic
    np.testing.assert_allclose(got["logits"], expected["logits"], rtol=2e-2, atol=2e-2)


def test_device_providers_get_their_device_and_tensorrt_keeps_its_engines(
    with_fp16: ModelVersion,
) -> None:
    options = dataclasses.replace(CPU_ONLY, device_id=1)
    assert provider_options(CUDA, with_fp16, options) == {"device_id": "1"}
    trt = provider_options(TRT, with_fp16, options)
    assert trt["device_id"] == "1"
    assert trt["trt_engine_cache_enable"] == "True"
    assert Path(trt["trt_engine_cache_path"]) == with_fp16.asset("trt-cache")
    assert with_fp16.asset("trt-cache").is_dir()
    assert trt["trt_fp16_enable"] == "True"
    fp32_only = dataclasses.replace(options, precision="fp32")
    assert provider_options(TRT, with_fp16, fp32_only)["trt_fp16_enable"] == "False"
    assert provider_options(CPU, with_fp16, options) == {}


class _ThreadRecordingModel(OnnxModel):
    """Records the thread each run happened on."""

    def __init__(self, version: ModelVersion, options: RuntimeOptions) -> None:
        super().__init__(version, options)
        self.threads: list[str] = []

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        self.threads.append(threading.current_thread().name)
        return super().run(feeds)


async def test_runs_shorter_than_a_thread_hand_off_run_on_the_event_loop(
    repository: ModelRepository,
) -> None:
    """`inline_run_max_s`: once a run was timed, a batch expected to take less runs where it
    is awaited; a larger one (its rows times the time per row) still goes to a thread."""
    options = dataclasses.replace(CPU_ONLY, inline_run_max_s=0.05)
    model = _ThreadRecordingModel(_version(repository, 1), options)
    assert not model.runs_inline({"features": _features(1)})  # never timed yet
    async with ModelRuntime(options) as runtime:
        first, _ = await runtime.timed_run(model, {"features": _features(1)})
        assert model.runs_inline({"features": _features(1)})
        second, seconds = await runtime.timed_run(model, {"features": _features(1)})
        assert not model.runs_inline({"features": _features(10**7)})  # too many rows
    loop_thread = threading.current_thread().name
    assert model.threads[0] != loop_thread
    assert model.threads[1] == loop_thread
    np.testing.assert_array_equal(first["logits"], second["logits"])
    assert seconds > 0


def test_inline_runs_are_off_at_zero(repository: ModelRepository) -> None:
    model = OnnxModel(_version(repository, 1), CPU_ONLY)  # inline_run_max_s 0
    model.timed({"features": _features(1)})
    assert not model.runs_inline({"features": _features(1)})
