"""How a thread waits for the GPU: the scheduling flag of the CUDA device's primary context.

ONNX Runtime's CUDA provider ends every run by waiting for the device (its outputs are copied
to the host). CUDA's default (`auto`) spins a core through that wait whenever a process has
fewer CUDA contexts than the machine has cores: true of every worker, one context each. A
host of several workers, each with runs in flight, then burns cores on waiting that the
tokenizer, the codec and the broker need. `block` makes the waiting thread sleep until the
device signals (a wake-up costs some microseconds of latency), `yield` spins but yields the
core to others, `spin` never yields.

The flag belongs to the device's primary context, the one the CUDA runtime (and so ONNX
Runtime) uses; a worker sets it through the driver API before its first CUDA session exists,
so the context is made with it. No driver, no flag: a CPU-only machine goes on as before.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Literal

log = logging.getLogger(__name__)

CudaWait = Literal["auto", "spin", "yield", "block"]
_FLAGS: dict[CudaWait, int] = {"auto": 0x0, "spin": 0x1, "yield": 0x2, "block": 0x4}
"""CU_CTX_SCHED_AUTO, _SPIN, _YIELD, _BLOCKING_SYNC (cuda.h)."""
_applied: dict[int, CudaWait] = {}
"""Device ordinal -> the mode set in this process (once per device suffices)."""


def set_cuda_wait(mode: CudaWait, device_id: int = 0) -> bool:
    """Set how this process's threads wait for device `device_id`; True when the driver took
    it. `auto` leaves CUDA's default alone. Without a CUDA driver (CPU-only machines) it
    returns False and changes nothing."""
    if mode == "auto":
        return False
    if _applied.get(device_id) == mode:
        return True
    try:
        driver = ctypes.CDLL("libcuda.so.1")
        # The _v2 entry: CUDA 11 and later (ONNX Runtime's CUDA builds need 12).
        set_flags = driver.cuDevicePrimaryCtxSetFlags_v2
    except (OSError, AttributeError):
        return False
    device = ctypes.c_int()
    calls: tuple[tuple[str, Callable[[], int]], ...] = (
        ("cuInit", lambda: int(driver.cuInit(0))),
        ("cuDeviceGet", lambda: int(driver.cuDeviceGet(ctypes.byref(device), device_id))),
        ("cuDevicePrimaryCtxSetFlags", lambda: int(set_flags(device, _FLAGS[mode]))),
    )
    for step, call in calls:
        code = call()
        if code != 0:
            log.warning("cuda_wait=%s not applied: %s returned CUDA error %d", mode, step, code)
            return False
    _applied[device_id] = mode
    log.info("CUDA device %d: threads wait for it by %s", device_id, mode)
    return True
