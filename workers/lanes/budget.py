"""A latency budget for batches while the highest lane has work.

A model run cannot be interrupted, so a realtime task that arrives while a large bulk batch
runs waits for it, and on a CPU a batch of 64 can take longer than the realtime task's whole
idle latency. While the highest lane has been seen within `active_s`, every batch is capped
at the rows the model runs in about `budget_ms`, by a running estimate of seconds per row
for each batch key; a realtime task then waits for about one such batch. When the highest
lane is quiet, batches are bounded by their window only, so bulk throughput costs nothing
on a machine without realtime traffic, and little on a GPU, where rows are cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from workers.names import LANES

# Weight of the newest batch in the running seconds-per-row estimate.
_SMOOTHING = 0.2


class LatencyBudget:
    def __init__(
        self,
        budget_ms: float,
        active_s: float,
        top_lane: str = LANES[0],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_s = budget_ms / 1000
        self.active_s = active_s
        self.top_lane = top_lane
        self._clock = clock
        self._top_seen_at: float | None = None
        self._s_per_row: dict[Hashable, float] = {}

    def saw(self, lane: str) -> None:
        if lane == self.top_lane:
            self._top_seen_at = self._clock()

    def ran(self, key: Hashable, rows: int, seconds: float) -> None:
        """A batch of `key` with `rows` rows took `seconds`."""
        if rows < 1 or seconds <= 0:
            return
        sample = seconds / rows
        previous = self._s_per_row.get(key)
        self._s_per_row[key] = (
            sample if previous is None else previous + _SMOOTHING * (sample - previous)
        )

    def row_cap(self, key: Hashable) -> int | None:
        """Rows a batch of `key` may hold now; None: no cap."""
        if self.budget_s <= 0 or self._top_seen_at is None:
            return None
        if self._clock() - self._top_seen_at > self.active_s:
            return None
        s_per_row = self._s_per_row.get(key)
        if s_per_row is None:
            return None
        return max(1, int(self.budget_s / s_per_row))
