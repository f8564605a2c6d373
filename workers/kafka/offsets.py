"""Which offsets are safe to commit when work finishes out of order.

Batches complete in any order (several in flight, keys batched apart), so a partition is
committed only up to its lowest offset still unfinished: everything below it has delivered
its output. The records finished *above* that point travel in the commit's metadata (as
Confluent's Parallel Consumer does), so whoever resumes the partition, after a crash or a
rebalance, skips them instead of processing them twice.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

_FORMAT = "cv1:"
# Kafka's default offset.metadata.max.bytes is 4096; leave room for the format prefix.
_MAX_METADATA_CHARS = 3800


def encode_done(commit_point: int, done: Iterable[int]) -> str:
    """Finished offsets above the commit point, as ranges of deltas: "cv1:1-3,7"."""
    ranges: list[str] = []
    start = previous = None
    for offset in sorted(done):
        delta = offset - commit_point
        if previous is not None and delta == previous + 1:
            previous = delta
            continue
        if start is not None:
            ranges.append(f"{start}" if start == previous else f"{start}-{previous}")
        start = previous = delta
    if start is not None:
        ranges.append(f"{start}" if start == previous else f"{start}-{previous}")
    text = _FORMAT + ",".join(ranges)
    if len(text) > _MAX_METADATA_CHARS:
        # Too fragmented to carry whole: the ranges cut off are simply processed again.
        text = text[: text.rfind(",", 0, _MAX_METADATA_CHARS)]
    return text if ranges else ""


def decode_done(commit_point: int, metadata: str | None) -> set[int]:
    if not metadata or not metadata.startswith(_FORMAT):
        return set()
    done: set[int] = set()
    for part in metadata[len(_FORMAT) :].split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        done.update(range(commit_point + int(low), commit_point + int(high or low) + 1))
    return done


class _PartitionOffsets:
    __slots__ = ("committed", "done", "highest", "pending", "resumed_done", "written_before")

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.done: set[int] = set()
        self.highest = -1
        self.committed: OffsetAndMetadata | None = None
        self.resumed_done: set[int] = set()
        self.written_before: int | None = None
        """The partition's end when it was assigned: records below it may have been done
        by a previous owner; None: unknown, so any may have been."""

    def commit_point(self) -> int:
        while self.pending and self.pending[0] in self.done:
            self.done.discard(heapq.heappop(self.pending))
        return self.pending[0] if self.pending else self.highest + 1


class OffsetTracker:
    """Per partition: offsets taken, offsets finished, and the next offset to commit."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _PartitionOffsets] = {}

    def resume(self, tp: TopicPartition, committed: OffsetAndMetadata | None) -> None:
        """Take a partition over: remember what its last owner finished above its commit."""
        state = self._partitions.setdefault(tp, _PartitionOffsets())
        if committed is not None and committed.offset >= 0:
            state.resumed_done = decode_done(committed.offset, committed.metadata)

    def assigned_at_end(self, tp: TopicPartition, end_offset: int) -> None:
        """The partition held `end_offset` records when it was assigned: a record at or
        above it was written after, so no earlier owner can have done it."""
        self._partitions.setdefault(tp, _PartitionOffsets()).written_before = end_offset

    def may_be_redelivered(self, tp: TopicPartition, offset: int) -> bool:
        """Whether an earlier owner may have done this record already (then the ledger is
        asked); False only for records written after this worker got the partition."""
        state = self._partitions.get(tp)
        bound = None if state is None else state.written_before
        return bound is None or offset < bound

    def already_done(self, tp: TopicPartition, offset: int) -> bool:
        """True for a record the partition's last owner finished (its outputs are out)."""
        state = self._partitions.get(tp)
        return state is not None and offset in state.resumed_done

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

    def unfinished_by_partition(self) -> dict[TopicPartition, int]:
        return {tp: len(s.pending) - len(s.done) for tp, s in self._partitions.items()}

    def to_commit(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """What moved since the last `committed()`: Kafka's next offset to read, and the
        finished offsets above it in the metadata."""
        moves: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, state in self._partitions.items():
            point = state.commit_point()
            if point <= 0 and not state.done:
                # Nothing read yet, or only the first record unfinished with nothing done
                # above it. With records done above an unfinished first one, position 0 is
                # committed with them in its metadata: an exactly-once batch that finished
                # out of order has its outputs committed, and the next owner must skip them.
                continue
            above = state.done | {o for o in state.resumed_done if o >= point}
            commit = OffsetAndMetadata(point, encode_done(point, above))
            if commit != state.committed:
                moves[tp] = commit
        return moves

    def committed(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        for tp, commit in offsets.items():
            if tp in self._partitions:
                self._partitions[tp].committed = commit

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions.pop(tp, None)
