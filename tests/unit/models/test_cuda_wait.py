"""How model threads wait for the GPU (`runtime.cuda_wait`): the driver call where a driver
exists, nothing where none does (CI's machines, a developer's laptop)."""

from __future__ import annotations

import ctypes

import pytest

from workers.models import cuda_wait
from workers.models.runtime import RuntimeOptions
from workers.settings import RuntimeSettings


def _driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def test_auto_leaves_cuda_alone() -> None:
    assert cuda_wait.set_cuda_wait("auto") is False
    assert 0 not in cuda_wait._applied


@pytest.mark.parametrize("mode", ["block", "yield", "spin"])
def test_a_mode_is_applied_exactly_where_a_driver_is(mode: cuda_wait.CudaWait) -> None:
    applied = cuda_wait.set_cuda_wait(mode)
    assert applied is _driver_present()
    assert (cuda_wait._applied.get(0) == mode) is applied
    cuda_wait._applied.clear()


def test_the_setting_reaches_the_runtime_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_RUNTIME__CUDA_WAIT", "spin")
    from workers.settings import Settings

    assert RuntimeOptions.from_settings(Settings().runtime, cores=4).cuda_wait == "spin"
    assert RuntimeOptions.from_settings(RuntimeSettings(), cores=4).cuda_wait == "block"
    with pytest.raises(ValueError, match="cuda_wait"):
        RuntimeSettings(cuda_wait="sometimes")  # type: ignore[arg-type]
