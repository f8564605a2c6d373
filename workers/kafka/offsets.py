"""Which offsets are safe to commit when work finishes out of order.

Batches complete in any order (several in flight, keys batched apart), so a partition is
committed only up to its lowest offset still unfinished: everything below it has delivered
its output.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from aiokafka import TopicPartition


class _PartitionOffsets:
    __slots__ = ("committed", "done", "highest", "pending")

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.done: set[int] = set()
        self.highest = -1
        self.committed: int | None = None

    def commit_point(self) -> int:
        while self.pending and self.pending[0] in self.done:
            self.done.discard(heapq.heappop(self.pending))
        return self.pending[0] if self.pending else self.highest + 1


class OffsetTracker:
    """Per partition: offsets taken, offsets finished, and the next offset to commit."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _PartitionOffsets] = {}

    def taken(self, tp: TopicPartition, offset: int) -> None:
        state = self._partitions.setdefault(tp, _PartitionOffsets())
        heapq.heappush(state.pending, offset)
        state.highest = max(state.highest, offset)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        state = self._partitions.get(tp)
        if state is not None:  # a partition revoked meanwhile is no longer ours to commit
            state.done.add(offset)

    def unfinished(self) -> int:
        return sum(len(s.pending) - len(s.done) for s in self._partitions.values())

    def to_commit(self) -> dict[TopicPartition, int]:
        """Offsets that moved since the last `committed()`; Kafka's convention: next to read."""
        moves: dict[TopicPartition, int] = {}
        for tp, state in self._partitions.items():
            point = state.commit_point()
            if point > 0 and point != state.committed:
                moves[tp] = point
        return moves

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if tp in self._partitions:
                self._partitions[tp].committed = offset

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions.pop(tp, None)
