"""Shadow runs: a candidate version on a sample of live batches, outputs compared, dropped.

The comparison runs after the serving version has answered, as a tracked background task,
at most one at a time: when one is still running, the batch is not shadowed (never queued),
so a slow candidate costs a lower sample, not latency.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.component import Component
from workers.models.lifecycle import LoadedVersion, ModelLifecycle
from workers.models.runtime import ModelRuntime
from workers.names import LANES
from workers.observability.metrics import WorkerMetrics
from workers.tasks import TaskSet

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class ShadowDiff:
    max_abs_diff: float
    cosine: float


def compare(serving: dict[str, Array], candidate: dict[str, Array]) -> ShadowDiff:
    """How far the candidate's outputs are from the serving ones, over every shared output."""
    names = sorted(set(serving) & set(candidate))
    if not names:
        return ShadowDiff(float("inf"), 0.0)
    a = np.concatenate([np.asarray(serving[n], np.float64).ravel() for n in names])
    b = np.concatenate([np.asarray(candidate[n], np.float64).ravel() for n in names])
    if a.shape != b.shape:
        return ShadowDiff(float("inf"), 0.0)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / norms) if norms > 0 else float(np.array_equal(a, b))
    return ShadowDiff(float(np.max(np.abs(a - b))) if a.size else 0.0, cosine)


class ShadowRunner(Component):
    """Runs sampled batches on the shadow version and records the differences as metrics."""

    def __init__(
        self,
        lifecycle: ModelLifecycle,
        runtime: ModelRuntime,
        metrics: WorkerMetrics,
        draw: random.Random | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.runtime = runtime
        self.metrics = metrics
        self._draw = draw or random.Random()
        self._tasks = TaskSet(self._crashed)
        self.compared = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self._tasks.cancel()

    def offer(
        self, model: str, ran_on: int, feeds: dict[str, Array], outputs: dict[str, Array]
    ) -> bool:
        """Maybe shadow a batch the current version just served; True when one started."""
        table = self.lifecycle.table(model)
        if table.shadow is None or ran_on != table.current or len(self._tasks):
            return False
        if self._draw.random() >= table.shadow_fraction:
            return False
        try:
            lease = self.lifecycle.acquire(model, table.shadow)
        except Exception:  # retired between the table read and now: skip this batch
            return False
        self._tasks.start(self._run(lease, feeds, outputs), f"shadow-{model}-{table.shadow}")
        return True

    async def wait(self) -> None:
        """Until the running comparison (if any) ends (tests, shutdown)."""
        await self._tasks.wait()

    async def _run(
        self, lease: LoadedVersion, feeds: dict[str, Array], serving: dict[str, Array]
    ) -> None:
        try:
            assert lease.model is not None
            # After every lane's batches: a comparison must never delay live traffic.
            candidate = await self.runtime.run(lease.model, feeds, priority=len(LANES))
            diff = compare(serving, candidate)
            labels = (lease.version.name, str(lease.number))
            self.metrics.shadow_max_abs_diff.labels(*labels).observe(diff.max_abs_diff)
            self.metrics.shadow_cosine.labels(*labels).observe(diff.cosine)
            self.compared += 1
        except Exception:
            log.warning(
                "shadow run of %s v%d failed", lease.version.name, lease.number, exc_info=True
            )
        finally:
            self.lifecycle.release(lease)

    def _crashed(self, error: BaseException) -> None:
        log.error("shadow runner task crashed: %s", error)
