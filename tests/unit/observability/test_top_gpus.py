"""`conveyor top`'s GPU rows: each device of each host once, from the workers' NVML gauges."""

from __future__ import annotations

from workers.observability.top import Samples, frame, render


def _gpu(index: str, busy: float, memory: float) -> Samples:
    labels = (("gpu", index),)
    return {
        ("conveyor_gpu_utilization_ratio", labels): busy,
        ("conveyor_gpu_memory_used_bytes", labels): memory,
    }


def test_each_gpu_of_each_host_is_shown_once_with_its_busy_share_and_memory() -> None:
    workers = [
        {"stage": "inference", "metrics_url": "http://10.0.0.1:9400/metrics"},
        {"stage": "inference", "metrics_url": "http://10.0.0.1:9401/metrics"},  # same host
        {"stage": "inference", "metrics_url": "http://10.0.0.2:9400/metrics"},
        {"stage": "preprocess", "metrics_url": "http://10.0.0.1:9402/metrics"},  # no NVML
    ]
    host1 = {**_gpu("0", 0.8, 2 * 2**30), **_gpu("1", 0.25, 2**30)}
    second = [host1, host1, _gpu("0", 0.5, 3 * 2**30), {}]
    view = frame(workers, [{}, {}, {}, {}], second, elapsed_s=1.0)
    assert view.gpus == {
        ("10.0.0.1", "0"): (0.8, 2 * 2**30),
        ("10.0.0.1", "1"): (0.25, 2**30),
        ("10.0.0.2", "0"): (0.5, 3 * 2**30),
    }
    text = render(view)
    assert "0 (10.0.0.1)" in text
    assert "80%" in text
    assert "3.0 GiB" in text


def test_no_gpu_section_without_gpus() -> None:
    view = frame([{"stage": "inference"}], [{}], [{}], elapsed_s=1.0)
    assert view.gpus == {}
    assert "gpu (host)" not in render(view)
