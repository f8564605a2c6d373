"""GPU memory and utilization through NVML, when the `gpu` extra and a GPU are present."""

from __future__ import annotations

import logging
from typing import Any

from workers.observability.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class GpuSampler:
    """Samples every visible GPU into the worker's gauges; a no-op without NVML or a GPU."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml  # type: ignore[import-not-found, import-untyped, unused-ignore]

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
        except Exception as exc:  # no package, no driver, no device: all mean "no GPU here"
            log.debug("no GPU metrics: %s", exc)

    @property
    def enabled(self) -> bool:
        return self._nvml is not None and bool(self._handles)

    def sample(self) -> None:
        if not self.enabled:
            return
        for index, handle in enumerate(self._handles):
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            busy = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            self.metrics.gpu_memory_used.labels(str(index)).set(memory.used)
            self.metrics.gpu_utilization.labels(str(index)).set(busy.gpu / 100)
