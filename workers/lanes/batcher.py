"""The fair batcher: dynamic batches by key, filled by lane priority with minimum shares,
and by weighted fairness between tenants inside a lane.

Every stage's runner batches with it (`put`, `remove_if`, `tick`, `close`, `next_batch`);
every item carries a batch key, a lane, a tenant, a size (rows) and a cost.

When a key's batch is ready (on its `BatchWindow`, measured on the monotonic clock):
- its queued size (rows, all lanes) reaches `max_batch_size`: take up to that;
- it reaches the smallest preferred size: take up to the largest preferred size queued,
  without waiting (Triton's preferred batch sizes); the rest waits for its own window;
- its oldest item has waited `max_wait_ms`, or the batcher is closed: take up to
  `max_batch_size`, whatever is queued.
An item larger than the whole batch goes alone rather than never.

Which ready key: the one whose highest queued lane is highest (ties: oldest first item),
except that a key where some lane holds enough credit for its next item (below) goes first.

Filling a batch of capacity C (work-conserving):
1. Credit pass, lowest lane first (the lane most likely to be starving goes first when
   credits together exceed the room): a lane whose credit covers the cost of its next item
   is served while the cost fits its credit.
2. Strict pass, highest lane first, fills the room left. Its items consume their lane's
   credit too, floored at 0: leftover room a higher lane did not want is free.
Inside a lane, items come from that lane's `DeficitRoundRobin` for the key.

Credit (aging): after each batch, every lane with queued work (any key) earns
`min_share[lane] * cost of that batch`; a lane with none loses its positive credit (no
banking while idle). Credit is counted in served cost, the unit `min_share` is stated in, so
it means the same whether cost is rows or tokens. So a backlogged lane gets at least its
`min_share` of served cost, less at most one item's cost plus one batch's grant, even while
a higher lane saturates the worker.

Choices:
- Credit is per lane, shared by all keys, because the promise is per lane: with realtime
  saturating model A, the bulk lane of model B must still be served. A key chosen only
  for its credit (its highest lane is below the highest lane ready on another key) preempts
  that lane; then every item it serves is charged in full and the credit may go negative
  (a debt repaid by later grants), so filling the preempting batch costs its lane its
  later turns instead of taking more than its share.
- DRR state is per (key, lane), not shared across keys: a batch is always taken from one
  key's queues, and costs of different models (tokens of one, images of another) do not
  add up to one tenant deficit. Tenant fairness is thus per model and lane; lane credit
  keeps the lanes fair across models.
- Quantum: each DRR's `base_quantum` is the largest item cost it has seen (see `drr`).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from workers.lanes.drr import DeficitRoundRobin
from workers.names import LANES

T = TypeVar("T")
Clock = Callable[[], float]
Admit = Callable[[str], str | None]
"""A batch whose highest lane is the argument may take rows down to the lane returned."""

_batch_ids = itertools.count()


@dataclass(frozen=True)
class Batch(Generic[T]):
    key: Hashable
    items: list[T]
    size: int
    """Sum of the items' sizes (rows, not requests)."""
    waited_s: float
    """How long the first item waited for this batch to close."""
    lane: str = LANES[0]
    """The highest lane queued for its key when it formed: the lane `admit` was asked
    about (its items are almost always of it; a lower lane's credit may take the room)."""
    batch_id: str = field(default_factory=lambda: f"b{next(_batch_ids)}")


@dataclass(frozen=True)
class BatchWindow:
    """How one batch key is batched."""

    max_batch_size: int
    """Rows in a batch at most (an item larger than this still goes, alone)."""
    max_wait_ms: float
    """Longest the oldest queued item waits for its batch to fill."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Sizes to close a batch at as soon as that many rows are queued (largest first)."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not (0 <= self.max_wait_ms < math.inf):
            raise ValueError(f"max_wait_ms must be >= 0 and finite, got {self.max_wait_ms}")
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_sizes must be in 1..max_batch_size "
                    f"({self.max_batch_size}), got {size}"
                )


@dataclass(eq=False)
class _Entry(Generic[T]):
    item: T
    lane: str
    tenant: str
    size: int
    cost: float
    enqueued_at: float
    queued: bool = True


class _KeyQueue(Generic[T]):
    """One key's queued items: a DRR per lane, plus arrival order for its oldest item."""

    def __init__(self) -> None:
        self.lanes: dict[str, DeficitRoundRobin[_Entry[T]]] = {}
        self.arrivals: deque[_Entry[T]] = deque()
        self.size = 0

    def oldest(self) -> _Entry[T]:
        # Items leave out of arrival order; dead entries are dropped lazily from the front.
        while not self.arrivals[0].queued:
            self.arrivals.popleft()
        return self.arrivals[0]


