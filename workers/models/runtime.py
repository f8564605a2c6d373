"""ONNX Runtime sessions: provider choice with fallback, session options, off-loop execution.

`ModelRuntime.run` runs a batch on a model thread (ONNX Runtime releases the GIL), so the
event loop keeps polling Kafka and producing while the model runs; batches waiting for a
thread go highest lane first (`executor`). On CUDA and TensorRT the
batch goes through I/O binding, which copies inputs to the device once and lets the session
write outputs straight into host buffers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from workers.component import Component
from workers.cores import available_cores
from workers.models.cuda_wait import CudaWait, set_cuda_wait
from workers.models.executor import PriorityExecutor
from workers.models.ort_build import log_build
from workers.models.repository import FP16_FILENAME, ModelVersion

if TYPE_CHECKING:
    from workers.settings import RuntimeSettings

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
T = TypeVar("T")
GraphOptimization = Literal["disable", "basic", "extended", "all"]
Precision = Literal["auto", "fp32", "fp16"]
_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_DEVICE_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
_CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    providers: tuple[str, ...] = (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    """Preference order; providers this build lacks are skipped, CPU always closes the list."""
    intra_op_threads: int = 0
    """Threads inside one operator; 0 lets ONNX Runtime use every core."""
    inter_op_threads: int = 1
    graph_optimization: GraphOptimization = "all"
    precision: Precision = "auto"
    """Which file of a version with a float16 variant is served (RuntimeSettings.precision)."""
    io_binding: bool = False
    """Use I/O binding on device providers (see RuntimeSettings.io_binding)."""
    device_id: int = 0
    allow_spinning: bool = False
    """Intra-op threads busy-wait for work (ORT's default is on; see RuntimeSettings)."""
    cuda_wait: CudaWait = "block"
    """How a thread waits for the GPU at the end of a run (RuntimeSettings.cuda_wait)."""
    compute_nice: int = 10
    """Nice value added to the general model threads and the loader (see RuntimeSettings)."""
    inline_run_max_s: float = 0.0
    """Runs expected to be this short run on the event loop (RuntimeSettings.inline_run_max_ms)."""

    @classmethod
    def from_settings(cls, settings: RuntimeSettings, cores: int | None = None) -> RuntimeOptions:
        """The options `settings` give on `cores` (default: this process's)."""
        return cls(
            providers=settings.providers,
            intra_op_threads=settings.threads_per_run(cores or available_cores()),
            inter_op_threads=settings.inter_op_threads,
            graph_optimization=settings.graph_optimization,
            precision=settings.precision,
            io_binding=settings.io_binding,
            device_id=settings.device_id,
            allow_spinning=settings.allow_spinning,
            cuda_wait=settings.cuda_wait,
            compute_nice=settings.compute_nice,
            inline_run_max_s=settings.inline_run_max_ms / 1000,
        )


def choose_providers(preferred: tuple[str, ...], available: list[str]) -> list[str]:
    """The preferred providers this build has, in order, always ending with CPU."""
    chosen = [p for p in preferred if p in available and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


def model_file(version: ModelVersion, provider: str, precision: Precision) -> Path:
    """The version's float16 variant where `precision` asks for it and it exists, else its
    float32 model. auto serves float16 on device providers only: ONNX Runtime's CPU kernels
    mostly lack float16 and insert casts, which makes it slower there, not faster."""
    variant = version.asset(FP16_FILENAME)
    if precision == "fp32" or not variant.exists():
        return version.path
    if precision == "fp16" or provider in _DEVICE_PROVIDERS:
        return variant
    return version.path


def provider_options(
    provider: str, version: ModelVersion, options: RuntimeOptions
) -> dict[str, str]:
    """Each device provider on `options.device_id`; TensorRT keeps the engines it builds (minutes
    for a transformer) in the version's folder, where a restart finds them, and builds them in
    float16 unless precision is fp32."""
    if provider == "CUDAExecutionProvider":
        return {"device_id": str(options.device_id)}
    if provider == "TensorrtExecutionProvider":
        return {
            "device_id": str(options.device_id),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(_engine_cache(version)),
            "trt_fp16_enable": "False" if options.precision == "fp32" else "True",
        }
    return {}


def _engine_cache(version: ModelVersion) -> Path:
    """`<version>/trt-cache`, or one under the temp folder where the repository is read-only
    (an image's repository belongs to root; the worker runs as another user)."""
    cache = version.asset("trt-cache")
    try:
        cache.mkdir(exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / "conveyor-trt" / version.name / str(version.version)
        cache.mkdir(parents=True, exist_ok=True)
    return cache


class OnnxModel:
    """One loaded model version."""

    def __init__(self, version: ModelVersion, options: RuntimeOptions) -> None:
        self.version = version
        self.options = options
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.graph_optimization_level = _OPTIMIZATION[options.graph_optimization]
        spinning = "1" if options.allow_spinning else "0"
        session_options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session_options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        providers = choose_providers(options.providers, ort.get_available_providers())
        if providers[0] in _DEVICE_PROVIDERS:
            set_cuda_wait(options.cuda_wait, options.device_id)
        self.path = model_file(version, providers[0], options.precision)
        self.session = ort.InferenceSession(
            str(self.path),
            sess_options=session_options,
            providers=[(p, provider_options(p, version, options)) for p in providers],
        )
        self.providers: list[str] = self.session.get_providers()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._bind = options.io_binding and self.providers[0] in _DEVICE_PROVIDERS
        self._inline_max_s = options.inline_run_max_s if self.providers[0] == _CPU else 0.0
        self._s_per_row: float | None = None
        """Recent run time per batch row (moving average); None until a run was timed."""
        log.info(
            "loaded %s v%d from %s on %s (io_binding=%s)",
            version.name,
            version.version,
            self.path.name,
            self.providers,
            self._bind,
        )

    def runs_inline(self, feeds: dict[str, Array]) -> bool:
        """Whether a run of `feeds` is expected to be shorter than a thread hand-off is worth
        (`inline_run_max_s`; never on a device provider, never before a run was timed)."""
        if not self._inline_max_s or self._s_per_row is None:
            return False
        rows = len(next(iter(feeds.values()), ()))
        return self._s_per_row * max(1, rows) <= self._inline_max_s

    def timed(self, feeds: dict[str, Array]) -> tuple[dict[str, Array], float]:
        """`run`, and the seconds it took, which the next `runs_inline` goes by."""
        started = time.perf_counter()
        outputs = self.run(feeds)
        seconds = time.perf_counter() - started
        per_row = seconds / max(1, len(next(iter(feeds.values()), ())))
        last = self._s_per_row
        self._s_per_row = per_row if last is None else 0.8 * last + 0.2 * per_row
        return outputs, seconds

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Run one batch (blocking: call it from a worker thread)."""
        if self._bind:
            return self._run_bound(feeds)
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs, strict=True))

    def _run_bound(self, feeds: dict[str, Array]) -> dict[str, Array]:
        binding = self.session.io_binding()
        device = "cuda"
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(array), device, self.options.device_id
            )
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
        return dict(zip(self.output_names, outputs, strict=True))


class ModelRuntime(Component):
    """Loads model versions on first use and runs batches off the event loop."""

    def __init__(
        self, options: RuntimeOptions, concurrent_runs: int = 1, express_runs: int = 0
    ) -> None:
        self.options = options
        self._models: dict[tuple[str, int], OnnxModel] = {}
        self._loading: dict[tuple[str, int], asyncio.Future[OnnxModel]] = {}
        self._executor: PriorityExecutor | None = None
        self._loader: ThreadPoolExecutor | None = None
        self._concurrent_runs = concurrent_runs
        self._express_runs = express_runs

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> ModelRuntime:
        return cls(
            RuntimeOptions.from_settings(settings),
            settings.concurrent_runs,
            settings.express_runs,
        )

    async def start(self) -> None:
        if self._executor is not None:
            raise RuntimeError("ModelRuntime already started")
        log_build(self.options.providers)  # one line when CUDA was asked for and is missing
        nice = self.options.compute_nice
        # Express threads (top-lane runs only) keep the event loop's priority; the general
        # ones and the loader run at `compute_nice`. Threads a session makes inherit their
        # maker's nice value, and sessions are made on the loader, so ONNX Runtime's own
        # pool (intra_op_threads > 1) runs at `compute_nice` too.
        self._executor = PriorityExecutor(
            self._concurrent_runs,
            "onnx",
            express=self._express_runs,
            initializer=lambda express: _lower_priority(0 if express else nice),
        )
        # Loads (hot swaps) get a thread of their own: a slow load never queues a batch.
        self._loader = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="onnx-load",
            initializer=_lower_priority,
            initargs=(nice,),
        )

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._loader is not None:
            self._loader.shutdown(wait=True)
            self._loader = None

    def loaded(self) -> list[OnnxModel]:
        return list(self._models.values())

    async def model(self, version: ModelVersion) -> OnnxModel:
        """The loaded session for `version`, loading it once even under concurrent callers."""
        key = (version.name, version.version)
        if key in self._models:
            return self._models[key]
        if key not in self._loading:
            self._loading[key] = asyncio.get_running_loop().run_in_executor(
                self._require_loader(), OnnxModel, version, self.options
            )
        try:
            model = await asyncio.shield(self._loading[key])
        finally:
            if self._loading.get(key) is not None and self._loading[key].done():
                self._loading.pop(key, None)
        self._models[key] = model
        return model

    async def load(self, version: ModelVersion) -> OnnxModel:
        """A fresh session for `version`, made on the loader thread; not cached here (the
        model lifecycle owns it and drops it when the version retires)."""
        return await self.off_loop(OnnxModel, version, self.options)

    async def off_loop(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking load-side work (reading a graph, a session) on the loader thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._require_loader(), function, *args
        )

    async def run(
        self, model: OnnxModel, feeds: dict[str, Array], *, priority: int = 0
    ) -> dict[str, Array]:
        """Run one batch on a given session, off the event loop (see `timed_run`)."""
        outputs, _ = await self.timed_run(model, feeds, priority=priority)
        return outputs

    async def timed_run(
        self, model: OnnxModel, feeds: dict[str, Array], *, priority: int = 0
    ) -> tuple[dict[str, Array], float]:
        """Run one batch and say how many seconds the model took, not counting the wait for
        a thread. Waiting runs go lowest `priority` first (a batch's highest lane); a run
        shorter than a hand-off runs here (`OnnxModel.runs_inline`)."""
        if model.runs_inline(feeds):
            return model.timed(feeds)
        return await asyncio.wrap_future(
            self._require_executor().submit(priority, model.timed, feeds)
        )

    async def infer(self, version: ModelVersion, feeds: dict[str, Array]) -> dict[str, Array]:
        return await self.run(await self.model(version), feeds)

    def _require_loader(self) -> ThreadPoolExecutor:
        if self._loader is None:
            raise RuntimeError("ModelRuntime is not started")
        return self._loader

    def _require_executor(self) -> PriorityExecutor:
        if self._executor is None:
            raise RuntimeError("ModelRuntime is not started")
        return self._executor


def _lower_priority(nice: int) -> None:
    """Add `nice` to the calling thread's nice value (Linux keeps one per thread).

    A refusal (a sandbox that forbids it) is logged, not raised: a thread pool whose
    initializer raises is broken for good, and the priority is a preference only."""
    if nice > 0 and hasattr(os, "setpriority"):
        thread = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + nice)
        except OSError as exc:
            log.warning("could not lower the model threads' CPU priority: %s", exc)
