"""A size-or-timeout batcher with batch keys.

Items that cannot share a batch (another model, another version) carry different keys and
queue apart. A key's batch is ready when its queued size reaches `max_batch_size` or when its
oldest item has waited `max_wait_ms` on the monotonic clock; a batch never waits longer than
that from its first item, and never waits at all when enough items are queued.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
Clock = Callable[[], float]

_batch_ids = itertools.count()


@dataclass(frozen=True)
class Batch(Generic[T]):
    key: Hashable
    items: list[T]
    size: int
    """Sum of the items' sizes (rows, not requests)."""
    waited_s: float
    """How long the first item waited for this batch to close."""
    batch_id: str = field(default_factory=lambda: f"b{next(_batch_ids)}")


@dataclass
class _Queued(Generic[T]):
    item: T
    size: int
    enqueued_at: float


class Batcher(Generic[T]):
    """Groups items by key into batches of at most `max_batch_size` (in item sizes)."""

    def __init__(
        self,
        max_batch_size: int,
        max_wait_ms: float,
        *,
        key: Callable[[T], Hashable] = lambda _: None,
        size_of: Callable[[T], int] = lambda _: 1,
        window_of: Callable[[Hashable], tuple[int, float]] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """`window_of(key)` may give a key its own (max_batch_size, max_wait_ms)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._window_of = window_of
        self._windows: dict[Hashable, tuple[int, float]] = {}
        self._key = key
        self._size_of = size_of
        self._clock = clock
        # Insertion order of keys is the order their first item arrived: oldest served first.
        self._queues: OrderedDict[Hashable, deque[_Queued[T]]] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._changed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def put(self, item: T) -> None:
        if self._closed:
            raise RuntimeError("batcher is closed")
        key = self._key(item)
        size = max(1, self._size_of(item))
        queue = self._queues.setdefault(key, deque())
        queue.append(_Queued(item, size, self._clock()))
        self._sizes[key] = self._sizes.get(key, 0) + size
        self._changed.set()

    def remove_if(self, predicate: Callable[[T], bool]) -> int:
        """Drop queued items (e.g. of partitions this worker lost); returns how many."""
        removed = 0
        for key in list(self._queues):
            queue = self._queues[key]
            kept = deque(q for q in queue if not predicate(q.item))
            dropped = len(queue) - len(kept)
            if dropped:
                removed += dropped
                self._sizes[key] = sum(q.size for q in kept)
                if kept:
                    self._queues[key] = kept
                else:
                    del self._queues[key]
                    del self._sizes[key]
        return removed

    def tick(self) -> None:
        """Wake a waiting `next_batch` to re-read the clock (tests with a fake clock call it)."""
        self._changed.set()

    def close(self) -> None:
        """Flush: from now on queued items are batched without waiting for the window."""
        self._closed = True
        self._changed.set()

    async def next_batch(self) -> Batch[T] | None:
        """The next ready batch; None once closed and drained."""
        while True:
            self._changed.clear()
            now = self._clock()
            ready, wait_s = self._ready(now)
            if ready:
                return self._take(ready[0], now)
            if self._closed:
                return None
            try:
                async with asyncio.timeout(wait_s):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def _ready(self, now: float) -> tuple[tuple[Hashable] | None, float | None]:
        """The first ready key (boxed: None is a valid key), else the time to the next window."""
        earliest: float | None = None
        for key, queue in self._queues.items():
            if not queue:
                continue
            max_size, max_wait_s = self._window(key)
            deadline = queue[0].enqueued_at + max_wait_s
            if self._closed or self._sizes[key] >= max_size or now >= deadline:
                return (key,), None
            earliest = deadline if earliest is None else min(earliest, deadline)
        return None, (None if earliest is None else max(0.0, earliest - now))

    def _window(self, key: Hashable) -> tuple[int, float]:
        if self._window_of is None:
            return self.max_batch_size, self.max_wait_s
        if key not in self._windows:
            max_size, max_wait_ms = self._window_of(key)
            self._windows[key] = (max_size, max_wait_ms / 1000)
        return self._windows[key]

    def _take(self, key: Hashable, now: float) -> Batch[T]:
        queue = self._queues[key]
        max_size = self._window(key)[0]
        first = queue[0]
        items: list[T] = []
        size = 0
        # An item larger than the whole batch still goes, alone, rather than never.
        while queue and (not items or size + queue[0].size <= max_size):
            queued = queue.popleft()
            items.append(queued.item)
            size += queued.size
        self._sizes[key] -= size
        if not queue:
            del self._queues[key]
            del self._sizes[key]
        else:
            self._queues.move_to_end(key)
        return Batch(key=key, items=items, size=size, waited_s=now - first.enqueued_at)