@dataclass(frozen=True)
class _Choice:
    key: Hashable
    capacity: int
    preempts: bool
    """Chosen for lane credit over a higher lane ready on another key."""
    top: int
    """Rank of the highest lane queued for the key."""
    floor: str
    """The lowest lane the batch may take rows from (what `admit` allowed)."""


class LaneBatcher(Generic[T]):
    """Batches items by key; fills each batch by lane priority, minimum share and tenant
    weight. See the module docstring for the guarantees."""

    def __init__(
        self,
        *,
        window_of: Callable[[Hashable], BatchWindow],
        lane_of: Callable[[T], str],
        tenant_of: Callable[[T], str],
        key: Callable[[T], Hashable] = lambda _: None,
        size_of: Callable[[T], int] = lambda _: 1,
        cost_of: Callable[[T], float] | None = None,
        weight_of: Callable[[str], float] = lambda _: 1.0,
        lanes: Sequence[str] = LANES,
        min_share: Mapping[str, float] | None = None,
        row_cap_of: Callable[[Hashable], int | None] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """`cost_of` defaults to the size; `weight_of(tenant)` is read at serve time.
        `row_cap_of(key)`, read each time a batch forms, may cap a key's batches below its
        window's `max_batch_size` for now (a latency budget while a high lane is active)."""
        self._lanes = tuple(lanes)
        if not self._lanes or len(set(self._lanes)) != len(self._lanes):
            raise ValueError(f"lanes must be distinct and not empty, got {self._lanes}")
        self._min_share = _checked_shares(min_share or {}, self._lanes)
        self._window_of = window_of
        self._windows: dict[Hashable, BatchWindow] = {}
        self._row_cap_of = row_cap_of
        self._key = key
        self._lane_of = lane_of
        self._tenant_of = tenant_of
        self._size_of = size_of
        self._cost_of = cost_of
        self._weight_of = weight_of
        self._clock = clock
        self._rank = {lane: rank for rank, lane in enumerate(self._lanes)}
        self._keys: dict[Hashable, _KeyQueue[T]] = {}
        self._credit = dict.fromkeys(self._lanes, 0.0)
        self._queued: dict[tuple[str, str], int] = {}
        self._served_cost: dict[tuple[str, str], float] = {}
        self._len = 0
        self._changed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return self._len

    def put(self, item: T) -> None:
        if self._closed:
            raise RuntimeError("batcher is closed")
        lane = self._lane_of(item)
        if lane not in self._rank:
            raise ValueError(f"lane must be one of {self._lanes}, got {lane!r}")
        tenant = self._tenant_of(item)
        size = max(1, self._size_of(item))
        cost = float(size) if self._cost_of is None else self._cost_of(item)
        entry = _Entry(item, lane, tenant, size, cost, self._clock())
        queue = self._keys.setdefault(self._key(item), _KeyQueue())
        drr = queue.lanes.get(lane)
        if drr is None:
            drr = queue.lanes[lane] = DeficitRoundRobin()
        drr.put(tenant, entry, cost=cost, size=size)
        queue.arrivals.append(entry)
        queue.size += size
        self._queued[lane, tenant] = self._queued.get((lane, tenant), 0) + 1
        self._len += 1
        self._changed.set()

    def remove_if(self, predicate: Callable[[T], bool]) -> int:
        """Drop queued items (e.g. of partitions this worker lost); returns how many."""
        removed: list[_Entry[T]] = []

        def drop(entry: _Entry[T]) -> bool:
            if predicate(entry.item):
                removed.append(entry)
                return True
            return False

        for key, queue in list(self._keys.items()):
            already = len(removed)
            for drr in queue.lanes.values():
                drr.remove_if(drop)
            if len(removed) > already:
                self._forget(key, queue, removed[already:])
        return len(removed)

    def tick(self) -> None:
        """Wake a waiting `next_batch` to re-read the clock (tests with a fake clock call it)."""
        self._changed.set()

    def close(self) -> None:
        """Flush: from now on queued items are batched without waiting for the window."""
        self._closed = True
        self._changed.set()

    async def next_batch(self, admit: Admit | None = None) -> Batch[T] | None:
        """The next ready batch; None once closed and drained.

        `admit(lane)`, when given, says which lanes a batch whose highest lane is `lane` may
        take rows from now (batch slots): down to the lane it returns, or none (None: the
        key waits; a `tick()` wakes the wait when the answer may have changed)."""
        while True:
            self._changed.clear()
            now = self._clock()
            choice, wait_s = self._choose(now, admit)
            if choice is not None:
                return self._form(choice, now)
            if self._closed and not self._keys:
                return None
            try:
                async with asyncio.timeout(wait_s):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def queued_by_lane(self) -> dict[str, int]:
        """Queued records per lane, all keys (every lane present)."""
        counts = dict.fromkeys(self._lanes, 0)
        for (lane, _), count in self._queued.items():
            counts[lane] += count
        return counts

    def queued_by_tenant(self) -> dict[tuple[str, str], int]:
        """Queued records per (lane, tenant), all keys."""
        return dict(self._queued)

    def served_cost(self) -> dict[tuple[str, str], float]:
        """Cumulative cost served per (lane, tenant)."""
        return dict(self._served_cost)

    def lane_credit(self) -> dict[str, float]:
        """Each lane's current credit (negative: a debt from a preempting batch)."""
        return dict(self._credit)

    def _window(self, key: Hashable) -> BatchWindow:
        if key not in self._windows:
            self._windows[key] = self._window_of(key)
        return self._windows[key]

    def _capped(self, key: Hashable) -> BatchWindow:
        window = self._window(key)
        cap = self._row_cap_of(key) if self._row_cap_of is not None else None
        if cap is None or cap >= window.max_batch_size:
            return window
        cap = max(1, cap)
        preferred = tuple(n for n in window.preferred_batch_sizes if n <= cap)
        return BatchWindow(cap, window.max_wait_ms, preferred)

    def _choose(
        self, now: float, admit: Admit | None = None
    ) -> tuple[_Choice | None, float | None]:
        """The key to batch now, else how long until the next window closes."""
        ready: list[tuple[int, float, Hashable, int, int, str]] = []
        earliest: float | None = None
        for key, queue in self._keys.items():
            top = min(self._rank[lane] for lane in queue.lanes)
            floor = admit(self._lanes[top]) if admit is not None else self._lanes[-1]
            if floor is None:
                continue
            capacity, deadline = self._readiness(key, queue, now)
            if capacity is None:
                earliest = deadline if earliest is None else min(earliest, deadline)
                continue
            order = -1 if self._owes(queue) else top
            ready.append((order, queue.oldest().enqueued_at, key, capacity, top, floor))
        if not ready:
            return None, (None if earliest is None else max(0.0, earliest - now))
        best_top = min(r[4] for r in ready)
        _, _, key, capacity, top, floor = min(ready, key=lambda r: (r[0], r[1]))
        return _Choice(key, capacity, preempts=top > best_top, top=top, floor=floor), None

    def _readiness(
        self, key: Hashable, queue: _KeyQueue[T], now: float
    ) -> tuple[int | None, float]:
        """The capacity to take if `key` is ready, and its deadline."""
        window = self._capped(key)
        deadline = queue.oldest().enqueued_at + window.max_wait_ms / 1000
        if queue.size >= window.max_batch_size:
            return window.max_batch_size, deadline
        preferred = [n for n in window.preferred_batch_sizes if n <= queue.size]
        if preferred:
            return max(preferred), deadline
        if self._closed or now >= deadline:
            return window.max_batch_size, deadline
        return None, deadline

    def _owes(self, queue: _KeyQueue[T]) -> bool:
        """Whether a lane of this key has credit for its next item."""
        for lane, drr in queue.lanes.items():
            credit = self._credit[lane]
            head = drr.peek(self._weight_of) if credit > 0 else None
            if head is not None and head.cost <= credit:
                return True
        return False

    def _form(self, choice: _Choice, now: float) -> Batch[T]:
        queue = self._keys[choice.key]
        waited_s = now - queue.oldest().enqueued_at
        taken: list[_Entry[T]] = []
        lanes = self._lanes[: self._rank[choice.floor] + 1]
        for lane in reversed(lanes):
            self._credit_pass(queue, lane, choice.capacity, taken)
        for lane in lanes:
            self._strict_pass(queue, lane, choice, taken)
        self._forget(choice.key, queue, taken)
        batch_cost = 0.0
        for entry in taken:
            batch_cost += entry.cost
            served = self._served_cost.get((entry.lane, entry.tenant), 0.0)
            self._served_cost[entry.lane, entry.tenant] = served + entry.cost
        self._grant(batch_cost)
        items = [entry.item for entry in taken]
        size = sum(entry.size for entry in taken)
        lane = self._lanes[choice.top]
        return Batch(key=choice.key, items=items, size=size, waited_s=waited_s, lane=lane)

    def _credit_pass(
        self, queue: _KeyQueue[T], lane: str, capacity: int, taken: list[_Entry[T]]
    ) -> None:
        drr = queue.lanes.get(lane)
        credit = self._credit[lane]
        if drr is None or credit <= 0:
            return
        got = self._take(drr, capacity, taken, max_cost=credit)
        self._credit[lane] = credit - sum(entry.cost for entry in got)

    def _strict_pass(
        self, queue: _KeyQueue[T], lane: str, choice: _Choice, taken: list[_Entry[T]]
    ) -> None:
        drr = queue.lanes.get(lane)
        if drr is None or not len(drr):
            return
        spent = sum(entry.cost for entry in self._take(drr, choice.capacity, taken))
        credit = self._credit[lane] - spent
        self._credit[lane] = credit if choice.preempts else max(0.0, credit)

    def _take(
        self,
        drr: DeficitRoundRobin[_Entry[T]],
        capacity: int,
        taken: list[_Entry[T]],
        *,
        max_cost: float = math.inf,
    ) -> list[_Entry[T]]:
        room = capacity - sum(entry.size for entry in taken)
        if taken and room <= 0:
            return []
        got = drr.take(room, self._weight_of, max_cost=max_cost, allow_oversized=not taken)
        taken.extend(got)
        return got

    def _grant(self, batch_cost: float) -> None:
        queued = self.queued_by_lane()
        for lane in self._lanes:
            if queued[lane]:
                self._credit[lane] += self._min_share.get(lane, 0.0) * batch_cost
            else:
                self._credit[lane] = min(self._credit[lane], 0.0)

    def _forget(self, key: Hashable, queue: _KeyQueue[T], gone: Iterable[_Entry[T]]) -> None:
        """Bookkeeping for entries that left the key's queues (served or removed)."""
        for entry in gone:
            entry.queued = False
            queue.size -= entry.size
            self._len -= 1
            count = self._queued[entry.lane, entry.tenant] - 1
            if count:
                self._queued[entry.lane, entry.tenant] = count
            else:
                del self._queued[entry.lane, entry.tenant]
        for lane in [lane for lane, drr in queue.lanes.items() if not len(drr)]:
            del queue.lanes[lane]
        if not queue.lanes:
            del self._keys[key]


def _checked_shares(min_share: Mapping[str, float], lanes: Sequence[str]) -> dict[str, float]:
    for lane, share in min_share.items():
        if lane not in lanes:
            raise ValueError(f"min_share lane must be one of {tuple(lanes)}, got {lane!r}")
        if not 0 <= share <= 1:
            raise ValueError(f"min_share[{lane!r}] must be in [0, 1], got {share}")
    if sum(min_share.values()) > 1:
        raise ValueError(f"min_share must sum to <= 1, got {dict(min_share)}")
    return dict(min_share)
