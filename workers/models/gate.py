"""The order in which batches waiting for the model get to run.

A worker keeps several batches in flight so host work overlaps model runs, but the model
runs them one at a time (`ModelRuntime`'s `concurrent_runs`). A plain FIFO in front of the
model would let a bulk batch, formed while the last one ran, go before a realtime batch
formed a moment later: a realtime task would wait for two bulk runs instead of at most the
rest of one. The gate admits waiting runs by priority (the batch's highest lane), then by
arrival, so a model run is the only thing a higher lane ever waits for.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PriorityGate:
    """At most `slots` holders at once; waiters enter lowest `priority` first, then FIFO."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, future in self._waiters if not future.done())

    async def acquire(self, priority: int = 0) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot came as we were cancelled: hand it on
            raise

    def release(self) -> None:
        while self._waiters:
            *_, future = heapq.heappop(self._waiters)
            if not future.done():  # cancelled waiters are skipped here, not searched for
                future.set_result(None)
                return
        self._free += 1

    @asynccontextmanager
    async def hold(self, priority: int = 0) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()
