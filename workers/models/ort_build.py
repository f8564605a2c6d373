"""Which ONNX Runtime build is installed, and one line at start when it is not the one asked for.

`onnxruntime` (CPU) and `onnxruntime-gpu` install the same `onnxruntime` package folder, so
the packaging offers them as the `cpu` and `gpu` extras, one at a time. A worker whose
`runtime.providers` asks for CUDA or TensorRT and finds a build without them says so once,
instead of running on the CPU in silence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

BUILDS = ("onnxruntime", "onnxruntime-gpu")
"""The distributions that provide the `onnxruntime` package."""
DEVICE_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def installed_builds() -> list[str]:
    """`BUILDS` installed in this environment, as `name==version`."""
    found = []
    for name in BUILDS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def gpu_visible() -> bool:
    """An NVIDIA driver is loaded and a device node exists (no CUDA library is touched)."""
    return Path("/proc/driver/nvidia").exists() or Path("/dev/nvidia0").exists()


def build_notice(
    preferred: Sequence[str], available: Sequence[str], builds: Sequence[str], gpu: bool
) -> tuple[int, str] | None:
    """The level and line to log at start, or None when the build serves what was asked.

    Both builds installed is a warning (which one runs depends on install order). A device
    provider asked for and missing is a warning where a GPU is visible, else information:
    the default `runtime.providers` lists CUDA first, and on a CPU-only host that is normal.
    """
    if len(builds) > 1:
        return logging.WARNING, (
            f"both {' and '.join(builds)} are installed and share one package folder, so "
            "which build runs depends on install order: pip uninstall -y onnxruntime "
            "onnxruntime-gpu, then pip install 'conveyor[gpu]' (or '[cpu]')"
        )
    wanted = [p for p in preferred if p in DEVICE_PROVIDERS]
    if not wanted or any(p in available for p in wanted):
        return None
    build = builds[0] if builds else "onnxruntime"
    return (logging.WARNING if gpu else logging.INFO), (
        f"runtime.providers asks for {', '.join(wanted)}, but {build} is a CPU build "
        f"(it has {', '.join(available)}): inference runs on the CPU"
        + ("; for the GPU install conveyor[gpu] (onnxruntime-gpu) instead" if gpu else "")
    )


def log_build(preferred: Sequence[str]) -> None:
    """Log `build_notice` for this environment, once at start."""
    import onnxruntime as ort

    notice = build_notice(
        preferred, ort.get_available_providers(), installed_builds(), gpu_visible()
    )
    if notice is not None:
        log.log(*notice)
