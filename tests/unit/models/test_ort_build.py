"""The one line a worker logs at start about the ONNX Runtime build it found."""

from __future__ import annotations

import logging

from workers.models.ort_build import build_notice

DEFAULT = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU_BUILD = ["AzureExecutionProvider", "CPUExecutionProvider"]
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cuda_asked_and_cpu_build_found_says_so_as_a_warning_where_a_gpu_is_visible() -> None:
    notice = build_notice(DEFAULT, CPU_BUILD, ["onnxruntime==1.31.1"], gpu=True)
    assert notice is not None
    level, line = notice
    assert level == logging.WARNING
    assert "\n" not in line
    assert "CUDAExecutionProvider" in line
    assert "onnxruntime==1.31.1 is a CPU build" in line
    assert "conveyor[gpu]" in line


def test_cpu_only_host_with_the_default_providers_is_information() -> None:
    notice = build_notice(DEFAULT, CPU_BUILD, ["onnxruntime==1.31.1"], gpu=False)
    assert notice is not None
    assert notice[0] == logging.INFO


def test_gpu_build_or_cpu_asked_for_is_silent() -> None:
    assert build_notice(DEFAULT, GPU_BUILD, ["onnxruntime-gpu==1.31.1"], gpu=True) is None
    assert (
        build_notice(("CPUExecutionProvider",), CPU_BUILD, ["onnxruntime==1.31.1"], False) is None
    )


def test_both_builds_installed_is_a_warning() -> None:
    builds = ["onnxruntime==1.31.1", "onnxruntime-gpu==1.31.1"]
    notice = build_notice(DEFAULT, GPU_BUILD, builds, gpu=True)
    assert notice is not None
    assert notice[0] == logging.WARNING
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in notice[1]
