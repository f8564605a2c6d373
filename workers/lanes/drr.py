"""Deficit round robin (Shreedhar & Varghese, 1995) between the tenants of one lane.

Each tenant has a FIFO queue. Backlogged tenants are visited in turn; a visit adds the
tenant's quantum (`weight_of(tenant) * base_quantum`) to its deficit and serves its items
while the head item's cost fits the deficit. Served cost per tenant then tracks its weight
whatever the tenants' item costs: a tenant sending costly items gets fewer of them.

Choices:
- `cost` (what fairness counts: items, tokens, ...) and `size` (rows that count against a
  batch's capacity) are separate, both given at `put`.
- State survives `take`: a batch boundary in the middle of a visit resumes that visit (no
  second quantum) in the next call, so cutting the service into batches changes nothing.
- `base_quantum` defaults to the largest item cost seen so far, so a visit of a tenant of
  weight >= 1 serves at least one item and a round is O(tenants). Fixed it can be smaller
  (finer interleaving, more visits per item) or larger (longer bursts).
- Weights are read at each visit, so a weight changed at runtime applies from the next
  visit; a weight must be > 0.
- A tenant whose queue empties leaves the round and loses its deficit: idle time banks
  nothing.

Bound: while a set of tenants stays backlogged under a fixed base quantum `q`, their served
cost per weight differs pairwise by less than `q + max_cost / min_weight`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class _Queued(Generic[T]):
    item: T
    cost: float
    size: int


class DeficitRoundRobin(Generic[T]):
    """Per-tenant FIFO queues served by deficit round robin, by weight."""

    def __init__(self, *, base_quantum: float | None = None) -> None:
        if base_quantum is not None and not (0 < base_quantum < math.inf):
            raise ValueError(f"base_quantum must be > 0 and finite, got {base_quantum}")
        self._base_quantum = base_quantum
        self._max_cost_seen = 0.0
        self._queues: dict[str, deque[_Queued[T]]] = {}
        # Backlogged tenants in visiting order; the front one is being visited.
        self._round: deque[str] = deque()
        self._deficit: dict[str, float] = {}
        # Whether the front tenant already got its quantum for the current visit.
        self._visit_started = False
        self._served_cost: dict[str, float] = {}
        self._len = 0

    def __len__(self) -> int:
        return self._len

    @property
    def base_quantum(self) -> float:
        """Quantum of a tenant of weight 1, per visit."""
        return self._base_quantum if self._base_quantum is not None else self._max_cost_seen

    @property
    def served_cost_by_tenant(self) -> dict[str, float]:
        """Cumulative cost served per tenant (a copy), for metrics."""
        return dict(self._served_cost)

    def queued_by_tenant(self) -> dict[str, int]:
        """Queued items per backlogged tenant."""
        return {tenant: len(queue) for tenant, queue in self._queues.items()}

    def put(self, tenant: str, item: T, *, cost: float, size: int = 1) -> None:
        """Queue `item` behind the tenant's earlier items."""
        if not (0 <= cost < math.inf):
            raise ValueError(f"cost must be >= 0 and finite, got {cost}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = deque()
            self._round.append(tenant)
            self._deficit[tenant] = 0.0
        queue.append(_Queued(item, cost, size))
        self._max_cost_seen = max(self._max_cost_seen, cost)
        self._len += 1

    def peek(self, weight_of: Callable[[str], float]) -> T | None:
        """The item the next `take` serves first; None when empty.

        It moves the round on to that item's tenant (granting quanta on the way) exactly as
        `take` would, so peeking changes no outcome.
        """
        head = self._advance(weight_of)
        return None if head is None else head.item

    def take(
        self,
        capacity: int,
        weight_of: Callable[[str], float],
        *,
        max_cost: float = math.inf,
        allow_oversized: bool = False,
    ) -> list[T]:
        """Serve items in DRR order while their sizes fit `capacity` and costs fit `max_cost`.

        Stops at the first item that does not fit (later tenants do not jump the round).
        With `allow_oversized`, a first item larger than `capacity` is taken alone rather
        than never.
        """
        taken: list[T] = []
        room, budget = capacity, max_cost
        # No visit starts for an item that could not fit anyway, so a weight changed between
        # takes applies to the visit that follows.
        while (room >= 1 or (allow_oversized and not taken)) and (
            head := self._advance(weight_of)
        ) is not None:
            if head.cost > budget:
                break
            if head.size > room and not (allow_oversized and not taken):
                break
            self._serve_front()
            taken.append(head.item)
            room -= head.size
            budget -= head.cost
        return taken

    def remove_if(self, predicate: Callable[[T], bool]) -> int:
        """Drop queued items matching `predicate`; returns how many."""
        removed = 0
        for tenant in list(self._queues):
            queue = self._queues[tenant]
            kept = deque(q for q in queue if not predicate(q.item))
            if len(kept) == len(queue):
                continue
            removed += len(queue) - len(kept)
            if kept:
                self._queues[tenant] = kept
            else:
                self._leave_round(tenant)
        self._len -= removed
        return removed

    def _advance(self, weight_of: Callable[[str], float]) -> _Queued[T] | None:
        """Move the round to the first tenant whose head fits its deficit; that head."""
        while self._round:
            tenant = self._round[0]
            if not self._visit_started:
                self._deficit[tenant] += self._quantum(tenant, weight_of)
                self._visit_started = True
            head = self._queues[tenant][0]
            if head.cost <= self._deficit[tenant]:
                return head
            self._round.rotate(-1)
            self._visit_started = False
        return None

    def _quantum(self, tenant: str, weight_of: Callable[[str], float]) -> float:
        weight = weight_of(tenant)
        if not (0 < weight < math.inf):
            raise ValueError(f"weight of tenant {tenant!r} must be > 0 and finite, got {weight}")
        return weight * self.base_quantum

    def _serve_front(self) -> None:
        tenant = self._round[0]
        queue = self._queues[tenant]
        served = queue.popleft()
        self._len -= 1
        self._deficit[tenant] -= served.cost
        self._served_cost[tenant] = self._served_cost.get(tenant, 0.0) + served.cost
        if not queue:
            self._leave_round(tenant)

    def _leave_round(self, tenant: str) -> None:
        if self._round[0] == tenant:
            self._visit_started = False
        self._round.remove(tenant)
        del self._queues[tenant]
        del self._deficit[tenant]
