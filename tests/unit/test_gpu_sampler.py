from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest

from workers.observability.gpu import GpuSampler
from workers.observability.metrics import WorkerMetrics


@dataclass
class _Memory:
    used: int


@dataclass
class _Busy:
    gpu: int


def test_without_nvml_the_sampler_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as on a CPU machine
    metrics = WorkerMetrics("inference")
    sampler = GpuSampler(metrics)
    sampler.sample()
    assert not sampler.enabled
    assert b"conveyor_gpu_memory_used_bytes{" not in generate_latest(metrics.registry)


def test_samples_every_gpu_nvml_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: _Memory(used=(h + 1) * 2**30)  # type: ignore[attr-defined]
    fake.nvmlDeviceGetUtilizationRates = lambda h: _Busy(gpu=40 + h)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    metrics = WorkerMetrics("inference")
    sampler = GpuSampler(metrics)
    sampler.sample()
    text = generate_latest(metrics.registry).decode()
    assert 'conveyor_gpu_memory_used_bytes{gpu="1"} 2.147483648e+09' in text
    assert 'conveyor_gpu_utilization_ratio{gpu="0"} 0.4' in text
